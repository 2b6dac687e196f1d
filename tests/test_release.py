"""The release artefacts: ``python -m build`` makes an sdist and a wheel from this checkout, the
wheel installs into a fresh virtual environment, and from there ``twistd`` finds the plugins,
``grenache`` runs, and a grape, a served handler and a request work end to end.

This is where Twisted projects usually break: a wheel without ``twisted/plugins``, one that
ships a ``twisted/__init__.py`` over Twisted's own, or a plugin cache (``dropin.cache``) that
hides the plugin. Nothing here imports the checkout: every interpreter runs isolated (no
``PYTHON*`` variables, ``-I`` where it is Python) in a temporary directory.

Building needs the package registry (the build backend is fetched into an isolated build
environment, the dependencies into the virtual environment; pip's cache makes later runs
quick). Without it the tests skip, saying so, unless ``GRENACHE_INTEROP=required`` or
``CI=true`` is set: then they fail. One build and one virtual environment serve every test.
"""

from __future__ import annotations

import atexit
import configparser
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tarfile
import tempfile
import threading
import zipfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from twisted.trial.unittest import SkipTest, TestCase

import grenache

REPO = Path(__file__).resolve().parent.parent
VERSION = grenache.__version__
DIST = "grenache_twisted"

# What the copy of the checkout leaves behind: VCS data, caches, build output, other runs' debris.
_IGNORE = shutil.ignore_patterns(
    ".git",
    ".cache",
    ".tox",
    ".mypy_cache",
    ".ruff_cache",
    ".hypothesis",
    "_trial_temp*",
    "node_modules",
    "dropin.cache",
    "*.egg-info",
    "__pycache__",
    "build",
    "dist",
    "_build",
)

HANDLER = '''\
"""A handler for ``grenache serve``: it says which grenache answered."""

import grenache


def echo(request):
    return {"payload": request.payload, "grenache": grenache.__file__}
'''


def _required() -> bool:
    return os.environ.get("GRENACHE_INTEROP") == "required" or os.environ.get("CI") == "true"


def _environment() -> dict[str, str]:
    """This environment without what would put the checkout on ``sys.path``."""
    return {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}


def _run(
    argv: Sequence[str | Path], cwd: Path, timeout: float = 600
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(a) for a in argv],
        cwd=cwd,
        env=_environment(),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def _checked(result: subprocess.CompletedProcess[str]) -> subprocess.CompletedProcess[str]:
    if result.returncode != 0:
        raise AssertionError(
            f"{' '.join(result.args)} exited {result.returncode}\n"
            f"stdout:\n{result.stdout[-3000:]}\nstderr:\n{result.stderr[-3000:]}"
        )
    return result


class Installation:
    """One build of the checkout and one virtual environment with the wheel installed."""

    def __init__(self) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="grenache-release-"))
        atexit.register(shutil.rmtree, self.root, True)
        self.work = self.root / "work"
        self.work.mkdir()
        (self.work / "release_handler.py").write_text(HANDLER)
        self.dist = self.root / "dist"
        self.venv = self.root / "venv"
        self.bin = self.venv / "bin"
        self.python = self.bin / "python"

    def build(self) -> None:
        """Build the sdist, then the wheel from it, with ``python -m build`` from a tool venv."""
        tools = self.root / "tools"
        _checked(_run([sys.executable, "-I", "-m", "venv", tools], self.root))
        fetched = _run(
            [
                tools / "bin" / "python",
                "-I",
                "-m",
                "pip",
                "install",
                "--quiet",
                "--no-compile",
                "build",
            ],
            self.root,
        )
        if fetched.returncode != 0:
            reason = (
                f"cannot fetch the build tool from the package registry: {fetched.stderr[-500:]}"
            )
            if _required():
                raise AssertionError(reason)
            raise SkipTest(reason)
        source = self.root / "src"
        shutil.copytree(REPO, source, ignore=_IGNORE)
        _checked(
            _run(
                [tools / "bin" / "python", "-I", "-m", "build", "--outdir", self.dist, source],
                self.root,
            )
        )

    def install(self) -> None:
        """A fresh venv with the wheel (its dependencies from the registry) and nothing else."""
        _checked(_run([sys.executable, "-I", "-m", "venv", self.venv], self.root))
        _checked(
            _run(
                [
                    self.python,
                    "-I",
                    "-m",
                    "pip",
                    "install",
                    "--quiet",
                    "--no-compile",
                    "--disable-pip-version-check",
                    self.wheel,
                ],
                self.root,
            )
        )

    @property
    def wheel(self) -> Path:
        return self.dist / f"{DIST}-{VERSION}-py3-none-any.whl"

    @property
    def sdist(self) -> Path:
        return self.dist / f"{DIST}-{VERSION}.tar.gz"

    def site_packages(self) -> Path:
        out = _checked(
            _run(
                [
                    self.python,
                    "-I",
                    "-c",
                    "import sysconfig; print(sysconfig.get_paths()['purelib'])",
                ],
                self.work,
            )
        )
        return Path(out.stdout.strip())

    def run(self, *argv: str | Path, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        """Run a command of the venv (``twistd``, ``grenache``, ``python``) to its end."""
        return _run([self.bin / argv[0], *argv[1:]], self.work, timeout)


_installation: Installation | None = None
_failure: BaseException | None = None


def installation() -> Installation:
    """The build and venv, made by the first test that asks; a failure is kept for the rest."""
    global _installation, _failure
    if _failure is not None:
        raise _failure
    if _installation is None:
        made = Installation()
        try:
            made.build()
            made.install()
        except BaseException as e:
            _failure = e
            raise
        _installation = made
    return _installation


class Running:
    """A command of the venv running in its own process group; its output gathered by a
    thread, so a test waits on a condition of it; stopped by the test's cleanups."""

    def __init__(self, case: TestCase, argv: Sequence[str | Path], cwd: Path) -> None:
        self.output = b""
        self.argv = [str(a) for a in argv]
        self._changed = threading.Condition()
        self.process = subprocess.Popen(
            self.argv,
            cwd=cwd,
            env=_environment(),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        case.addCleanup(self.stop)

    def _read(self) -> None:
        stdout = self.process.stdout
        assert stdout is not None
        for chunk in iter(lambda: os.read(stdout.fileno(), 65536), b""):
            with self._changed:
                self.output += chunk
                self._changed.notify_all()
        with self._changed:
            self._changed.notify_all()

    def wait_for(self, pattern: bytes, timeout: float = 60) -> re.Match[bytes]:
        """The first match of ``pattern`` in the output, waiting up to ``timeout`` seconds."""
        compiled = re.compile(pattern)

        with self._changed:
            self._changed.wait_for(
                lambda: compiled.search(self.output) or not self._reader.is_alive(), timeout
            )
            match = compiled.search(self.output)
        if match is None:
            raise AssertionError(
                f"{self.argv}: no {pattern!r} within {timeout}s (exit {self.process.poll()}):\n"
                + self.output.decode(errors="replace")[-3000:]
            )
        return match

    def stop(self) -> int:
        """SIGTERM to the process group, SIGKILL if it is still there after 10 s; the status."""
        if self.process.poll() is None:
            try:
                os.killpg(self.process.pid, signal.SIGTERM)
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
            except ProcessLookupError:
                self.process.wait()
        self._reader.join(10)
        assert self.process.stdout is not None
        self.process.stdout.close()
        return self.process.returncode


_REQUIREMENT = re.compile(r"^([A-Za-z0-9_.-]+)(\[[^]]*\])?\s*(.*)$")


def _normalized(name: str) -> str:
    """A distribution name as pip compares them (PEP 503)."""
    return re.sub(r"[-_.]+", "-", name).lower()


def declared_minimums(setup_cfg: str) -> dict[str, str]:
    """``{name: lower bound}`` of every ``install_requires`` line of ``setup_cfg``'s text; a line
    without exactly one ``>=`` bound (others may only be ``<`` or ``!=``) is an error."""
    parser = configparser.ConfigParser()
    parser.read_string(setup_cfg)
    minimums = {}
    for line in parser["options"]["install_requires"].strip().splitlines():
        match = _REQUIREMENT.match(line.strip())
        if match is None:
            raise ValueError(f"unreadable requirement {line!r}")
        name, _, specifiers = match.groups()
        bounds = [b.strip() for b in specifiers.split(",") if b.strip()]
        lower = [b[2:].strip() for b in bounds if b.startswith(">=")]
        others = [b for b in bounds if not b.startswith((">=", "<", "!="))]
        if len(lower) != 1 or others:
            raise ValueError(f"{line.strip()!r}: one '>=' lower bound expected")
        minimums[_normalized(name)] = lower[0]
    return minimums


def pinned(constraints: str) -> dict[str, str]:
    """``{name: version}`` of the ``name==version`` lines of a constraints file."""
    pins = {}
    for line in constraints.splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, sep, version = line.partition("==")
            if not sep:
                raise ValueError(f"{line!r}: 'name==version' expected")
            pins[_normalized(name.strip())] = version.strip()
    return pins


class MinimumsTests(TestCase):
    """``requirements/mindeps.txt`` (what ``tox -e mindeps`` installs) pins exactly the lower
    bounds ``setup.cfg`` declares."""

    def test_constraints_pin_the_declared_minimums(self) -> None:
        declared = declared_minimums((REPO / "setup.cfg").read_text())
        self.assertIn("twisted", declared)
        self.assertIn("autobahn", declared)
        self.assertEqual(pinned((REPO / "requirements" / "mindeps.txt").read_text()), declared)

    def test_readers_catch_a_mismatch(self) -> None:
        cfg = (
            "[options]\ninstall_requires =\n    twisted[tls] >= 24.3.0, < 27\n    Foo_Bar >= 1.2\n"
        )
        self.assertEqual(declared_minimums(cfg), {"twisted": "24.3.0", "foo-bar": "1.2"})
        self.assertNotEqual(
            pinned("twisted==24.3.0\nfoo.bar==1.2.0 # no\n"), declared_minimums(cfg)
        )
        with self.assertRaises(ValueError):
            declared_minimums("[options]\ninstall_requires =\n    attrs\n")
        with self.assertRaises(ValueError):
            declared_minimums("[options]\ninstall_requires =\n    attrs > 1, >= 2\n")
        with self.assertRaises(ValueError):
            pinned("attrs>=23\n")


class ArtefactTests(TestCase):
    """What the sdist and the wheel carry."""

    timeout = 900

    def test_wheel_carries_the_package_and_the_plugin(self) -> None:
        with zipfile.ZipFile(installation().wheel) as wheel:
            names = set(wheel.namelist())
            metadata = wheel.read(f"{DIST}-{VERSION}.dist-info/METADATA").decode()
        self.assertIn("twisted/plugins/grenache_plugins.py", names)
        self.assertIn("grenache/py.typed", names)
        self.assertIn("grenache/__init__.py", names)
        self.assertIn("grenache/cli/main.py", names)
        # Nothing that would shadow Twisted's own package, no test code, no plugin cache.
        self.assertNotIn("twisted/__init__.py", names)
        self.assertNotIn("twisted/plugins/__init__.py", names)
        self.assertEqual([n for n in names if n.startswith(("tests/", "examples/", "bench/"))], [])
        self.assertEqual([n for n in names if n.endswith((".pyc", "dropin.cache"))], [])
        self.assertEqual(
            {n.split("/")[0] for n in names}, {"grenache", "twisted", f"{DIST}-{VERSION}.dist-info"}
        )
        self.assertIn(f"Version: {VERSION}\n", metadata)
        self.assertIn("Requires-Python: >=3.10", metadata)
        self.assertIn("Requires-Dist: twisted[tls]", metadata)

    def test_sdist_carries_what_the_tests_and_docs_need(self) -> None:
        top = f"{DIST}-{VERSION}/"
        with tarfile.open(installation().sdist) as sdist:
            names = {n.removeprefix(top) for n in sdist.getnames()}
        for needed in (
            "setup.cfg",
            "pyproject.toml",
            "MANIFEST.in",
            "README.rst",
            "NEWS.rst",
            "tox.ini",
            "requirements/mindeps.txt",
            "twisted/plugins/grenache_plugins.py",
            "grenache/py.typed",
            "tests/__init__.py",
            "tests/support.py",
            "tests/interop/harness.py",
            "tests/interop/node/package.json",
            "tests/interop/node/package-lock.json",
            "docs/conf.py",
            "docs/index.rst",
            "docs/protocol.rst",
            "docs/release.rst",
            "examples/fibonacci_service.py",
        ):
            self.assertIn(needed, names)
        self.assertEqual([n for n in names if n.endswith((".pyc", "dropin.cache"))], [])
        self.assertEqual([n for n in names if "node_modules" in n or "_build/" in n], [])


class InstalledWheelTests(TestCase):
    """The wheel installed in a fresh virtual environment, used from there."""

    timeout = 900

    def setUp(self) -> None:
        self.venv = installation()

    def test_installed_from_the_venv_not_the_checkout(self) -> None:
        out = _checked(
            self.venv.run(
                "python",
                "-I",
                "-c",
                "import importlib.metadata as m, grenache, twisted;"
                " import twisted.plugins.grenache_plugins as p;"
                " print(m.version('grenache-twisted'), grenache.__version__,"
                " grenache.__file__, p.__file__, twisted.__file__, sep='\\n')",
            )
        ).stdout.split()
        self.assertEqual(out[:2], [VERSION, VERSION])
        site = self.venv.site_packages()
        self.assertEqual([Path(p).is_relative_to(site) for p in out[2:]], [True] * 3, out)
        # Twisted's own twisted/__init__.py: the wheel added a plugin, not a package.
        self.assertIn("__version__", (site / "twisted" / "__init__.py").read_text())

    def test_twistd_finds_the_plugins_and_keeps_finding_them_from_its_cache(self) -> None:
        cache = self.venv.site_packages() / "twisted" / "plugins" / "dropin.cache"
        for run in ("first", "cached"):
            listing = _checked(self.venv.run("twistd", "--help"))
            for plugin, summary in (
                ("grape", "A Grenache grape"),
                ("grenache-service", "A Grenache RPC service"),
                ("grenache-proxy", "A Grenache transport proxy"),
            ):
                self.assertRegex(listing.stdout, rf"\n\s+{plugin}\s+{summary}", run)
            self.assertNotIn("Traceback", listing.stdout + listing.stderr)
            # twistd wrote the plugin cache on the first run (the venv is writable) and the
            # second run read the plugin from it.
            self.assertTrue(cache.exists(), run)
        grape = _checked(self.venv.run("twistd", "grape", "--help"))
        self.assertIn("Usage: twistd [options] grape [options]", grape.stdout)
        self.assertIn("--bootstrap", grape.stdout)
        service = _checked(self.venv.run("twistd", "grenache-service", "--help"))
        self.assertIn("--handler", service.stdout)

    def test_grenache_command(self) -> None:
        usage = _checked(self.venv.run("grenache", "--help"))
        self.assertIn("Usage: grenache VERB", usage.stdout)
        for verb in ("lookup", "request", "serve", "pub", "sub"):
            self.assertRegex(usage.stdout, rf"\n\s+{verb}\s")
        self.assertEqual(
            _checked(self.venv.run("grenache", "--version")).stdout.strip(), f"grenache {VERSION}"
        )

    def test_grape_service_and_request_end_to_end(self) -> None:
        grape = Running(
            self,
            [
                self.venv.bin / "twistd",
                "-n",
                "--pidfile=",
                "grape",
                "--dp",
                "0",
                "--aph",
                "0",
                "-b",
                "127.0.0.1",
            ],
            self.venv.work,
        )
        api = int(grape.wait_for(rb"HTTP API tcp 127\.0\.0\.1:(\d+)").group(1))
        url = f"http://127.0.0.1:{api}"
        serve = Running(
            self,
            [
                self.venv.bin / "grenache",
                "serve",
                "release_echo",
                "--handler",
                "release_handler:echo",
                "--grape",
                url,
            ],
            self.venv.work,
        )
        ready = json.loads(serve.wait_for(rb"(?m)^\{.*\}$").group(0))
        self.assertEqual(ready["announced"], {"release_echo": 1})
        answer = self.venv.run(
            "grenache",
            "request",
            "release_echo",
            '{"x": [1, "two"]}',
            "--grape",
            url,
            "--timeout",
            "20",
            timeout=60,
        )
        _checked(answer)
        reply: dict[str, Any] = json.loads(answer.stdout)
        self.assertEqual(reply["payload"], {"x": [1, "two"]})
        # The service that answered runs the installed copy.
        self.assertTrue(Path(reply["grenache"]).is_relative_to(self.venv.site_packages()), reply)

        self.assertIn(serve.stop(), (0, -signal.SIGTERM))
        self.assertIn(b"Stopped announcing 'release_echo'", serve.output)
        self.assertIn(grape.stop(), (0, -signal.SIGTERM))
        self.assertIn(b"Server Shut Down", grape.output)
        self.assertNotIn(b"Traceback", grape.output + serve.output)
