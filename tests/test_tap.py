"""``twistd grape``: options, the service ``makeService`` builds, the plugin as installed by
``pip install .``, and real runs (one serving, one on a taken port)."""

from __future__ import annotations

import json
import os
import select
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import tempfile
import time
import urllib.request
from pathlib import Path

from twisted.application.internet import StreamServerEndpointService, TimerService, UDPServer
from twisted.internet import reactor
from twisted.internet.task import deferLater
from twisted.python import usage
from twisted.trial.unittest import TestCase

from grenache.grape.service import Grape
from grenache.grape.tap import Options, makeService

REPO = Path(__file__).resolve().parent.parent


def free_port(kind: int = socket.SOCK_STREAM) -> int:
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class OptionsTests(TestCase):
    def parse(self, *argv: str) -> Options:
        options = Options()
        options.parseOptions(list(argv))
        return options

    def test_defaults_are_a_standalone_grape(self) -> None:
        config = self.parse().config()
        self.assertEqual((config.dht_port, config.api_port, config.ws_port), (20001, 30001, None))
        self.assertEqual(config.bootstrap, ())
        self.assertEqual((config.peer_max_age, config.max_payload_size), (120.0, 8192))
        self.assertEqual(
            (config.node_liveness, config.max_tables, config.max_values), (300.0, 5000, 5000)
        )
        self.assertTrue(config.verify_mutable)

    def test_node_spellings(self) -> None:
        config = self.parse(
            "--dht_port",
            "20005",
            "--api_port",
            "40001",
            "--bootstrap",
            "127.0.0.1:20002,,10.0.0.1:1",
            "--bind",
            "127.0.0.1",
            "--dht_peer_maxAge",
            "0",
            "--dht_nodeLiveness",
            "900000",
            "--dht_maxTables",
            "10",
            "--dht_maxValues",
            "20",
            "--check_maxPayloadSize",
            "0",
            "--apw",
            "0",
            "--dc",
            "32",
            "--cache_maxAge",
            "1",
        ).config()
        self.assertEqual((config.dht_port, config.api_port, config.ws_port), (20005, 40001, 0))
        self.assertEqual(config.bootstrap, (("127.0.0.1", 20002), ("10.0.0.1", 1)))
        self.assertEqual(config.host, "127.0.0.1")
        self.assertEqual((config.peer_max_age, config.node_liveness), (0.0, 900.0))
        self.assertEqual(
            (config.max_tables, config.max_values, config.max_payload_size), (10, 20, None)
        )

    def test_api_ports_take_endpoint_descriptions(self) -> None:
        config = self.parse("--aph", "tcp6:30001", "--apw", "tcp:0:interface=127.0.0.1").config()
        self.assertEqual(
            (config.api_port, config.ws_port), ("tcp6:30001", "tcp:0:interface=127.0.0.1")
        )
        self.assertEqual(self.parse("--api_port", " 40001 ").config().api_port, 40001)

    def test_bad_endpoint_descriptions_are_usage_errors(self) -> None:
        error = self.assertRaises(usage.UsageError, self.parse, "--aph", "bogus:1")
        self.assertIn("'bogus:1'", str(error))
        error = self.assertRaises(
            usage.UsageError, self.parse, "--apw", "ssl:0:privateKey=/nonexistent/key.pem"
        )
        self.assertIn("/nonexistent/key.pem", str(error))

    def test_bootstrap_takes_names_and_bracketed_ipv6(self) -> None:
        config = self.parse("--bn", "localhost:20002, grape-2:20001,[::1]:20003").config()
        self.assertEqual(
            config.bootstrap, (("localhost", 20002), ("grape-2", 20001), ("::1", 20003))
        )

    def test_short_spellings(self) -> None:
        config = self.parse(
            "--dp", "1", "--aph", "2", "--bn", "h:3", "-b", "0.0.0.0", "--dpa", "200"
        ).config()
        self.assertEqual((config.dht_port, config.api_port, config.bootstrap), (1, 2, (("h", 3),)))
        self.assertEqual(config.peer_max_age, 0.2)

    def test_bad_values_are_usage_errors(self) -> None:
        for argv in (
            ["--dp", "70000"],
            ["--aph", "x"],
            ["--bn", "nohost"],
            ["--bn", "h:0"],
            ["--bn", "[::1:5"],
            ["--bn", "a:b:5"],
            ["--apw", "70000"],
            ["--dpa", "-1"],
        ):
            self.assertRaises(usage.UsageError, self.parse, *argv)

    def test_help_shows_an_example(self) -> None:
        self.assertIn("twistd -n grape --dp 20001", str(Options()))

    async def test_port_in_use_is_a_one_line_error(self) -> None:
        dht = free_port(socket.SOCK_DGRAM)
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as taken:
            taken.bind(("127.0.0.1", 0))
            taken.listen(1)
            port = taken.getsockname()[1]
            options = self.parse("--dp", str(dht), "--aph", str(port), "-b", "127.0.0.1")
            service = makeService(options)
            error = self.assertRaises(SystemExit, service.privilegedStartService)
        self.assertEqual(
            error.code,
            f"twistd grape: cannot listen on HTTP API port {port}: Address already in use",
        )
        # All or none: the DHT port bound before the failure is closed (UDP ports close on the
        # next reactor turn).
        await deferLater(reactor, 0, lambda: None)
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as again:
            again.bind(("", dht))


class MakeServiceTests(TestCase):
    """``makeService`` builds a MultiService as ``twisted.names``' tap does; nothing is bound
    until ``twistd`` starts it."""

    def test_children(self) -> None:
        options = Options()
        options.parseOptions(["--dp", "0", "--aph", "tcp:0:interface=127.0.0.1", "--apw", "0"])
        grape = makeService(options)
        self.assertIsInstance(grape, Grape)
        self.assertEqual(
            [(s.name, type(s)) for s in grape],  # type: ignore[attr-defined]
            [
                ("dht", UDPServer),
                ("http-api", StreamServerEndpointService),
                ("ws-api", StreamServerEndpointService),
                ("maintenance", TimerService),
            ],
        )
        self.assertFalse(grape.running)

    def test_no_websocket_api_unless_asked(self) -> None:
        options = Options()
        options.parseOptions([])
        names = [s.name for s in makeService(options)]  # type: ignore[attr-defined]
        self.assertEqual(names, ["dht", "http-api", "maintenance"])


def _post(url: str, body: object) -> object:
    request = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST")
    with urllib.request.urlopen(request, timeout=5) as response:
        return json.loads(response.read())


def _read_until(process: subprocess.Popen[bytes], marker: bytes, deadline: float) -> bytes:
    """Read the process's output until ``marker`` appears, it exits, or ``deadline`` s pass."""
    assert process.stdout is not None
    fd = process.stdout.fileno()
    output = b""
    end = time.monotonic() + deadline
    while marker not in output and time.monotonic() < end:
        ready, _, _ = select.select([fd], [], [], max(0.0, end - time.monotonic()))
        if not ready:
            break
        chunk = os.read(fd, 65536)
        if not chunk:
            break
        output += chunk
    return output


def _clean_environment() -> dict[str, str]:
    """This environment without the variables that would put the checkout on ``sys.path``."""
    return {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}


class TwistdTests(TestCase):
    """The plugin is found by ``twistd`` after ``pip install .`` (the README's command), and
    the installed grape serves, and stops with one line and status 1 on a taken port.

    Every interpreter here runs isolated (``python -I``, no ``PYTHON*`` variables): a
    ``PYTHONPATH`` naming the checkout (as some test runners set) would otherwise put the
    checkout's ``twisted/plugins`` ahead of the installed copy, and the test would not test the
    installation it claims to.
    """

    def install(self) -> Path:
        root = Path(tempfile.mkdtemp(prefix="grenache-install-"))
        self.addCleanup(shutil.rmtree, root, True)
        venv = root / "venv"
        subprocess.run(
            [sys.executable, "-I", "-m", "venv", str(venv)], check=True, env=_clean_environment()
        )
        python = venv / "bin" / "python"
        # The dependencies come from this interpreter's site-packages, named in a .pth line:
        # that does not run the .pth files there, so an editable install of this checkout
        # stays invisible and only the copy installed below can provide the plugin.
        site = self.python(
            python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"
        ).stdout.strip()
        Path(site, "system-deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
        # Install from a copy so the checkout's own twisted/plugins is not on the path.
        source = root / "src"
        shutil.copytree(
            REPO,
            source,
            ignore=shutil.ignore_patterns(
                ".git", ".cache", "_trial_temp*", "node_modules", "dropin.cache", "*.egg-info"
            ),
        )
        self.python(
            python,
            "-m",
            "pip",
            "install",
            "--quiet",
            "--no-deps",
            "--disable-pip-version-check",
            str(source),
        )
        self.cwd = root
        return python

    def python(self, python: Path, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(python), "-I", *args],
            check=True,
            capture_output=True,
            text=True,
            cwd=getattr(self, "cwd", None),
            env=_clean_environment(),
        )

    def twistd(self, python: Path, *args: str) -> subprocess.Popen[bytes]:
        """Start the installed ``twistd`` with ``args``; stopped (SIGTERM) at cleanup."""
        process = subprocess.Popen(
            [
                str(python),
                "-I",
                "-c",
                "import sys; sys.argv[0] = 'twistd'; from twisted.scripts.twistd import run; run()",
                *args,
            ],
            cwd=self.cwd,
            env=_clean_environment(),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

        def stop() -> None:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGTERM)
                try:
                    process.wait(10)
                except subprocess.TimeoutExpired:
                    os.killpg(process.pid, signal.SIGKILL)
                    process.wait()
            assert process.stdout is not None
            process.stdout.close()

        self.addCleanup(stop)
        return process

    def test_twistd_runs_the_installed_grape(self) -> None:
        python = self.install()
        located = self.python(
            python, "-c", "import twisted.plugins.grenache_plugins as p; print(p.__file__)"
        )
        self.assertTrue(located.stdout.startswith(str(self.cwd / "venv")), located.stdout)
        listing = self.python(
            python,
            "-c",
            "import sys; sys.argv[0] = 'twistd'; from twisted.scripts.twistd import run; run()",
            "--help",
        )
        self.assertIn("grape", listing.stdout)

        dht, api = free_port(socket.SOCK_DGRAM), free_port()
        process = self.twistd(
            python,
            "-n",
            "--pidfile=",
            "grape",
            "--dp",
            str(dht),
            "--aph",
            str(api),
            "-b",
            "127.0.0.1",
        )
        marker = f"HTTP API tcp 127.0.0.1:{api}".encode()
        output = _read_until(process, marker, deadline=30)
        self.assertIn(marker, output, output.decode(errors="replace")[-2000:])
        self.assertIn(f"DHT udp 0.0.0.0:{dht}".encode(), output)
        url = f"http://127.0.0.1:{api}"
        self.assertEqual(_post(url + "/announce", {"rid": "r", "data": ["rpc_test", 1337]}), 1)
        self.assertEqual(
            _post(url + "/lookup", {"rid": "r", "data": "rpc_test"}), ["127.0.0.1:1337"]
        )

        # A second grape on the same HTTP port: one line naming the port, status 1.
        other = self.twistd(
            python, "-n", "--pidfile=", "grape", "--dp", "0", "--aph", str(api), "-b", "127.0.0.1"
        )
        self.assertEqual(other.wait(30), 1)
        assert other.stdout is not None
        lines = other.stdout.read().decode(errors="replace").splitlines()
        errors = [line for line in lines if "cannot listen" in line]
        self.assertEqual(len(errors), 1, lines)
        self.assertTrue(
            errors[0].endswith(
                f"twistd grape: cannot listen on HTTP API port {api}: Address already in use"
            ),
            errors,
        )
        self.assertNotIn("Traceback", "\n".join(lines))

        os.killpg(process.pid, signal.SIGTERM)
        # twistd shuts down cleanly, then re-raises SIGTERM so the status tells why it stopped.
        self.assertIn(process.wait(10), (0, -signal.SIGTERM))
        self.assertIn(b"Server Shut Down", _read_until(process, b"Server Shut Down", deadline=5))
