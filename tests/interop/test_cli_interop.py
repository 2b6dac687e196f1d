"""``grenache serve``, ``twistd grenache-service`` and the other verbs with Node.js Grenache.

- Node clients (grenache-nodejs-link 1.0.2 with the PeerRPCClient of grenache-nodejs-http
  1.0.2 or grenache-nodejs-ws 1.0.0, ``node/cli_client.js``) request services run by
  ``grenache serve`` and by ``twistd -n grenache-service``;
- on a network of Node grapes (grenache-grape 1.0.0): a service announced through one grape
  is found and called through the other, and ``grenache lookup/put/get`` talk to Node grapes;
- grenache-cli's habits on Node grapes: ``lookup -f/-l/-r`` with several names and ``-g HOST
  -p PORT``, ``announce`` from stdin lines (``-d``, ``-j``), ``get -r/-i/-w``, and ``put -m``
  signed with a grenache-cli key file (an expanded ed25519 key) that a verifying Node grape
  accepts;
- ``grenache pub`` feeds a Node ``PeerSub`` and a Node ``PeerPub`` feeds ``grenache sub``
  (``node/cli_pubsub.js``);
- TLS from the shell: a Node HTTP client with ``secure`` options calls ``grenache serve
  --tls-* --tls-client-fingerprints`` (an unlisted certificate is refused), and ``grenache
  request --tls-*`` calls Node HTTP and WebSocket servers started with ``secure`` options.

Skipped without Node unless ``GRENACHE_INTEROP=required``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from twisted.trial import unittest

from grenache.dht import bep44
from tests.interop import harness
from tests.interop.harness import async_test
from tests.interop.test_http_rpc import NodeClient
from tests.support import make_pki
from tests.test_cli import TWISTD, Proc, grenache, run_cli, spawn
from tests.test_tls_options import pki_files


async def node_request(
    case: unittest.TestCase,
    url: str,
    name: str,
    payload: Any,
    transport: str = "http",
    timeout_ms: int = 10000,
) -> dict[str, Any]:
    """Run cli_client.js once; its outcome line."""
    proc = harness.spawn_node(
        case,
        "cli_client.js",
        [url, name, json.dumps(payload), transport, str(timeout_ms)],
        name=f"node-{transport}-client",
    )
    outcome: dict[str, Any] = await proc.ready
    return outcome


async def serve(case: unittest.TestCase, *args: str) -> tuple[Proc, dict[str, Any]]:
    """``grenache serve ARGS...``; the process and its ready line."""
    proc = grenache(case, "serve", *args)
    ready: dict[str, Any] = json.loads(await proc.line(0))
    return proc, ready


class NodeClientTests(unittest.TestCase):
    """Node clients calling Python services through an in-process Python grape."""

    timeout = 180

    def setUp(self) -> None:
        harness.node_modules_dir()  # skip early without Node

    @async_test
    async def test_serve_answers_node_http_client(self) -> None:
        grape = await harness.start_python_grape(self)
        await serve(self, "cli_node_echo", "--handler", "tests.test_cli:echo", "-g", grape.url)
        payload = {"text": "héllo ✓", "n": [1, 2.5, None]}
        outcome = await node_request(self, grape.url, "cli_node_echo", payload)
        self.assertTrue(outcome["ok"], outcome)
        self.assertEqual(outcome["result"]["payload"], payload)
        self.assertEqual(outcome["result"]["key"], "cli_node_echo")
        # The Node client sends a UUID rid; the handler saw it.
        self.assertEqual(len(outcome["result"]["rid"]), 36)

    @async_test
    async def test_handler_error_reaches_node(self) -> None:
        grape = await harness.start_python_grape(self)
        await serve(self, "cli_node_broken", "--handler", "tests.test_cli:broken", "-g", grape.url)
        outcome = await node_request(self, grape.url, "cli_node_broken", 1)
        self.assertEqual(outcome, {"ok": False, "error": "ERR_BROKEN: no can do"})

    @async_test
    async def test_serve_ws_answers_node_ws_client(self) -> None:
        grape = await harness.start_python_grape(self)
        await serve(
            self,
            "cli_node_ws",
            "--transport",
            "ws",
            "--handler",
            "tests.test_cli:coroutine_double",
            "-g",
            grape.url,
        )
        outcome = await node_request(self, grape.url, "cli_node_ws", "ab", transport="ws")
        self.assertEqual(outcome, {"ok": True, "result": "abab"})

    @async_test
    async def test_twistd_service_answers_node_client(self) -> None:
        grape = await harness.start_python_grape(self)
        twistd = spawn(
            self,
            (
                *TWISTD,
                "-n",
                "--pidfile=",
                "grenache-service",
                "--name",
                "cli_node_twistd",
                "--handler",
                "examples.fibonacci_service:fibonacci",
                "--grape",
                grape.url,
            ),
        )
        await twistd.wait_for(
            lambda p: b"Announced 'cli_node_twistd'" in p.out + p.err, "the announce log line"
        )
        outcome = await node_request(self, grape.url, "cli_node_twistd", {"length": 6})
        self.assertEqual(outcome, {"ok": True, "result": [1, 1, 2, 3, 5, 8]})
        outcome = await node_request(self, grape.url, "cli_node_twistd", {"length": "x"})
        self.assertFalse(outcome["ok"])
        self.assertTrue(outcome["error"].startswith("ERR_BAD_LENGTH"), outcome)
        ended = await twistd.stop()
        self.assertIn(b"Server Shut Down", ended.out + ended.err, ended.describe())


class NodeGrapeTests(unittest.TestCase):
    """The command line on a network of two Node grapes."""

    timeout = 240

    async def node_grapes(self, verify: bool = False) -> tuple[Any, Any]:
        first = await harness.start_node_grape(self, verify=verify)
        second = await harness.start_node_grape(self, [first.dht_address], verify=verify)
        return first, second

    @async_test
    async def test_service_announced_on_one_grape_called_through_the_other(self) -> None:
        first, second = await self.node_grapes()
        _, ready = await serve(
            self,
            "cli_fib_net",
            "--handler",
            "examples.fibonacci_service:fibonacci",
            "-g",
            first.url,
        )
        self.assertIsInstance(ready["announced"]["cli_fib_net"], int)
        dest = f"127.0.0.1:{ready['port']}"
        await harness.lookup_until(
            second.url, "cli_fib_net", lambda peers: dest in peers, f"finds {dest}"
        )
        outcome = await node_request(self, second.url, "cli_fib_net", {"length": 4})
        self.assertEqual(outcome, {"ok": True, "result": [1, 1, 2, 3]})
        result = await run_cli(self, "lookup", "cli_fib_net", "-g", second.url)
        self.assertEqual(result.json(), [dest], result.describe())
        result = await run_cli(self, "request", "cli_fib_net", '{"length":3}', "-g", second.url)
        self.assertEqual(result.json(), [1, 1, 2], result.describe())
        result = await run_cli(self, "map", "cli_fib_net", '{"length":2}', "-g", second.url)
        self.assertEqual(result.json(), [[1, 1]], result.describe())

    @async_test
    async def test_lookup_empty_and_announce_on_node_grapes(self) -> None:
        first, second = await self.node_grapes()
        result = await run_cli(self, "lookup", "cli_nobody", "-g", first.url)
        self.assertEqual(result.code, 1, result.describe())
        self.assertIn(b"no peer is announced as 'cli_nobody'", result.err)
        result = await run_cli(self, "announce", "cli_announced", "4444", "-g", first.url)
        self.assertEqual(result.code, 0, result.describe())
        self.assertGreaterEqual(result.json(), 1)
        await harness.lookup_until(
            second.url, "cli_announced", lambda p: "127.0.0.1:4444" in p, "finds the announce"
        )

    @async_test
    async def test_put_and_get_on_node_grapes(self) -> None:
        first, second = await self.node_grapes(verify=True)
        result = await run_cli(self, "put", "stored by the Python CLI", "-g", first.url)
        self.assertEqual(result.code, 0, result.describe())
        key = result.json()
        self.assertEqual(key, bep44.immutable_key(b"stored by the Python CLI").hex())
        result = await run_cli(self, "get", key, "--value", "-g", second.url)
        self.assertEqual(result.json(), "stored by the Python CLI", result.describe())
        key_file = str(Path(self.mktemp()).resolve())
        self.assertEqual((await run_cli(self, "keygen", key_file)).code, 0)
        put = ("--key", key_file, "--salt", "node", "-g", first.url)
        result = await run_cli(self, "put", "mutable 1", *put, "--seq", "1")
        self.assertEqual(result.code, 0, result.describe())
        mutable_key = result.json()
        result = await run_cli(self, "get", mutable_key, "--salt", "node", "-g", second.url)
        item = result.json()
        self.assertEqual((item["v"], item["seq"]), ("mutable 1", 1), result.describe())
        stale = await run_cli(self, "put", "mutable 0", *put, "--seq", "0")
        self.assertEqual(stale.code, 1, stale.describe())
        self.assertIn(b"(HTTP 302)", stale.err)
        self.assertIn(b"sequence number less than current", stale.err)

    @async_test
    async def test_grenache_cli_flags_on_node_grapes(self) -> None:
        first, second = await self.node_grapes()
        lines = b"# from a file\ncli_p_one,4101\n\n; comment\ncli_p_two,4102\nbad line\n"
        result = await run_cli(
            self, "announce", "-g", "127.0.0.1", "-p", str(first.api_port), stdin=lines
        )
        self.assertEqual(result.code, 1, result.describe())  # the bad line
        self.assertIn(b"grenache announce: line 6: 'bad line'", result.err)
        announced = [json.loads(line) for line in result.out.decode().splitlines()]
        self.assertEqual([a["name"] for a in announced], ["cli_p_one", "cli_p_two"])
        self.assertTrue(all(a["announced"] >= 1 for a in announced), announced)
        json_lines = b'{"data": ["cli_p_two", 4103]}\n'
        result = await run_cli(self, "announce", "-j", "-g", first.url, stdin=json_lines)
        self.assertEqual(result.code, 0, result.describe())
        await harness.lookup_until(
            second.url,
            "cli_p_two",
            lambda peers: {"127.0.0.1:4102", "127.0.0.1:4103"} <= set(peers),
            "finds both cli_p_two ports",
        )
        await harness.lookup_until(
            second.url, "cli_p_one", lambda p: "127.0.0.1:4101" in p, "finds cli_p_one"
        )
        grape = ("-g", "127.0.0.1", "-p", str(second.api_port))
        result = await run_cli(self, "lookup", "-r", "cli_p_one", "cli_p_two", *grape)
        self.assertEqual(result.code, 0, result.describe())
        one, two = result.out.decode().splitlines()
        self.assertEqual(one, "127.0.0.1:4101")
        self.assertIn(two, {"127.0.0.1:4102", "127.0.0.1:4103"})
        first_last = []
        for flag in ("-f", "-l"):
            result = await run_cli(self, "lookup", flag, "cli_p_two", *grape)
            first_last += result.out.decode().splitlines()
        # A Node grape's lookup order changes from one lookup to the next: each is one of them.
        self.assertEqual(len(first_last), 2)
        self.assertLessEqual(set(first_last), {"127.0.0.1:4102", "127.0.0.1:4103"})
        result = await run_cli(self, "lookup", "-f", "cli_p_none", "cli_p_one", *grape)
        self.assertEqual((result.code, result.out), (1, b"127.0.0.1:4101\n"), result.describe())

    @async_test
    async def test_get_flags_and_grenache_cli_key_on_node_grapes(self) -> None:
        from tests.test_cli_parity import CLI_PUBLIC, spawn_with_home, write_cli_keys

        first, second = await self.node_grapes(verify=True)
        result = await run_cli(self, "put", "for the flags", "-g", first.url)
        key = result.json()
        result = await run_cli(self, "get", key, "-r", "-g", second.url)
        item = json.loads(result.out)
        self.assertEqual(item["v"], "for the flags", result.describe())
        result = await run_cli(self, "get", key, "-i", "-g", second.url)
        self.assertEqual(result.out.decode(), f"{item['id']}\n", result.describe())
        if item.get("token") is not None:
            result = await run_cli(self, "get", key, "-w", "-g", second.url)
            self.assertEqual(result.out.decode(), f"{item['token']}\n", result.describe())
        # A put signed with grenache-keygen's expanded key, which a verifying Node grape checks.
        home = Path(self.mktemp()).resolve()
        write_cli_keys(home / ".grenache-cli")
        put = spawn_with_home(
            self,
            home,
            "put",
            "-m",
            "-s",
            "node",
            "-n",
            "3",
            "signed by the cli key",
            "-g",
            "127.0.0.1",
            "-p",
            str(first.api_port),
        )
        result = await put.finish()
        self.assertEqual(result.code, 0, result.describe())
        mutable = result.json()
        self.assertEqual(mutable, bep44.mutable_key(CLI_PUBLIC, b"node").hex())
        result = await run_cli(self, "get", mutable, "-s", "node", "-g", second.url)
        item = result.json()
        self.assertEqual(
            (item["v"], item["seq"], item["k"]),
            ("signed by the cli key", 3, CLI_PUBLIC.hex()),
            result.describe(),
        )
        result = await run_cli(self, "get", mutable, "-s", "node", "-v", "-g", second.url)
        self.assertEqual(result.json(), "signed by the cli key", result.describe())


class NodePubSubTests(unittest.TestCase):
    timeout = 180

    def setUp(self) -> None:
        harness.node_modules_dir()

    @async_test
    async def test_grenache_pub_to_node_sub(self) -> None:
        grape = await harness.start_python_grape(self)
        pub = grenache(self, "pub", "cli_to_node", "-g", grape.url)
        await pub.line(0)
        sub = harness.spawn_node(
            self, "cli_pubsub.js", ["sub", grape.url, "cli_to_node", "2"], name="node-sub"
        )
        self.assertEqual(await sub.ready, {"ready": True})
        pub.write("hello node ✓\nsecond\n".encode())
        self.assertEqual(await sub.next_message(), {"message": "hello node ✓"})
        self.assertEqual(await sub.next_message(), {"message": "second"})
        pub.close_stdin()
        self.assertEqual((await pub.finish()).code, 0)

    @async_test
    async def test_node_pub_to_grenache_sub(self) -> None:
        grape = await harness.start_python_grape(self)
        pub = harness.spawn_node(
            self, "cli_pubsub.js", ["pub", grape.url, "node_to_cli"], name="node-pub"
        )
        await pub.ready
        await harness.lookup_until(grape.url, "node_to_cli", bool, "finds the Node publisher")
        sub = grenache(self, "sub", "node_to_cli", "--count", "2", "-g", grape.url)
        self.assertEqual(await pub.next_message(), {"event": "connection"})
        stdin: Any = pub.transport  # the Node process's stdin
        stdin.write("from node ✓\nagain\n".encode())
        result = await sub.finish()
        self.assertEqual(result.code, 0, result.describe())
        self.assertEqual(result.out.decode(), "from node ✓\nagain\n")


class NodeTLSTests(unittest.TestCase):
    """TLS with a client-certificate whitelist from the shell alone, against Node peers with
    their ``secure`` options (certificates from tests.support.make_pki, written to files)."""

    timeout = 180

    def setUp(self) -> None:
        harness.node_modules_dir()

    def files(self) -> dict[str, str]:
        return pki_files(self)

    @async_test
    async def test_node_http_client_calls_grenache_serve_over_tls(self) -> None:
        """(a) grenache serve --tls-* --tls-client-fingerprints, a Node HTTP client with
        ``secure``; a Node client with an unlisted certificate is refused."""
        grape = await harness.start_python_grape(self)
        files = self.files()
        pki = make_pki()
        _, ready = await serve(
            self,
            "cli_node_tls",
            "--transport",
            "http",
            "--handler",
            "tests.test_cli:echo",
            "--tls-key",
            files["server.key"],
            "--tls-cert",
            files["server.crt"],
            "--tls-ca",
            files["ca"],
            "--tls-client-fingerprints",
            pki.client.fingerprint,
            "-g",
            grape.url,
        )
        self.assertEqual(ready["announced"], {"cli_node_tls": 1})
        op = {
            "op": "request",
            "name": "cli_node_tls",
            "payload": {"n": 1},
            "opts": {"timeout": 10000},
        }
        for stem, allowed in (("client", True), ("other", False)):
            with self.subTest(client=stem):
                secure = {
                    "key": files[f"{stem}.key"],
                    "cert": files[f"{stem}.crt"],
                    "ca": files["ca"],
                    "rejectUnauthorized": True,
                }
                proc = harness.spawn_node(
                    self,
                    "http_client.js",
                    [json.dumps({"grape": grape.url, "secure": secure})],
                    name=f"node-tls-{stem}",
                )
                await proc.ready
                reply = await NodeClient(proc).call(op)
                if allowed:
                    self.assertTrue(reply["ok"], reply)
                    self.assertEqual(reply["result"]["payload"], {"n": 1})
                    self.assertEqual(reply["result"]["peer_certificate"], pki.client.fingerprint)
                else:
                    self.assertFalse(reply["ok"], reply)
                await proc.stop()

    @async_test
    async def test_grenache_request_calls_node_http_server_over_tls(self) -> None:
        """(b) grenache request --tls-* against a Node HTTP server with ``secure`` options
        (requestCert, rejectUnauthorized): Node's handler sees the CLI's certificate."""
        grape = await harness.start_python_grape(self)
        files = self.files()
        pki = make_pki()
        secure = {
            "key": files["server.key"],
            "cert": files["server.crt"],
            "ca": files["ca"],
            "requestCert": True,
            "rejectUnauthorized": True,
        }
        conf = {"grape": grape.url, "names": ["cli_tls_node"], "tag": "node-tls", "secure": secure}
        proc = harness.spawn_node(
            self, "http_server.js", [json.dumps(conf)], name="node-tls-server"
        )
        await proc.ready
        call = ("request", "cli_tls_node", '{"via": "cli"}', "-g", grape.url)
        listed = ("--tls-ca", files["ca"], "--tls-cert", files["client.crt"])
        result = await run_cli(self, *call, *listed, "--tls-key", files["client.key"])
        self.assertEqual(result.code, 0, result.describe())
        reply = result.json()
        self.assertEqual((reply["server"], reply["echo"]), ("node-tls", {"via": "cli"}))
        self.assertEqual(reply["fingerprint"], pki.client.fingerprint)
        # Node refuses a certificate its CA did not sign; an untrusting client refuses Node.
        rogue = await run_cli(
            self,
            *call,
            "--tls-ca",
            files["ca"],
            "--tls-cert",
            files["rogue.crt"],
            "--tls-key",
            files["rogue.key"],
            "--timeout",
            "5",
        )
        self.assertEqual(rogue.code, 1, rogue.describe())
        self.assertTrue(rogue.err.startswith(b"grenache request: "), rogue.describe())
        untrusting = await run_cli(
            self,
            *call,
            "--timeout",
            "5",
            "--tls-cert",
            files["client.crt"],
            "--tls-key",
            files["client.key"],
            "--tls-ca",
            files["client.crt"],
        )
        self.assertEqual(untrusting.code, 1, untrusting.describe())

    @async_test
    async def test_grenache_request_calls_node_ws_server_with_a_whitelist(self) -> None:
        """(b) over WebSocket: Node's verifyClient whitelist admits the listed certificate."""
        grape = await harness.start_python_grape(self)
        files = self.files()
        pki = make_pki()
        tls = {
            "key": pki.server.key.decode(),
            "cert": pki.server.cert.decode(),
            "ca": pki.ca.cert.decode(),
        }
        conf = {
            "grape": grape.url,
            "name": "cli_tls_ws",
            "tls": tls,
            "whitelist": [pki.client.fingerprint],
        }
        proc = harness.spawn_node(self, "ws_server.js", [json.dumps(conf)], name="node-wss")
        ready = await proc.ready
        dest = f"127.0.0.1:{ready['port']}"
        await harness.lookup_until(grape.url, "cli_tls_ws", lambda d: dest in d, f"lists {dest}")
        call = ("request", "cli_tls_ws", "[1, 2]", "-t", "ws", "-g", grape.url, "--timeout", "10")
        result = await run_cli(
            self,
            *call,
            "--tls-ca",
            files["ca"],
            "--tls-cert",
            files["client.crt"],
            "--tls-key",
            files["client.key"],
        )
        self.assertEqual(result.code, 0, result.describe())
        self.assertEqual(
            result.json(),
            {"echo": [1, 2], "key": "cli_tls_ws", "fingerprint": pki.client.fingerprint},
        )
        refused = await run_cli(
            self,
            *call,
            "--tls-ca",
            files["ca"],
            "--tls-cert",
            files["other.crt"],
            "--tls-key",
            files["other.key"],
        )
        self.assertEqual(refused.code, 1, refused.describe())
        self.assertIn(b"401", refused.err)
