"""``twistd grape``: options, the plugin as installed by ``pip install .``, and a real run."""

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

from twisted.python import usage
from twisted.trial.unittest import SkipTest, TestCase

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
            ["--dpa", "-1"],
        ):
            self.assertRaises(usage.UsageError, self.parse, *argv)

    def test_help_shows_an_example(self) -> None:
        self.assertIn("twistd -n grape --dp 20001", str(Options()))

    def test_port_in_use_is_a_one_line_error(self) -> None:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as taken:
            taken.bind(("127.0.0.1", 0))
            taken.listen(1)
            port = taken.getsockname()[1]
            options = self.parse("--dp", "0", "--aph", str(port), "-b", "127.0.0.1")
            error = self.assertRaises(SystemExit, makeService, options)
        self.assertIn(f"cannot listen on HTTP API (TCP) port {port}", str(error.code))


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


class TwistdTests(TestCase):
    """The plugin is found by ``twistd`` after ``pip install .`` (the README's command)."""

    def install(self) -> Path:
        if shutil.which("git") is None:
            raise SkipTest("needs git to copy the tracked tree")
        root = Path(tempfile.mkdtemp(prefix="grenache-install-"))
        self.addCleanup(shutil.rmtree, root, True)
        venv = root / "venv"
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        python = venv / "bin" / "python"
        # The dependencies come from this interpreter's site-packages, named in a .pth line:
        # that does not run the .pth files there, so an editable install of this checkout
        # stays invisible and only the copy installed below can provide the plugin.
        site = subprocess.run(
            [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
            check=True,
            capture_output=True,
            text=True,
        ).stdout.strip()
        Path(site, "system-deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
        # Install from a copy so the checkout's own twisted/plugins is not on the path.
        source = root / "src"
        shutil.copytree(
            REPO,
            source,
            ignore=shutil.ignore_patterns(".git", ".cache", "_trial_temp*", "node_modules"),
        )
        subprocess.run(
            [
                str(python),
                "-m",
                "pip",
                "install",
                "--quiet",
                "--no-deps",
                "--disable-pip-version-check",
                str(source),
            ],
            check=True,
            cwd=root,
            capture_output=True,
        )
        self.cwd = root
        return python

    def test_twistd_runs_the_installed_grape(self) -> None:
        python = self.install()
        twistd = [
            str(python),
            "-c",
            "import sys; sys.argv[0] = 'twistd'; from twisted.scripts.twistd import run; run()",
        ]
        located = subprocess.run(
            [str(python), "-c", "import twisted.plugins.grenache_plugins as p; print(p.__file__)"],
            capture_output=True,
            text=True,
            cwd=self.cwd,
        )
        self.assertTrue(
            located.stdout.startswith(str(self.cwd / "venv")), located.stdout + located.stderr
        )
        env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
        listing = subprocess.run(
            [*twistd, "--help"], capture_output=True, text=True, cwd=self.cwd, env=env
        )
        self.assertIn("grape", listing.stdout)
        dht, api = free_port(socket.SOCK_DGRAM), free_port()
        process = subprocess.Popen(
            [
                *twistd,
                "-n",
                "--pidfile=",
                "grape",
                "--dp",
                str(dht),
                "--aph",
                str(api),
                "-b",
                "127.0.0.1",
            ],
            cwd=self.cwd,
            env=env,
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
        output = _read_until(process, b"HTTP API tcp/", deadline=30)
        self.assertIn(b"HTTP API tcp/", output, output.decode(errors="replace")[-2000:])
        url = f"http://127.0.0.1:{api}"
        self.assertEqual(_post(url + "/announce", {"rid": "r", "data": ["rpc_test", 1337]}), 1)
        self.assertEqual(
            _post(url + "/lookup", {"rid": "r", "data": "rpc_test"}), ["127.0.0.1:1337"]
        )
        os.killpg(process.pid, signal.SIGTERM)
        # twistd shuts down cleanly, then re-raises SIGTERM so the status tells why it stopped.
        self.assertIn(process.wait(10), (0, -signal.SIGTERM))
        self.assertIn(b"Server Shut Down", _read_until(process, b"Server Shut Down", deadline=5))
