"""``twistd grenache-service``: options, handler loading, the service in-process against an
in-process grape, and a real ``twistd -n grenache-service`` run."""

from __future__ import annotations

import socket
import sys
from pathlib import Path
from typing import Any

from twisted.internet.defer import ensureDeferred
from twisted.python import usage
from twisted.trial.unittest import TestCase

from grenache import errors
from grenache.handlers import HandlerError, load_handler
from grenache.link import Link
from grenache.peer import PeerRPCClient, Request
from grenache.proxy_tap import Options as ProxyOptions
from grenache.service_tap import (
    GrenacheService,
    Options,
    ServiceConfig,
    makeService,
)
from grenache.tls import ServerTLS
from grenache.tls_options import ClientWhitelistContextFactory
from grenache.transports import transport_names
from grenache.transports.http import HTTPClientTransport
from grenache.transports.ws import WSClientTransport
from tests import test_cli
from tests.interop.harness import start_python_grape
from tests.support import make_pki
from tests.test_cli import TWISTD, reactor, run_cli, spawn
from tests.test_tls_options import pki_files


def parse(*argv: str) -> Options:
    options = Options()
    options.parseOptions(list(argv))
    return options


class OptionsTests(TestCase):
    def test_defaults(self) -> None:
        config = parse("--name", "svc", "--handler", "m:f").config()
        self.assertEqual(config.names, ("svc",))
        self.assertEqual((config.transport, config.port, config.handler), ("http", 0, "m:f"))
        self.assertEqual(config.grape, "http://127.0.0.1:30001")
        self.assertIsNone(config.interface)
        self.assertEqual(config.announce_interval, 40.0)

    def test_everything(self) -> None:
        config = parse(
            "--name",
            "a",
            "--name",
            "b",
            "--transport",
            "ws",
            "--port",
            "1337",
            "--handler",
            "pkg.mod:Class.method",
            "--grape",
            "ws://127.0.0.1:30002",
            "--bind",
            "127.0.0.1",
            "--announce-interval",
            "2.5",
        ).config()
        self.assertEqual(config.names, ("a", "b"))
        self.assertEqual((config.transport, config.port), ("ws", 1337))
        self.assertEqual((config.grape, config.interface), ("ws://127.0.0.1:30002", "127.0.0.1"))
        self.assertEqual(config.announce_interval, 2.5)

    def test_usage_errors(self) -> None:
        for argv in (
            ("--handler", "m:f"),
            ("--name", "x"),
            ("--name", "", "--handler", "m:f"),
            ("--name", "x", "--handler", "m:f", "--transport", "smtp"),
            ("--name", "x", "--handler", "m:f", "--port", "65536"),
            ("--name", "x", "--handler", "m:f", "--announce-interval", "0"),
            ("--name", "x", "--handler", "m:f", "--announce-interval", "inf"),
            ("--name", "x", "--handler", "m:f", "extra"),
        ):
            with self.subTest(argv=argv):
                self.assertRaises(usage.UsageError, parse, *argv)

    def test_help_shows_an_example(self) -> None:
        text = str(Options())
        self.assertIn("twistd -n grenache-service --name fibonacci_worker", text)
        self.assertIn("--handler", text)

    def test_shell_completion(self) -> None:
        actions = Options.compData.optActions
        self.assertEqual(actions["transport"]._items, ["http", "ws", "zmq"])  # type: ignore[attr-defined]
        self.assertIn("grape", actions)
        self.assertIn("bind", actions)

    def test_transports_come_from_the_registry(self) -> None:
        self.assertEqual(transport_names(), ["http", "ws", "zmq"])
        error = self.assertRaises(
            usage.UsageError, parse, "--name", "x", "--handler", "m:f", "--transport", "nope"
        )
        self.assertEqual(str(error), "unknown transport 'nope' (available: http, ws, zmq)")

    def test_tls_flags(self) -> None:
        files = pki_files(self)
        base = ("--name", "x", "--handler", "m:f")
        self.assertIsNone(parse(*base).config().tls)
        pair = ("--tls-key", files["server.key"], "--tls-cert", files["server.crt"])
        self.assertIsInstance(parse(*base, *pair).config().tls, ServerTLS)
        fingerprint = make_pki().client.fingerprint
        pinned = parse(*base, *pair, "--tls-client-fingerprints", fingerprint).config().tls
        self.assertIsInstance(pinned, ClientWhitelistContextFactory)
        self.assertEqual(pinned.fingerprints, {fingerprint})
        missing = str(Path(self.mktemp()).resolve())
        error = self.assertRaises(
            usage.UsageError, parse, *base, "--tls-key", missing, "--tls-cert", files["ca"]
        )
        self.assertEqual(str(error), f"--tls-key: cannot read {missing}: No such file or directory")
        error = self.assertRaises(
            usage.UsageError, parse, *base, *pair, "--listen", "ssl:0:privateKey=k:certKey=c"
        )
        self.assertIn("TLS twice", str(error))
        error = self.assertRaises(
            usage.UsageError, parse, *base, "--listen", f"ssl:0:privateKey={missing}"
        )
        self.assertIn(f"cannot read {missing}", str(error))

    def test_the_proxy_checks_where_to_listen_the_same_way(self) -> None:
        """The proxy's --listen/--port/--bind/--tls-key checks are the service's (one
        AnnouncedServiceOptions.check_where), TLS twice included."""
        files = pki_files(self)
        pair = ("--tls-key", files["server.key"], "--tls-cert", files["server.crt"])
        for argv, fragment in (
            (("--listen", "tcp:0", "--port", "1"), "give --port or --listen, not both"),
            (("--listen", "tcp:0", "--bind", "::1"), "put interface=ADDRESS in the --listen"),
            ((*pair, "--listen", "ssl:0:privateKey=k:certKey=c"), "TLS twice"),
        ):
            with self.subTest(argv=argv):
                proxy = ProxyOptions()
                error = self.assertRaises(
                    usage.UsageError, proxy.parseOptions, ["--from", "http", *argv]
                )
                self.assertIn(fragment, str(error))

    def test_listen(self) -> None:
        config = parse("--name", "x", "--handler", "m:f", "--listen", "tcp6:0").config()
        self.assertEqual((config.listen, config.where), ("tcp6:0", "tcp6:0"))
        config = parse("--name", "x", "--handler", "m:f", "--port", "1337").config()
        self.assertEqual((config.listen, config.where), (None, 1337))
        for argv, fragment in (
            (("--listen", "tcp:0", "--port", "1"), "give --port or --listen, not both"),
            (("--listen", "tcp:0", "--bind", "::1"), "put interface=ADDRESS in the --listen"),
            (("--listen", "carrier:7"), "--listen: not a port number or an endpoint"),
            (("--listen", "tcp:notaport"), "--listen: "),
        ):
            with self.subTest(argv=argv):
                error = self.assertRaises(
                    usage.UsageError, parse, "--name", "x", "--handler", "m:f", *argv
                )
                self.assertIn(fragment, str(error))


class HandlerLoadingTests(TestCase):
    def test_function_and_dotted_attribute(self) -> None:
        self.assertIs(load_handler("tests.test_cli:echo"), test_cli.echo)
        self.assertEqual(load_handler("tests.test_cli:Result.json"), test_cli.Result.json)

    def test_errors(self) -> None:
        for spec, fragment in (
            ("tests.test_cli", "is not of the form pkg.module:function"),
            (":echo", "is not of the form"),
            ("tests.test_cli:", "is not of the form"),
            ("tests.no_such:f", "no module named 'tests.no_such'"),
            ("tests.test_cli:nope", "'tests.test_cli' has no attribute 'nope'"),
            ("tests.test_cli:REPO", "is not callable"),
        ):
            with self.subTest(spec=spec):
                error = self.assertRaises(HandlerError, load_handler, spec)
                self.assertIn(fragment, str(error))

    def test_module_that_fails_to_import(self) -> None:
        package = Path(self.mktemp()).resolve()
        package.mkdir()
        (package / "broken_handler_module.py").write_text("import no_such_dependency_xyz\n")
        (package / "raising_handler_module.py").write_text("raise RuntimeError('at import')\n")
        sys.path.insert(0, str(package))
        self.addCleanup(sys.path.remove, str(package))
        error = self.assertRaises(HandlerError, load_handler, "broken_handler_module:f")
        self.assertIn("importing 'broken_handler_module' failed", str(error))
        self.assertIn("no_such_dependency_xyz", str(error))
        error = self.assertRaises(HandlerError, load_handler, "raising_handler_module:f")
        self.assertIn("RuntimeError: at import", str(error))


class MakeServiceTests(TestCase):
    def test_bad_handler_is_a_one_line_error(self) -> None:
        options = parse("--name", "x", "--handler", "tests.no_such:f")
        error = self.assertRaises(SystemExit, makeService, options)
        self.assertEqual(
            error.code,
            "twistd grenache-service: no module named 'tests.no_such' "
            f"(looked in {Path.cwd()} too)",
        )

    def test_port_in_use_is_a_one_line_error(self) -> None:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as taken:
            taken.bind(("127.0.0.1", 0))
            taken.listen(1)
            port = taken.getsockname()[1]
            options = parse(
                "--name",
                "x",
                "--handler",
                "tests.test_cli:echo",
                "--port",
                str(port),
                "-b",
                "127.0.0.1",
            )
            error = self.assertRaises(SystemExit, makeService, options)
        self.assertEqual(
            error.code,
            f"twistd grenache-service: cannot listen on TCP port {port}: Address already in use",
        )

    def test_port_is_bound_by_makeService(self) -> None:
        options = parse("--name", "x", "--handler", "tests.test_cli:echo", "-b", "127.0.0.1")
        service: Any = makeService(options)
        self.addCleanup(service.stopService)
        self.assertIsInstance(service, GrenacheService)
        self.assertGreater(service.port, 0)


class ServiceTests(TestCase):
    """A GrenacheService in-process, announced to an in-process grape."""

    timeout = 60

    async def start(
        self, handler: Any, transport: str = "http", names: tuple[str, ...] = ("tap_svc",)
    ) -> tuple[GrenacheService, PeerRPCClient, Any]:
        grape = await start_python_grape(self)
        config = ServiceConfig(
            names=names,
            handler=handler,
            transport=transport,
            grape=grape.url,
            interface="127.0.0.1",
        )
        service = GrenacheService(config, reactor)
        service.startService()
        self.addCleanup(lambda: service.stopService() if service.running else None)
        assert service.started is not None
        announced = await service.started
        self.assertEqual(announced, {name: 1 for name in names})
        link = Link(grape.url, reactor=reactor)
        kind = HTTPClientTransport if transport == "http" else WSClientTransport
        client = PeerRPCClient(link, kind(reactor), reactor=reactor, timeout=5)

        async def stop_client() -> None:
            await client.stop()
            await link.stop()

        self.addCleanup(lambda: ensureDeferred(stop_client()))
        return service, client, grape

    async def test_handler_kinds(self) -> None:
        for transport in ("http", "ws"):
            for spec, payload, expected in (
                ("tests.test_cli:coroutine_double", 4, 8),
                ("tests.test_cli:deferred_upper", "up", "UP"),
            ):
                with self.subTest(transport=transport, spec=spec):
                    service, client, _ = await self.start(spec, transport)
                    self.assertEqual(await client.request("tap_svc", payload), expected)
                    await service.stopService()

    async def test_request_object(self) -> None:
        seen: list[Request] = []

        def handler(request: Request) -> str:
            seen.append(request)
            return "ok"

        _, client, _ = await self.start(handler, names=("tap_a", "tap_b"))
        self.assertEqual(await client.request("tap_b", {"p": 1}), "ok")
        (request,) = seen
        self.assertEqual((request.key, request.payload), ("tap_b", {"p": 1}))
        self.assertIsInstance(request.rid, str)
        self.assertIsNone(request.peer_certificate)

    async def test_exception_becomes_the_error_string(self) -> None:
        _, client, _ = await self.start("tests.test_cli:broken")
        error = await self.assertFailure(client.request("tap_svc", 1), errors.RemoteError)
        self.assertEqual(error.message, "ERR_BROKEN: no can do")
        # The service logs the handler's traceback too.
        self.assertEqual(len(self.flushLoggedErrors(ValueError)), 1)

    async def test_stop_ends_announcing_and_closes_the_port(self) -> None:
        service, client, _ = await self.start("tests.test_cli:echo", names=("tap_x", "tap_y"))
        self.assertEqual(
            sorted(service.link.announcing()), [("tap_x", service.port), ("tap_y", service.port)]
        )
        await service.stopService()
        self.assertEqual(service.link.announcing(), [])
        self.assertFalse(service.link.running)
        # Stopping unannounced the names: the grape no longer lists the service at all.
        await self.assertFailure(client.request("tap_x", 1), errors.LookupEmpty)

    async def test_grape_down_at_start(self) -> None:
        config = ServiceConfig(
            names=("tap_lonely",),
            handler="tests.test_cli:echo",
            grape=f"http://127.0.0.1:{test_cli.free_port()}",
            interface="127.0.0.1",
        )
        service = GrenacheService(config, reactor)
        service.startService()
        self.addCleanup(service.stopService)
        assert service.started is not None
        announced = await service.started
        self.assertIn("ERR_GRAPE_UNREACHABLE", announced["tap_lonely"])
        # Still serving, and still trying to announce.
        self.assertEqual(service.link.announcing(), [("tap_lonely", service.port)])


class TwistdTests(TestCase):
    """The real ``twistd -n grenache-service`` (the plugin from this checkout)."""

    timeout = 120

    async def test_twistd_serves_and_shuts_down(self) -> None:
        grape = await start_python_grape(self)
        twistd = spawn(
            self,
            (
                *TWISTD,
                "-n",
                "--pidfile=",
                "grenache-service",
                "--name",
                "twistd_svc",
                "--handler",
                "tests.test_cli:echo",
                "--grape",
                grape.url,
                "--bind",
                "127.0.0.1",
            ),
        )
        await twistd.wait_for(
            lambda p: b"Announced 'twistd_svc'" in p.out + p.err, "the announce log line"
        )
        result = await run_cli(self, "request", "twistd_svc", '"via twistd"', "-g", grape.url)
        self.assertEqual(result.code, 0, result.describe())
        self.assertEqual(result.json()["payload"], "via twistd")
        ended = await twistd.stop()
        self.assertIn(b"Server Shut Down", ended.out + ended.err, ended.describe())

    async def test_twistd_bad_handler(self) -> None:
        twistd = spawn(
            self,
            (*TWISTD, "-n", "--pidfile=", "grenache-service", "--name", "x", "--handler", "x:y"),
        )
        result = await twistd.finish()
        self.assertEqual(result.code, 1, result.describe())
        self.assertIn(b"twistd grenache-service: no module named 'x'", result.out + result.err)

    async def test_twistd_completes_the_options(self) -> None:
        argv = (*TWISTD, "grenache-service", "--tr", "--_shell-completion", "zsh:3")
        result = await spawn(self, argv).finish()
        self.assertIn(
            b"--transport=[RPC transport: http or ws or zmq.]:transport:(http ws zmq)", result.out
        )
        self.assertIn(b"--bind=[", result.out)

    async def test_twistd_lists_the_plugin(self) -> None:
        result = await spawn(self, (*TWISTD, "--help")).finish()
        self.assertIn(b"grenache-service", result.out)
        result = await spawn(self, (*TWISTD, "grenache-service", "--help")).finish()
        self.assertIn(b"twistd -n grenache-service --name fibonacci_worker", result.out)
