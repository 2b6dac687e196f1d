"""``grenache serve|request|map --transport zmq`` and ``grenache keygen --curve``, as
subprocesses through a Python grape (the helpers of tests/test_cli.py)."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

from twisted.python import usage
from twisted.trial.unittest import TestCase

from tests.interop.harness import start_python_grape
from tests.test_cli import grenache, parse, run_cli


class ZmqCLITests(TestCase):
    timeout = 180

    async def test_serve_request_map(self) -> None:
        """A service served over ZeroMQ answers request and map through the grape."""
        grape = await start_python_grape(self)
        serve = grenache(
            self, "serve", "cli_zmq", "--handler", "tests.test_cli:echo", "-t", "zmq",
            "-g", grape.url,
        )  # fmt: skip
        ready = json.loads(await serve.line(0))
        self.assertEqual((ready["transport"], ready["announced"]), ("zmq", {"cli_zmq": 1}))
        result = await run_cli(self, "request", "cli_zmq", '{"x":1}', "-t", "zmq", "-g", grape.url)
        self.assertEqual(result.code, 0, result.describe())
        self.assertEqual(result.json()["payload"], {"x": 1})
        mapped = await run_cli(self, "map", "cli_zmq", "[2]", "-t", "zmq", "-g", grape.url)
        self.assertEqual(mapped.code, 0, mapped.describe())
        self.assertEqual([r["payload"] for r in mapped.json()], [[2]])
        ended = await serve.stop()
        self.assertIn(b"over zmq on port", ended.err)

    async def test_curve_accepted_and_refused(self) -> None:
        """keygen --curve; a server with a whitelist; the listed client is answered (and the
        handler sees its key), another key is refused with a one-line error."""
        work = Path(self.mktemp()).resolve()
        work.mkdir()
        keys = {}
        for name in ("server", "client", "stranger"):
            made = await run_cli(self, "keygen", "--curve", str(work / f"{name}.json"))
            self.assertEqual(made.code, 0, made.describe())
            keys[name] = made.json()["public"]
            mode = stat.S_IMODE(os.stat(work / f"{name}.json").st_mode)
            self.assertEqual(mode, 0o600)
        grape = await start_python_grape(self)
        serve = grenache(
            self, "serve", "cli_curve", "--handler", "tests.test_cli:echo", "-t", "zmq",
            "--curve-key", str(work / "server.json"), "--curve-clients", keys["client"],
            "-g", grape.url,
        )  # fmt: skip
        await serve.line(0)
        common = ("-t", "zmq", "-g", grape.url, "--curve-server-key", keys["server"])
        result = await run_cli(
            self, "request", "cli_curve", "1", *common, "--curve-key", str(work / "client.json")
        )
        self.assertEqual(result.code, 0, result.describe())
        self.assertEqual(result.json()["peer_certificate"], keys["client"])
        refused = await run_cli(
            self, "request", "cli_curve", "1", *common, "--curve-key", str(work / "stranger.json")
        )
        self.assertEqual(refused.code, 1, refused.describe())
        self.assertIn(b"refused this client's CURVE key", refused.err)
        await serve.stop()

    def test_flag_errors(self) -> None:
        """CURVE flags need --transport zmq; TLS flags are refused with it."""
        for argv, fragment in (
            (("request", "x", "1", "--curve-server-key", "k"), "CURVE needs --transport zmq"),
            (("request", "x", "1", "-t", "zmq", "--tls-insecure"), "the zmq transport has no TLS"),
            (("request", "x", "1", "-t", "zmq", "--curve-server-key", "short"), "40 Z85"),
            (("serve", "x", "--handler", "m:f", "-t", "zmq", "--curve-clients", "k"), "needs"),
            (("sub", "x", "-t", "zmq", "--curve-key", "f.json"), "needs --curve-server-key"),
        ):
            with self.subTest(argv=argv):
                error = self.assertRaises(usage.UsageError, parse, *argv)
                self.assertIn(fragment, str(error))
