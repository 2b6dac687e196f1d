"""The Python link (grenache.link.Link) against real grapes over loopback sockets.

- Python grapes running in this process, through their HTTP API and their WebSocket API.
- Node.js grapes (grenache-grape 1.0.0 processes, from tests/interop/harness.py), through
  their HTTP API; skipped without Node unless ``GRENACHE_INTEROP=required``. Here the Node link
  (grenache-nodejs-link 1.0.2) also checks what the Python link announced.

Every link is stopped and every grape shut down in the test's cleanups, so trial's dirty
reactor check holds.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, cast

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from twisted.internet import reactor as _global_reactor
from twisted.trial import unittest

from grenache import errors
from grenache.dht import bep44
from grenache.link import Item, Link
from tests.interop import harness
from tests.interop.harness import async_test

reactor: Any = _global_reactor

LOOPBACK = harness.LOCALHOST
HELLO_KEY = "6d33adc2b6b2c14c3036feefb7fedbca1a880527"
SEQ_TOO_OLD = "302 sequence number less than current"
CAS_MISMATCH = "301 CAS mismatch, re-read and try again"


def sign_elsewhere(value: str, seq: int, salt: str) -> tuple[str, str]:
    """``(k, sig)`` in hex for a mutable item, signed with ``cryptography``'s ed25519 alone,
    as a service holding its own key would (the signature buffer built here by hand)."""
    key = Ed25519PrivateKey.generate()
    v, s = value.encode(), salt.encode()
    message = b"4:salt%d:%s3:seqi%de1:v%d:%s" % (len(s), s, seq, len(v), v)
    return key.public_key().public_bytes_raw().hex(), key.sign(message).hex()


class _LinkCase(unittest.TestCase):
    timeout = 120

    def link(self, url: str, **kwargs: Any) -> Link:
        link = Link(url, reactor=reactor, **kwargs)
        link.start()
        self.addCleanup(link.stop)
        return link

    async def eventually(self, call: Any, describe: str, timeout: float = 20.0) -> Any:
        """Poll ``call()`` (a Deferred-returning link call) until it succeeds."""

        async def probe() -> Any:
            return await call()

        return await harness.wait_until(probe, timeout, describe, done=lambda _: True)


# --- Python grapes ------------------------------------------------------------------------


if TYPE_CHECKING:
    _Mixin = _LinkCase
else:
    _Mixin = object


class _PythonGrapeTests(_Mixin):
    """Run through both APIs: subclasses say which one the link talks to."""

    websocket = False

    async def grape(self, bootstrap: Any = ()) -> harness.PyGrape:
        return await harness.start_python_grape(
            self, bootstrap, reactor=reactor, ws_port=0, host=LOOPBACK
        )

    def url(self, grape: harness.PyGrape) -> str:
        if self.websocket:
            return f"ws://{LOOPBACK}:{grape.grape.ws_port}"
        return grape.url

    @property
    def status(self) -> int | None:
        """What GrapeReplyError.status is for an error answered with HTTP 200."""
        return None if self.websocket else 200

    @async_test
    async def test_announce_lookup(self) -> None:
        grape = await self.grape()
        link = self.link(self.url(grape))
        self.assertEqual(await link.announce("link:py", 4001), 1)
        self.assertEqual(await link.announce("link:py", 4002), 1)
        peers = await link.lookup("link:py", cache=False)
        self.assertEqual(sorted(peers), [f"{LOOPBACK}:4001", f"{LOOPBACK}:4002"])
        with self.assertRaises(errors.LookupEmpty):
            await link.lookup("link:nobody")
        error = await self._reply_error(link.announce("link:py", cast(int, "4001")))
        self.assertEqual((error.message, error.status), ("ERR_GRAPE_SERVICE_PORT", self.status))
        error = await self._reply_error(link.lookup(""))
        self.assertEqual((error.message, error.status), ("ERR_GRAPE_LOOKUP", self.status))

    async def _reply_error(self, d: Any) -> errors.GrapeReplyError:
        try:
            await d
        except errors.GrapeReplyError as error:
            return error
        self.fail("no GrapeReplyError")

    @async_test
    async def test_start_announcing(self) -> None:
        grape = await self.grape()
        link = self.link(self.url(grape))
        self.assertEqual(await link.start_announcing("link:loop", 4100), 1)
        self.assertEqual(await link.lookup("link:loop"), [f"{LOOPBACK}:4100"])
        link.stop_announcing("link:loop", 4100)
        self.assertEqual(link.announcing(), [])
        # Loops still running when the link stops end with it; a first announce still in
        # flight then fails with LinkStopped.
        for port in (4101, 4102):
            link.start_announcing("link:loop", port).addErrback(
                lambda f: f.trap(errors.LinkStopped)
            )

    @async_test
    async def test_concurrent_lookups(self) -> None:
        grape = await self.grape()
        link = self.link(self.url(grape))
        await link.announce("link:many", 4200)
        results = [link.lookup("link:many", cache=False) for _ in range(20)]
        results += [link.lookup(f"link:none:{i}") for i in range(5)]
        for d in results[:20]:
            self.assertEqual(await d, [f"{LOOPBACK}:4200"])
        for d in results[20:]:
            with self.assertRaises(errors.LookupEmpty):
                await d

    @async_test
    async def test_put_get_immutable(self) -> None:
        grape = await self.grape()
        link = self.link(self.url(grape))
        self.assertEqual(await link.put("hello world"), HELLO_KEY)
        item = await link.get(HELLO_KEY)
        self.assertEqual(item, Item(v="hello world", id=grape.node_id, token=None))
        self.assertIsNone(await link.get("00" * 20))
        text = "sérvice ü " * 10
        key = await link.put(text)
        self.assertEqual(key, bep44.immutable_key(text).hex())
        got = await link.get(key)
        self.assertEqual(got.v if got else None, text)

    @async_test
    async def test_put_get_mutable(self) -> None:
        grape = await self.grape()
        link = self.link(self.url(grape))
        seed = bep44.generate_private_key()
        public = bep44.public_key_of(seed)
        key = await link.put("v1", private_key=seed, seq=1, salt="salty")
        self.assertEqual(key, bep44.mutable_key(public, b"salty").hex())
        item = await link.get(key, salt="salty")
        assert item is not None
        self.assertEqual((item.v, item.seq, item.k), ("v1", 1, public.hex()))
        assert item.sig is not None
        self.assertTrue(
            bep44.verify(
                bytes.fromhex(item.sig), bep44.signature_buffer(b"v1", 1, b"salty"), public
            )
        )
        unsalted = await link.put("v0", private_key=seed, seq=0)
        self.assertEqual(unsalted, bep44.mutable_key(public).hex())
        item = await link.get(unsalted)
        self.assertEqual(item.v if item else None, "v0")

    @async_test
    async def test_mutable_errors_between_grapes(self) -> None:
        """302 and 301 from a remote node keep their HTTP status through the grape."""
        first = await self.grape()
        second = await self.grape([first.dht_address])
        link = self.link(self.url(second))
        seed = bep44.generate_private_key()

        async def stored() -> str:
            return cast(str, await link.put("v2", private_key=seed, seq=2))

        key = await self.eventually(stored, "a mutable put reaches the other grape")
        error = await self._reply_error(link.put("v1", private_key=seed, seq=1))
        self.assertEqual(error.message, SEQ_TOO_OLD)
        self.assertEqual(error.status, None if self.websocket else 302)
        error = await self._reply_error(link.put("v3", private_key=seed, seq=3, cas=1))
        self.assertEqual(error.message, CAS_MISMATCH)
        self.assertEqual(error.status, None if self.websocket else 301)
        self.assertEqual(await link.put("v3", private_key=seed, seq=3, cas=2), key)

    @async_test
    async def test_put_signed_elsewhere(self) -> None:
        grape = await self.grape()
        link = self.link(self.url(grape))
        k, sig = sign_elsewhere("signed elsewhere", 3, "hw")
        key = await link.put("signed elsewhere", k=k, sig=sig, seq=3, salt="hw")
        self.assertEqual(key, bep44.mutable_key(bytes.fromhex(k), b"hw").hex())
        item = await link.get(key, salt="hw")
        assert item is not None
        self.assertEqual((item.v, item.seq, item.k, item.sig), ("signed elsewhere", 3, k, sig))

    @async_test
    async def test_get_cache_false(self) -> None:
        """The grape's own store answers a get unless ``cache=False``: then the DHT does."""
        first = await self.grape()
        second = await self.grape([first.dht_address])
        link = self.link(self.url(second))

        async def stored() -> Item:
            await link.put("hello world")
            item = await link.get(HELLO_KEY, cache=False)
            if item is None:
                raise AssertionError("not on the other grape yet")
            return item

        remote = await self.eventually(stored, "an immutable put reaches the other grape")
        self.assertEqual((remote.v, remote.id), ("hello world", first.node_id))
        self.assertIsNotNone(remote.token)
        local = await link.get(HELLO_KEY, options={"ignored": True})
        self.assertEqual(local, Item(v="hello world", id=second.node_id, token=None))

    @async_test
    async def test_grape_unreachable(self) -> None:
        port = harness.free_port()
        scheme = "ws" if self.websocket else "http"
        link = self.link(f"{scheme}://{LOOPBACK}:{port}")
        with self.assertRaises(errors.GrapeUnreachable) as caught:
            await link.lookup("link:x")
        self.assertIn("refused", caught.exception.message.lower())

    @async_test
    async def test_stop_and_reuse(self) -> None:
        grape = await self.grape()
        link = self.link(self.url(grape))
        await link.announce("link:again", 4300)
        self.assertEqual(await link.lookup("link:again"), [f"{LOOPBACK}:4300"])
        await link.stop()
        self.assertEqual(await link.lookup("link:again"), [f"{LOOPBACK}:4300"])


class PythonGrapeHTTPTests(_PythonGrapeTests, _LinkCase):
    websocket = False


class PythonGrapeWebSocketTests(_PythonGrapeTests, _LinkCase):
    websocket = True

    @async_test
    async def test_grape_closes_the_socket(self) -> None:
        """Requests on a closed socket fail; the next request opens a new one."""
        grape = await self.grape()
        link = self.link(self.url(grape))
        await link.announce("link:ws", 4400)
        await grape.stop()
        with self.assertRaises((errors.GrapeUnreachable, errors.TransportClosed)):
            await link.lookup("link:ws", cache=False)


# --- Node grapes --------------------------------------------------------------------------


class NodeGrapeTests(_LinkCase):
    def setUp(self) -> None:
        harness.node_modules_dir()  # skip early (or fail) without Node

    async def network(self) -> tuple[harness.NodeGrape, harness.NodeGrape]:
        n1 = await harness.start_node_grape(self, verify=True, name="n1")
        n2 = await harness.start_node_grape(self, [n1.dht_address], verify=True, name="n2")
        return n1, n2

    async def announced(self, link: Link, name: str, port: int) -> int:
        async def probe() -> int:
            return await link.announce(name, port)

        count: int = await harness.wait_until(
            probe,
            20,
            f"announce {name!r}:{port} via {link.grape} is stored by >= 1 node",
            done=lambda n: n >= 1,
        )
        return count

    @async_test
    async def test_announce_lookup(self) -> None:
        n1, n2 = await self.network()
        link1, link2 = self.link(n1.url), self.link(n2.url)
        await self.announced(link1, "link:node", 5001)
        await self.announced(link2, "link:node", 5002)
        expected = [f"{LOOPBACK}:5001", f"{LOOPBACK}:5002"]
        for link in (link1, link2):

            async def probe(link: Link = link) -> list[str]:
                return await link.lookup("link:node", cache=False)

            await harness.wait_until(
                probe,
                20,
                f"lookup via {link.grape} gives {expected}",
                done=lambda peers: sorted(peers) == expected,
            )
        with self.assertRaises(errors.LookupEmpty):
            await link1.lookup("link:nobody")

    @async_test
    async def test_error_strings(self) -> None:
        """Node's 200 error strings become GrapeReplyError (the Node link passes an announce's
        as a result)."""
        n1 = await harness.start_node_grape(self, name="lone")
        link = self.link(n1.url, request_timeout=10.0)
        with self.assertRaises(errors.GrapeReplyError) as caught:
            await link.announce("link:lonely", 5100)
        self.assertEqual(
            (caught.exception.message, caught.exception.status), ("No nodes to query", 200)
        )
        with self.assertRaises(errors.GrapeReplyError) as caught:
            await link.announce("link:lonely", cast(int, "5100"))
        self.assertEqual(caught.exception.message, "ERR_GRAPE_SERVICE_PORT")
        with self.assertRaises(errors.GrapeReplyError) as caught:
            await link.lookup("")
        self.assertEqual(caught.exception.message, "ERR_GRAPE_LOOKUP")
        self.assertIsNone(await link.get("00" * 20))

    @async_test
    async def test_put_get_immutable(self) -> None:
        n1, n2 = await self.network()
        link1, link2 = self.link(n1.url), self.link(n2.url)

        async def put() -> str:
            return await link1.put("hello world")

        self.assertEqual(await self.eventually(put, "put hello world via n1"), HELLO_KEY)

        async def get() -> Item | None:
            item = await link2.get(HELLO_KEY)
            if item is None:
                raise AssertionError("not found yet")
            return item

        item = await self.eventually(get, "get hello world via n2")
        self.assertEqual(item.v, "hello world")
        self.assertFalse(item.mutable)
        self.assertIsNone(await link2.get("00" * 20))

    @async_test
    async def test_put_get_mutable_signed_by_the_link(self) -> None:
        """The link's ed25519 signature passes the Node grapes' verification (tweetnacl);
        302 and 301 come back with their HTTP status."""
        n1, n2 = await self.network()
        link1, link2 = self.link(n1.url), self.link(n2.url)
        seed = bep44.generate_private_key()
        public = bep44.public_key_of(seed)
        expected_key = bep44.mutable_key(public, b"foobar").hex()

        async def put() -> str:
            return await link1.put("Hello World!", private_key=seed, seq=1, salt="foobar")

        self.assertEqual(await self.eventually(put, "mutable put via n1"), expected_key)

        async def get() -> Item:
            item = await link2.get(expected_key, salt="foobar")
            if item is None:
                raise AssertionError("not found yet")
            return item

        item = await self.eventually(get, "mutable get via n2")
        self.assertEqual((item.v, item.seq, item.k), ("Hello World!", 1, public.hex()))
        # n2 stores what n1 put, and answers from its own store: no token, and no salt echo
        # (Node echoes the salt only for items fetched from a remote node).
        self.assertEqual(item.salt, None if item.token is None else "foobar")
        assert item.sig is not None
        message = bep44.signature_buffer(b"Hello World!", 1, b"foobar")
        self.assertTrue(bep44.verify(bytes.fromhex(item.sig), message, public))
        with self.assertRaises(errors.GrapeReplyError) as caught:
            await link1.put("Hello World!", private_key=seed, seq=1, salt="foobar")
        self.assertEqual((caught.exception.message, caught.exception.status), (SEQ_TOO_OLD, 302))
        with self.assertRaises(errors.GrapeReplyError) as caught:
            await link1.put("again", private_key=seed, seq=2, salt="foobar", cas=7)
        self.assertEqual((caught.exception.message, caught.exception.status), (CAS_MISMATCH, 301))
        self.assertEqual(
            await link1.put("again", private_key=seed, seq=2, salt="foobar", cas=1), expected_key
        )

    @async_test
    async def test_node_link_sees_python_link_announcing(self) -> None:
        n1, n2 = await self.network()
        link = self.link(n1.url)

        async def first() -> int:
            link.stop_announcing("link:loop", 5200)
            return await link.start_announcing("link:loop", 5200, interval=0.5)

        await harness.wait_until(first, 20, "the first announce is stored", done=lambda n: n >= 1)

        async def node_lookup() -> Any:
            [result] = await harness.run_link_ops(
                self, n2.url, [{"op": "lookup", "name": "link:loop"}]
            )
            return result

        result = await harness.wait_until(
            node_lookup,
            30,
            "the Node link finds link:loop via n2",
            done=lambda r: r.get("ok") is True,
            interval=0.2,
        )
        self.assertEqual(result["result"], [f"{LOOPBACK}:5200"])

    @async_test
    async def test_put_signed_elsewhere(self) -> None:
        """k/sig made with cryptography's ed25519 pass the Node grapes' verification and come
        back from the other grape as they were sent."""
        n1, n2 = await self.network()
        link1, link2 = self.link(n1.url), self.link(n2.url)
        k, sig = sign_elsewhere("from a hardware key", 5, "hw")
        expected_key = bep44.mutable_key(bytes.fromhex(k), b"hw").hex()

        async def put() -> str:
            return await link1.put("from a hardware key", k=k, sig=sig, seq=5, salt="hw")

        self.assertEqual(await self.eventually(put, "signed put via n1"), expected_key)

        async def get() -> Item:
            item = await link2.get(expected_key, salt="hw")
            if item is None:
                raise AssertionError("not found yet")
            return item

        item = await self.eventually(get, "signed get via n2")
        self.assertEqual((item.v, item.seq, item.k, item.sig), ("from a hardware key", 5, k, sig))
        with self.assertRaises(errors.GrapeReplyError) as caught:
            await link1.put("from a hardware key", k=k, sig=sig, seq=5, salt="hw")
        self.assertEqual((caught.exception.message, caught.exception.status), (SEQ_TOO_OLD, 302))

    @async_test
    async def test_get_options(self) -> None:
        """``cache=False`` reaches the Node grape: its own store no longer answers, the DHT
        does (another node's id and a write token); unknown options are passed and ignored."""
        n1, n2 = await self.network()
        link1 = self.link(n1.url)

        async def stored() -> Item:
            await link1.put("hello world")
            item = await link1.get(HELLO_KEY, cache=False)
            if item is None:
                raise AssertionError("not on n2 yet")
            return item

        remote = await self.eventually(stored, "an immutable put reaches n2")
        self.assertEqual((remote.v, remote.id), ("hello world", n2.node_id))
        self.assertIsNotNone(remote.token)
        local = await link1.get(HELLO_KEY, options={"ignored": [1]})
        self.assertEqual(
            (local.v, local.id, local.token) if local else None, ("hello world", n1.node_id, None)
        )
        self.assertIsNone(await link1.get("00" * 20, cache=False))
