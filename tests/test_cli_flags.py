"""The command line's newer flags and errors: unknown options named for every verb, the
transport registry's names, ``--listen``, the ``--tls-*`` flags end to end between ``grenache``
processes, ``keygen``'s per-user default, ``--reactor asyncio`` with an asyncio handler, and
the wrong kind of port reported as such."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import stat
import sys
from pathlib import Path
from typing import Any

from twisted.internet.utils import getProcessOutputAndValue
from twisted.trial.unittest import TestCase

from grenache import cli
from grenache.peer import Request
from tests.interop.harness import start_python_grape
from tests.support import make_pki
from tests.test_cli import (
    CLI,
    REPO,
    TWISTD,
    Result,
    _Writer,
    echo,
    grenache,
    reactor,
    run_cli,
    spawn,
    start_server,
)
from tests.test_tls_options import pki_files

# --- handlers for the subprocesses ------------------------------------------------------------


async def asyncio_sleeper(request: Request) -> Any:
    """An asyncio handler: it needs the asyncio reactor's running loop."""
    await asyncio.sleep(0.01)
    loop = asyncio.get_running_loop()
    return {"slept": True, "payload": request.payload, "loop": type(loop).__name__}


# --- in-process parsing ---------------------------------------------------------------------


def main_error(case: TestCase, argv: list[str]) -> tuple[int, str]:
    """Run ``cli.main(argv)`` expecting a usage error: its exit status and stderr."""
    written: list[str] = []
    case.patch(sys, "stderr", _Writer(written))
    error = case.assertRaises(SystemExit, cli.main, argv)
    return int(error.code or 0), "".join(written)


#: A valid command line of each verb, to which a bad option is added.
VALID = {
    "lookup": ["svc"],
    "announce": ["svc", "1337"],
    "put": ["value"],
    "get": ["a" * 40],
    "keygen": ["key.json"],
    "request": ["svc", "1"],
    "map": ["svc", "1"],
    "serve": ["svc", "--handler", "m:f"],
    "pub": ["svc"],
    "sub": ["svc"],
    "proxy": ["--from", "http"],
}


class UsageErrorTests(TestCase):
    def test_every_verb_is_covered(self) -> None:
        self.assertEqual(set(VALID), {verb for verb, _, _ in cli.VERBS})

    def test_unknown_option_is_named_for_every_verb(self) -> None:
        for verb, argv in VALID.items():
            for bad in (["--bogus", "1"], ["--bogus"], ["-Q"]):
                with self.subTest(verb=verb, bad=bad):
                    expected = (
                        f"grenache {verb}: unknown option {bad[0]} (see grenache {verb} --help)\n"
                    )
                    for argv_order in ([verb, *argv, *bad], [verb, *bad, *argv]):
                        self.assertEqual(main_error(self, argv_order), (2, expected))

    def test_other_option_errors(self) -> None:
        code, text = main_error(self, ["request", "svc", "1", "--timeout"])
        self.assertEqual(
            (code, text.split(" (see")[0]), (2, "grenache request: option --timeout needs a value")
        )
        code, text = main_error(self, ["request", "svc", "1", "--compress=yes"])
        self.assertIn("option --compress takes no value", text)
        code, text = main_error(self, ["request", "svc", "-1"])
        self.assertIn("unknown option -1 (put -- before an argument that starts with -)", text)
        code, text = main_error(self, ["--bogus", "lookup", "x"])
        self.assertEqual(
            (code, text), (2, "grenache: unknown option --bogus (see grenache --help)\n")
        )

    def test_unknown_transport_lists_the_available_ones(self) -> None:
        for verb in ("request", "map", "serve"):
            with self.subTest(verb=verb):
                code, text = main_error(self, [verb, *VALID[verb], "--transport", "nope"])
                self.assertEqual(code, 2)
                self.assertIn(
                    f"grenache {verb}: unknown transport 'nope' (available: http, ws, zmq)", text
                )
        for verb in ("pub", "sub"):
            with self.subTest(verb=verb):
                code, text = main_error(self, [verb, "svc", "--transport", "nope"])
                self.assertIn("unknown transport 'nope' (available: ws, zmq)", text)
                code, text = main_error(self, [verb, "svc", "--transport", "http"])
                self.assertIn(
                    "the http transport has no publish/subscribe (available: ws, zmq)", text
                )

    def test_tls_flag_errors_name_the_file(self) -> None:
        files = pki_files(self)
        missing = str(Path(self.mktemp()).resolve())
        for argv, fragment in (
            (
                [
                    "serve",
                    "svc",
                    "--handler",
                    "m:f",
                    "--tls-key",
                    missing,
                    "--tls-cert",
                    files["server.crt"],
                ],
                f"--tls-key: cannot read {missing}",
            ),
            (
                ["serve", "svc", "--handler", "m:f", "--tls-key", files["server.key"]],
                "--tls-key needs --tls-cert too",
            ),
            (
                ["pub", "svc", "--tls-key", files["server.key"], "--tls-cert", files["ca"]],
                "does not belong to the certificate in",
            ),
            (["pub", "svc", "--tls-client-fingerprints", "AB"], "need --tls-key and --tls-cert"),
            (["request", "svc", "1", "--tls-ca", missing], f"--tls-ca: cannot read {missing}"),
            (["map", "svc", "1", "--tls-cert", files["client.crt"]], "--tls-cert needs --tls-key"),
            (["sub", "svc", "--tls-ca", files["client.key"]], "holds no PEM certificate"),
        ):
            with self.subTest(argv=argv[:2]):
                code, text = main_error(self, argv)
                self.assertEqual(code, 2)
                self.assertIn(fragment, text)
                self.assertEqual(text.count("\n"), 1, text)

    def test_listen_and_port(self) -> None:
        code, text = main_error(self, ["pub", "svc", "--listen", "tcp:0", "--port", "1"])
        self.assertEqual(code, 2)
        self.assertIn("give --port or --listen, not both", text)
        code, text = main_error(self, ["serve", "svc", "--handler", "m:f", "--listen", "bogus:1"])
        self.assertEqual(code, 2)
        self.assertIn(
            "grenache serve: --listen: not a port number or an endpoint description", text
        )
        options = cli.Options()
        options.parseOptions(["pub", "svc", "--listen", "tcp6:0"])
        self.assertEqual(options.subOptions["where"], "tcp6:0")

    def test_reactor_names(self) -> None:
        code, text = main_error(self, ["serve", "svc", "--handler", "m:f", "--reactor", "nosuch"])
        self.assertEqual(code, 2)
        self.assertIn("unknown reactor 'nosuch'", text)
        self.assertIn("asyncio", text)

    async def test_parsing_imports_no_reactor(self) -> None:
        """``--reactor`` can only work if nothing installed the global reactor before it."""
        code = (
            "import sys\n"
            "from grenache import cli\n"
            "o = cli.Options()\n"
            "o.parseOptions(['serve', 'x', '--handler', 'tests.test_cli:echo', '--tls-key',"
            f" {pki_files(self)['server.key']!r}, '--tls-cert',"
            f" {pki_files(self)['server.crt']!r}])\n"
            "print('twisted.internet.reactor' in sys.modules)\n"
        )
        out, err, status = await getProcessOutputAndValue(
            sys.executable, ["-c", code], env=dict(os.environ), path=str(REPO), reactor=reactor
        )
        self.assertEqual((status, out.strip()), (0, b"False"), err)


# --- subprocesses ---------------------------------------------------------------------------


class CommandLineTests(TestCase):
    timeout = 180

    def assertOneLineError(self, result: Result, verb: str, code: int = 1) -> str:
        self.assertEqual(result.code, code, result.describe())
        self.assertEqual(result.out, b"", result.describe())
        text = result.err.decode()
        self.assertEqual(text.count("\n"), 1, result.describe())
        self.assertTrue(text.startswith(f"grenache {verb}: "), result.describe())
        return text

    async def test_the_issue_example(self) -> None:
        result = await run_cli(self, "serve", "x", "--handler", "m:f", "--bogus", "1")
        text = self.assertOneLineError(result, "serve", code=2)
        self.assertEqual(
            text, "grenache serve: unknown option --bogus (see grenache serve --help)\n"
        )

    async def test_keygen_writes_to_the_home_directory(self) -> None:
        home = Path(self.mktemp()).resolve()
        work = Path(self.mktemp()).resolve()
        home.mkdir()
        work.mkdir()
        proc = spawn(self, (*CLI, "keygen"), work, {"HOME": str(home)})
        proc.close_stdin()
        result = await proc.finish()
        self.assertEqual(result.code, 0, result.describe())
        key_file = home / ".grenache" / "key.json"
        self.assertEqual(result.json()["file"], str(key_file))
        self.assertEqual(stat.S_IMODE(key_file.stat().st_mode), 0o600)
        self.assertEqual(stat.S_IMODE(key_file.parent.stat().st_mode), 0o700)
        self.assertEqual(list(work.iterdir()), [])
        self.assertEqual(
            cli.read_key_file(key_file).hex(), json.loads(key_file.read_text())["secretKey"]
        )
        again = spawn(self, (*CLI, "keygen"), work, {"HOME": str(home)})
        again.close_stdin()
        self.assertIn(b"already exists (use --force", (await again.finish()).err)

    async def test_serve_on_a_listen_description(self) -> None:
        grape = await start_python_grape(self)
        descriptions = ["tcp:0:interface=127.0.0.1"]
        if _ipv6_dual_stack():
            descriptions.append("tcp6:0")
        for description in descriptions:
            with self.subTest(listen=description):
                name = f"cli_listen_{len(description)}"
                serve = grenache(
                    self,
                    "serve",
                    name,
                    "--handler",
                    "tests.test_cli:echo",
                    "--listen",
                    description,
                    "-g",
                    grape.url,
                )
                ready = json.loads(await serve.line(0))
                self.assertGreater(ready["port"], 0)
                result = await run_cli(self, "request", name, '"via listen"', "-g", grape.url)
                self.assertEqual(result.code, 0, result.describe())
                self.assertEqual(result.json()["payload"], "via listen")
                await serve.stop()

    async def test_tls_rpc_with_a_client_whitelist(self) -> None:
        grape = await start_python_grape(self)
        files = pki_files(self)
        pki = make_pki()
        for transport in ("http", "ws"):
            with self.subTest(transport=transport):
                name = f"cli_tls_{transport}"
                serve = grenache(
                    self,
                    "serve",
                    name,
                    "--handler",
                    "tests.test_cli:echo",
                    "-t",
                    transport,
                    "--tls-key",
                    files["server.key"],
                    "--tls-cert",
                    files["server.crt"],
                    "--tls-ca",
                    files["ca"],
                    "--tls-client-fingerprints",
                    pki.client.fingerprint.lower(),
                    "-g",
                    grape.url,
                )
                await serve.line(0)
                call = ("request", name, '{"secret": 1}', "-t", transport, "-g", grape.url)
                listed = (
                    "--tls-ca",
                    files["ca"],
                    "--tls-cert",
                    files["client.crt"],
                    "--tls-key",
                    files["client.key"],
                )
                result = await run_cli(self, *call, *listed)
                self.assertEqual(result.code, 0, result.describe())
                reply = result.json()
                self.assertEqual(reply["payload"], {"secret": 1})
                self.assertEqual(reply["peer_certificate"], pki.client.fingerprint)
                for label, flags in (
                    (
                        "unlisted",
                        (
                            "--tls-ca",
                            files["ca"],
                            "--tls-cert",
                            files["other.crt"],
                            "--tls-key",
                            files["other.key"],
                        ),
                    ),
                    ("no certificate", ("--tls-ca", files["ca"])),
                    ("plain", ()),
                ):
                    with self.subTest(client=label):
                        refused = await run_cli(self, *call, *flags, "--timeout", "5")
                        text = self.assertOneLineError(refused, "request")
                        self.assertIn(f"'{name}'", text)
                await serve.stop()
        self.assertIn(b"Refused a TLS client", serve.err)

    async def test_tls_pub_sub(self) -> None:
        grape = await start_python_grape(self)
        files = pki_files(self)
        pki = make_pki()
        pub = grenache(
            self,
            "pub",
            "cli_tls_news",
            "--tls-key",
            files["server.key"],
            "--tls-cert",
            files["server.crt"],
            "--tls-client-fingerprints",
            pki.client.fingerprint,
            "--listen",
            "tcp:0:interface=127.0.0.1",
            "-g",
            grape.url,
        )
        await pub.line(0)
        sub = grenache(
            self,
            "sub",
            "cli_tls_news",
            "--count",
            "1",
            "--tls-ca",
            files["ca"],
            "--tls-cert",
            files["client.crt"],
            "--tls-key",
            files["client.key"],
            "-g",
            grape.url,
        )
        await sub.stderr_contains("connected to 'cli_tls_news'")
        pub.write("over TLS ✓\n".encode())
        result = await sub.finish()
        self.assertEqual(result.code, 0, result.describe())
        self.assertEqual(result.out.decode(), "over TLS ✓\n")
        pub.close_stdin()
        self.assertEqual((await pub.finish()).code, 0)

    async def test_wrong_kind_of_port(self) -> None:
        grape = await start_python_grape(self)
        await start_server(self, grape.url, "cli_is_ws", echo, transport="ws")
        await start_server(self, grape.url, "cli_is_http", echo, transport="http")
        for name, transport, expected in (
            ("cli_is_ws", "http", "websocket"),
            ("cli_is_http", "ws", "http"),
        ):
            with self.subTest(transport=transport):
                result = await run_cli(
                    self, "request", name, "1", "-t", transport, "-g", grape.url, "--timeout", "5"
                )
                text = self.assertOneLineError(result, "request")
                self.assertIn(expected, text.lower())
                self.assertNotIn("ERR_REQUEST_GENERIC:\n", text)
        # A ws:// grape URL at the grape's HTTP API.
        url = grape.url.replace("http://", "ws://")
        text = self.assertOneLineError(await run_cli(self, "lookup", "x", "-g", url), "lookup")
        self.assertIn("http api", text.lower())
        self.assertNotIn("is it running?", text)

    async def test_serve_on_the_asyncio_reactor(self) -> None:
        grape = await start_python_grape(self)
        serve = grenache(
            self,
            "serve",
            "cli_asyncio",
            "--reactor",
            "asyncio",
            "--handler",
            "tests.test_cli_flags:asyncio_sleeper",
            "-g",
            grape.url,
        )
        await serve.line(0)
        result = await run_cli(self, "request", "cli_asyncio", '"zz"', "-g", grape.url)
        self.assertEqual(result.code, 0, result.describe())
        self.assertEqual(result.json()["slept"], True)
        self.assertEqual(result.json()["payload"], "zz")
        ended = await serve.stop()
        self.assertIn(ended.code, (0, None), ended.describe())

    async def test_twistd_on_the_asyncio_reactor(self) -> None:
        grape = await start_python_grape(self)
        twistd = spawn(
            self,
            (
                *TWISTD,
                "-n",
                "--pidfile=",
                "-r",
                "asyncio",
                "grenache-service",
                "--name",
                "twistd_asyncio",
                "--handler",
                "tests.test_cli_flags:asyncio_sleeper",
                "--grape",
                grape.url,
                "--listen",
                "tcp:0:interface=127.0.0.1",
            ),
        )
        await twistd.wait_for(
            lambda p: b"Announced 'twistd_asyncio'" in p.out + p.err, "the announce log line"
        )
        result = await run_cli(self, "request", "twistd_asyncio", "7", "-g", grape.url)
        self.assertEqual(result.code, 0, result.describe())
        self.assertEqual(result.json()["payload"], 7)
        await twistd.stop()


def _ipv6_dual_stack() -> bool:
    if not socket.has_ipv6:
        return False
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as probe:
            probe.bind(("::", 0))
    except OSError:
        return False
    return True
