"""
Node-only checks of the interop harness: the smallest real Node grape network, driven from
Python over the grape HTTP API, and the Node link runner.
"""

from __future__ import annotations

from twisted.trial import unittest

from tests.interop import harness
from tests.interop.harness import async_test

HELLO_HASH = "6d33adc2b6b2c14c3036feefb7fedbca1a880527"  # sha1(bencode("hello world"))


class NodeGrapeNetworkTests(unittest.TestCase):
    """Two Node grapes (grenache-grape 1.0.0 from code) bootstrapping to each other."""

    timeout = 120

    async def _two_grapes(self) -> tuple[harness.NodeGrape, harness.NodeGrape]:
        g1 = await harness.start_node_grape(self, name="g1")
        g2 = await harness.start_node_grape(self, [g1.dht_port], name="g2")
        return g1, g2

    @async_test
    async def test_ports_are_real(self) -> None:
        """The ready line carries the OS-picked ports; the API answers on api_port."""
        g1 = await harness.start_node_grape(self)
        self.assertNotEqual(g1.dht_port, 0)
        self.assertNotEqual(g1.api_port, 0)
        reply = await harness.grape_request(g1.url, "lookup", "nothing:here")
        self.assertEqual((reply.status, reply.body, reply.json), (200, b"[]", []))
        reply = await harness.grape_request(g1.url, "nope", "x")
        self.assertEqual((reply.status, reply.json), (200, "ERR_REQ_NOTFOUND"))

    @async_test
    async def test_announce_then_lookup_through_the_other(self) -> None:
        """Announce via g1's API; g2's lookup eventually gives exactly 127.0.0.1:1337."""
        g1, g2 = await self._two_grapes()
        ack = await harness.announce_until_acknowledged(g1.url, "rest:util:net", 1337)
        self.assertGreaterEqual(ack.json, 1)
        found = await harness.lookup_until(
            g2.url,
            "rest:util:net",
            lambda peers: "127.0.0.1:1337" in peers,
            "contains 127.0.0.1:1337",
        )
        self.assertEqual(found, ["127.0.0.1:1337"])

    @async_test
    async def test_immutable_put_then_get_through_the_other(self) -> None:
        """Put 'hello world' via g1; g2 gets it, also with a forced network walk."""
        g1, g2 = await self._two_grapes()

        async def put() -> harness.GrapeReply:
            return await harness.grape_request(g1.url, "put", {"v": "hello world"})

        reply = await harness.wait_until(
            put,
            20,
            "put via g1 returns the hash",
            done=lambda r: r.status == 200 and r.json == HELLO_HASH,
        )
        self.assertEqual(reply.body, b'"' + HELLO_HASH.encode() + b'"')

        async def get() -> harness.GrapeReply:
            return await harness.grape_request(g2.url, "get", HELLO_HASH)

        got = await harness.wait_until(
            get,
            20,
            "get via g2 returns the value",
            done=lambda r: r.status == 200 and isinstance(r.json, dict),
        )
        self.assertEqual(got.json["v"], "hello world")
        # g1's put also stored the value on g2, so the plain get may come from g2's own
        # store; cache: false forces the DHT walk, which g1 answers.
        remote = await harness.grape_request(g2.url, "get", {"hash": HELLO_HASH, "cache": False})
        self.assertEqual(remote.json["v"], "hello world")
        self.assertEqual(remote.json["id"], g1.node_id)
        self.assertRegex(remote.json["token"], "^[0-9a-f]+$")

    @async_test
    async def test_get_not_found_is_an_empty_body(self) -> None:
        """A get for an unknown hash answers 200 with an empty body."""
        _g1, g2 = await self._two_grapes()
        reply = await harness.grape_request(g2.url, "get", "00" * 20)
        self.assertEqual((reply.status, reply.body, reply.json), (200, b"", None))


class NodeLinkRunnerTests(unittest.TestCase):
    """link_client.js (grenache-nodejs-link 1.0.2) against Node grapes."""

    timeout = 120

    @async_test
    async def test_batch_lookup_put_get(self) -> None:
        """Announce, lookup, put and get through the Node link in one batch."""
        g1 = await harness.start_node_grape(self, name="g1")
        g2 = await harness.start_node_grape(self, [g1.dht_port], name="g2")
        await harness.announce_until_acknowledged(g1.url, "link:svc", 4242)
        await harness.lookup_until(
            g2.url, "link:svc", lambda p: "127.0.0.1:4242" in p, "contains 127.0.0.1:4242"
        )
        results = await harness.run_link_ops(
            self,
            g2.url,
            [
                {"op": "lookup", "name": "link:svc"},
                {"op": "lookup", "name": "link:nobody"},
                {"op": "put", "data": {"v": "hello world"}},
                {"op": "get", "data": HELLO_HASH},
                {"op": "get", "data": {"hash": "11" * 20}},
                {"op": "announce", "name": "link:bad", "port": "1337"},
            ],
        )
        self.assertEqual([r["i"] for r in results], list(range(6)))
        self.assertEqual(
            results[0], {"i": 0, "op": "lookup", "ok": True, "result": ["127.0.0.1:4242"]}
        )
        self.assertEqual(
            results[1],
            {"i": 1, "op": "lookup", "ok": False, "error": "ERR_GRAPE_LOOKUP_EMPTY", "code": None},
        )
        self.assertEqual(results[2]["result"], HELLO_HASH)
        self.assertEqual(results[3]["result"]["v"], "hello world")
        # Not found: the link hands over the empty body as "".
        self.assertEqual(results[4], {"i": 4, "op": "get", "ok": True, "result": ""})
        # The link reports grape error strings of announce as results.
        self.assertEqual(results[5]["result"], "ERR_GRAPE_SERVICE_PORT")

    @async_test
    async def test_interactive_start_announcing(self) -> None:
        """The link's startAnnouncing, observed through another grape's lookup."""
        g1 = await harness.start_node_grape(self, name="g1")
        g2 = await harness.start_node_grape(self, [g1.dht_port], name="g2")
        link = await harness.start_link_session(self, g1.url)
        started = await link.call(
            {"op": "startAnnouncing", "name": "link:loop", "port": 5151, "opts": {"interval": 200}}
        )
        self.assertTrue(started["ok"], started)
        await harness.lookup_until(
            g2.url, "link:loop", lambda p: p == ["127.0.0.1:5151"], "is ['127.0.0.1:5151']"
        )
        stopped = await link.call({"op": "stopAnnouncing", "name": "link:loop", "port": 5151})
        self.assertEqual(stopped["result"], True)
        looked = await link.call({"op": "lookup", "name": "link:loop", "tag": "x"})
        self.assertEqual(looked["tag"], "x")
        self.assertEqual(looked["result"], ["127.0.0.1:5151"])


class NodeGrapeCliTests(unittest.TestCase):
    """The ``grape`` CLI on free ports, joined by a grape started from code."""

    timeout = 120

    @async_test
    async def test_cli_grape_serves_lookups(self) -> None:
        """A CLI grape and a code grape: announce via the CLI one, lookup via the other."""
        cli = await harness.start_node_grape_cli(self, bind="127.0.0.1")
        g2 = await harness.start_node_grape(self, [cli.dht_port], name="g2")
        await harness.announce_until_acknowledged(cli.url, "cli:svc", 7000)
        found = await harness.lookup_until(
            g2.url, "cli:svc", lambda p: "127.0.0.1:7000" in p, "contains 127.0.0.1:7000"
        )
        self.assertEqual(found, ["127.0.0.1:7000"])

    @async_test
    async def test_stop_kills_the_process_group(self) -> None:
        """stop() ends the process; a second stop() is harmless."""
        cli = await harness.start_node_grape_cli(self)
        await cli.stop()
        self.assertTrue(cli.process.has_ended)
        await cli.stop()
