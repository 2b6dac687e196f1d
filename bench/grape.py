#!/usr/bin/env python3
"""Grape benchmark: the Python grape (``twistd -n grape``) side by side with the Node.js
grape (grenache-grape 1.0.0, ``tests/interop/node/grape.js``) in one run.

    python bench/grape.py [--seconds N] [--connections C] [--window W] [--rounds R]
                          [--topology lone,pair] [--rev REV] [--py-spy] [--no-ceiling]
                          [--json [PATH]] [--quick] [--keep]

What it measures, each phase against both grapes, R rounds (3) interleaved Python/Node with
the order alternating per round, each measurement N seconds (5) after a 1 s warm-up:

- HTTP API, ``POST /lookup`` with ``{"rid":"<uuid>","data":"rpc_test"}`` after announcing
  ``rpc_test`` once, and ``POST /announce`` with ``{"rid":"<uuid>","data":["rpc_test",1337]}``:
  ``wrk -t1 -cC`` (keep-alive, no pipelining, C = 32); falls back to ``bench/loadgen.py http``
  when wrk is not installed (``apt-get install wrk``).
- DHT: ``bench/loadgen.py udp``, bencoded ``get_peers`` queries (valid 20-byte id, the
  8-byte info_hash ``rpc_test``) with W (64) outstanding; answered queries/s.

Topologies: ``lone`` is each grape alone (both started with host 127.0.0.1, so each stores
its own announces and answers lookups from them; a lone Node grape answers every announce with
the error string "No nodes to query", which the output flags). ``pair`` gives each grape one
bootstrap grape of the same implementation, so a lookup is a real DHT walk (a get_peers round
trip over UDP) and an announce is an announce_peer to the other grape. The DHT phase runs in
the lone topology only (a get_peers is answered from the local store either way).

Fairness: every grape (and its pair peer) is pinned to CPU 0 with ``sched_setaffinity``, and
the load generator to CPU 1, so the server never shares a core with the client and both
implementations get the same single core. The generators' own ceilings are measured first
against trivial Node servers (``bench/node/trivial.js``) on CPU 0. On a 2-core machine any
other busy process skews the comparison, so each measurement waits for the machine to be
quiet, and is repeated (``--retries``) when other processes used more than ``--quiet`` % of
a core during it; the table counts only quiet rounds when there are any, and says how many.

Everything runs on 127.0.0.1, each process in its own process group that is killed in a
``finally``; files go to a temporary directory under /tmp, removed at the end unless ``--keep``.
``--py-spy`` runs each phase once more against the Python grape under py-spy (not counted in
the table) and prints its top functions. The Node packages come from the interop harness's
cache (``.cache/interop-node``, installed by ``npm ci`` on first use). The Python grapes run
the working tree's code, or with ``--rev REV`` that git revision, exported under /tmp (for
numbers that do not move while someone edits the tree); the header says which.

``--json PATH`` writes the results as bench JSON (bench/README.md: one object with rows of
rates per round and the Python/Node ratios; what ``python -m bench`` reads); ``--json`` alone
prints every measurement as one ``BENCHJSON`` line instead. ``--quick`` is a smoke run of a few
seconds per grape (lone topology, one 1 s round, no ceilings, no waiting for quiet).
``--repeats N`` is ``--rounds N``.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import http.client
import json
import os
import platform
import re
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
BENCH = REPO / "bench"
LOADGEN = BENCH / "loadgen.py"
TRIVIAL_JS = BENCH / "node" / "trivial.js"
NODE_GRAPE_JS = REPO / "tests" / "interop" / "node" / "grape.js"
NODE_MODULES = REPO / ".cache" / "interop-node" / "node_modules"
LOCALHOST = "127.0.0.1"
SERVICE = "rpc_test"
SERVICE_PORT = 1337
RID = str(uuid.uuid4())
LOOKUP_BODY = json.dumps({"rid": RID, "data": SERVICE}, separators=(",", ":"))
ANNOUNCE_BODY = json.dumps({"rid": RID, "data": [SERVICE, SERVICE_PORT]}, separators=(",", ":"))

SERVER_CPU = 0
LOAD_CPU = 1


# ---------------------------------------------------------------------------------------------
# Processes
# ---------------------------------------------------------------------------------------------


def _pin(cpu: int | None) -> Any:
    if cpu is None:
        return None

    def pin() -> None:
        os.sched_setaffinity(0, {cpu})

    return pin


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process (all its threads), in seconds."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def machine_busy_seconds() -> float:
    """CPU seconds spent by everything on the machine (user, nice, system, steal), all CPUs."""
    try:
        fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()
    except OSError:
        return 0.0
    user, nice, system = (int(x) for x in fields[1:4])
    steal = int(fields[8]) if len(fields) > 8 else 0
    return (user + nice + system + steal) / os.sysconf("SC_CLK_TCK")


def wait_quiet(limit_pct: float, max_wait: float) -> float:
    """Wait (at most ``max_wait`` s) until the machine's CPU use over 0.5 s is below
    ``limit_pct`` of one core; returns the last measured use, in percent of one core."""
    deadline = time.monotonic() + max_wait
    while True:
        before = machine_busy_seconds()
        time.sleep(0.5)
        busy = 100 * (machine_busy_seconds() - before) / 0.5
        if busy < limit_pct or time.monotonic() >= deadline:
            return busy


class QuietGate:
    """Measure when the machine is quiet: other processes on a 2-core machine skew the
    comparison, so wait for quiet before a measurement, and measure again when something
    else still used more than ``limit_pct`` of a core meanwhile. The waiting and
    re-measuring stop once ``budget`` seconds in all were spent on them."""

    def __init__(self, limit_pct: float, retries: int, budget: float) -> None:
        self.limit_pct = limit_pct
        self.retries = retries
        self.deadline = time.monotonic() + budget

    def measure(self, label: str, run: Callable[[], dict[str, Any]]) -> dict[str, Any]:
        for attempt in range(1 + self.retries):
            left = self.deadline - time.monotonic()
            if left > 0:
                wait_quiet(self.limit_pct, min(30.0, left))
            r = run()
            r["attempts"] = attempt + 1
            r["quiet"] = r["other_cpu_pct"] <= self.limit_pct
            if r["quiet"]:
                break
            again = attempt < self.retries and time.monotonic() < self.deadline
            print(
                f"  ({label}: other processes used {r['other_cpu_pct']:.0f}% of a core during "
                f"the run; {'measuring again' if again else 'kept, marked not quiet'})",
                flush=True,
            )
            if not again:
                break
        return r


@dataclass
class Proc:
    name: str
    popen: subprocess.Popen[bytes]
    log: Path

    @property
    def pid(self) -> int:
        return self.popen.pid

    def text(self) -> str:
        try:
            return self.log.read_text("utf-8", "replace")
        except OSError:
            return ""

    def tail(self, chars: int = 2000) -> str:
        return f"--- {self.name} (pid {self.pid}) log tail ---\n{self.text()[-chars:]}"

    def wait_for(self, pattern: str, timeout: float = 30.0) -> re.Match[str]:
        deadline = time.monotonic() + timeout
        regex = re.compile(pattern)
        while time.monotonic() < deadline:
            match = regex.search(self.text())
            if match:
                return match
            if self.popen.poll() is not None:
                raise RuntimeError(f"{self.name} exited ({self.popen.returncode})\n{self.tail()}")
            time.sleep(0.05)
        raise RuntimeError(f"{self.name}: no {pattern!r} within {timeout} s\n{self.tail()}")

    def stop(self) -> None:
        if self.popen.poll() is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.popen.pid, signal.SIGTERM)
            try:
                self.popen.wait(5)
            except subprocess.TimeoutExpired:
                pass
        # Whatever is left of the group, including a process that ignored SIGTERM.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.popen.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.popen.wait(5)


class Lab:
    """Starts processes in their own process groups under one temp dir; stops them all."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.procs: list[Proc] = []
        self.env = dict(os.environ, PYTHONDONTWRITEBYTECODE="1", NODE_PATH=str(NODE_MODULES))

    def spawn(self, name: str, argv: list[str], cpu: int | None) -> Proc:
        log = self.workdir / f"{re.sub(r'[^A-Za-z0-9_.-]', '_', name)}.log"
        with open(log, "wb") as out:
            popen = subprocess.Popen(
                argv,
                cwd=self.workdir,
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=_pin(cpu),
            )
        proc = Proc(name, popen, log)
        self.procs.append(proc)
        return proc

    def stop_all(self) -> None:
        while self.procs:
            self.procs.pop().stop()


@dataclass
class Grape:
    impl: str  # "python" | "node"
    dht_port: int
    api_port: int
    procs: list[Proc] = field(default_factory=list)  # the grape first, then its pair peer

    @property
    def main(self) -> Proc:
        return self.procs[0]

    def url(self, path: str) -> str:
        return f"http://{LOCALHOST}:{self.api_port}{path}"


def twistd_argv() -> list[str]:
    script = Path(sys.executable).with_name("twistd")
    if script.exists():
        return [sys.executable, str(script)]
    found = shutil.which("twistd")
    if found is None:
        raise SystemExit("twistd not found (pip install -e . in the repository)")
    return [found]


def start_python_grape(lab: Lab, cpu: int | None, bootstrap: int | None, label: str) -> Grape:
    argv = [*twistd_argv(), "-n", "--pidfile=", "grape", "--dp", "0", "--aph", "0"]
    argv += ["-b", LOCALHOST]
    if bootstrap is not None:
        argv += ["--bn", f"{LOCALHOST}:{bootstrap}"]
    proc = lab.spawn(label, argv, cpu)
    # Both startup lines: "udp/20001" (before the endpoint change) and "udp 0.0.0.0:20001".
    port = r"[ /](?:[^,\s]*:)?(\d+)"
    m = proc.wait_for(rf"listening: DHT udp{port}, HTTP API tcp{port}")
    return Grape("python", int(m.group(1)), int(m.group(2)), [proc])


def start_node_grape(lab: Lab, cpu: int | None, bootstrap: int | None, label: str) -> Grape:
    conf = {
        "host": LOCALHOST,
        "dht_bootstrap": [] if bootstrap is None else [f"{LOCALHOST}:{bootstrap}"],
    }
    proc = lab.spawn(label, ["node", str(NODE_GRAPE_JS), json.dumps(conf)], cpu)
    m = proc.wait_for(r'\{"dht_port":(\d+),"api_port":(\d+)')
    return Grape("node", int(m.group(1)), int(m.group(2)), [proc])


def start_grape(lab: Lab, impl: str, topology: str) -> Grape:
    start = start_python_grape if impl == "python" else start_node_grape
    if topology == "lone":
        return start(lab, SERVER_CPU, None, f"{impl}-lone")
    peer = start(lab, SERVER_CPU, None, f"{impl}-pair-peer")
    grape = start(lab, SERVER_CPU, peer.dht_port, f"{impl}-pair")
    grape.procs += peer.procs
    return grape


def ensure_node_modules() -> None:
    if (NODE_MODULES / "grenache-grape" / "package.json").is_file():
        return
    sys.path.insert(0, str(REPO))
    from twisted.trial.unittest import FailTest, SkipTest

    from tests.interop.harness import node_modules_dir

    print("installing the pinned Node packages (npm ci) into .cache/interop-node ...", flush=True)
    try:
        node_modules_dir()
    except (SkipTest, FailTest) as exc:
        raise SystemExit(f"cannot benchmark the Node grape: {exc}") from None


# ---------------------------------------------------------------------------------------------
# Requests and load
# ---------------------------------------------------------------------------------------------


def post(port: int, path: str, body: str, timeout: float = 10.0) -> tuple[int, str]:
    conn = http.client.HTTPConnection(LOCALHOST, port, timeout=timeout)
    try:
        conn.request("POST", path, body=body.encode(), headers={"Content-Type": "application/json"})
        reply = conn.getresponse()
        return reply.status, reply.read().decode("utf-8", "replace")
    finally:
        conn.close()


WRK_LUA = """\
wrk.method = "POST"
wrk.body = [==[{body}]==]
wrk.headers["Content-Type"] = "application/json"
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'BENCHJSON {{"count":%d,"duration_us":%d,"connect":%d,"read":%d,"write":%d,' ..
    '"status_errors":%d,"timeout":%d,"p50_us":%.1f,"p90_us":%.1f,"p99_us":%.1f,"max_us":%.1f}}\\n',
    summary.requests, summary.duration, e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max))
end
"""


class Loader:
    """Runs the load generators pinned to LOAD_CPU and measures CPU use on both sides."""

    def __init__(self, workdir: Path, use_wrk: bool) -> None:
        self.workdir = workdir
        self.wrk = shutil.which("wrk") if use_wrk else None

    def _run(
        self, argv: list[str], seconds: float, servers: list[int]
    ) -> tuple[str, dict[str, float]]:
        before = [cpu_seconds(pid) for pid in servers]
        children = resource.getrusage(resource.RUSAGE_CHILDREN)
        machine = machine_busy_seconds()
        started = time.monotonic()
        done = subprocess.run(
            argv,
            cwd=self.workdir,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            timeout=seconds + 60,
            preexec_fn=_pin(LOAD_CPU),
            check=False,
        )
        wall = time.monotonic() - started
        machine = machine_busy_seconds() - machine
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        if done.returncode != 0:
            raise RuntimeError(
                f"{argv[0]} failed ({done.returncode}): {done.stderr.decode()[-2000:]}"
            )
        server_cpu = sum(cpu_seconds(pid) for pid in servers) - sum(before)
        load_cpu = (after.ru_utime - children.ru_utime) + (after.ru_stime - children.ru_stime)
        # CPU used by anything else on the machine meanwhile (other benchmarks, builds...).
        other_cpu = max(0.0, machine - server_cpu - load_cpu)
        return done.stdout.decode(), {
            "server_cpu_pct": round(100 * server_cpu / wall, 0),
            "load_cpu_pct": round(100 * load_cpu / wall, 0),
            "other_cpu_pct": round(100 * other_cpu / wall, 0),
        }

    def http(
        self, url: str, body: str, seconds: float, connections: int, servers: list[int]
    ) -> dict[str, Any]:
        if self.wrk:
            script = self.workdir / "post.lua"
            script.write_text(WRK_LUA.format(body=body))
            argv = [
                self.wrk,
                "-t1",
                f"-c{connections}",
                f"-d{max(1, round(seconds))}s",
                "--timeout",
                "5s",
                "-s",
                str(script),
                url,
            ]
            out, cpu = self._run(argv, seconds, servers)
            m = re.search(r"^BENCHJSON (.*)$", out, re.M)
            if not m:
                raise RuntimeError(f"no result from wrk:\n{out[-2000:]}")
            result = json.loads(m.group(1))
            result["seconds"] = result.pop("duration_us") / 1e6
            result["rate"] = round(result["count"] / result["seconds"], 1)
            result["errors"] = sum(
                result[k] for k in ("connect", "read", "write", "status_errors", "timeout")
            )
            result["tool"] = "wrk"
        else:
            argv = [
                sys.executable,
                str(LOADGEN),
                "http",
                url,
                "--body",
                body,
                "--seconds",
                str(seconds),
                "--connections",
                str(connections),
            ]
            out, cpu = self._run(argv, seconds, servers)
            result = json.loads(out.strip().splitlines()[-1])
            result["errors"] = result["status_errors"] + result["read_errors"]
            result["tool"] = "loadgen.py"
        result.update(cpu)
        return result

    def udp(
        self, port: int, seconds: float, window: int, servers: list[int], echo: bool = False
    ) -> dict[str, Any]:
        argv = [
            sys.executable,
            str(LOADGEN),
            "udp",
            f"{LOCALHOST}:{port}",
            "--seconds",
            str(seconds),
            "--window",
            str(window),
            "--info-hash",
            SERVICE,
        ]
        if echo:
            argv.append("--echo")
        out, cpu = self._run(argv, seconds, servers)
        result = json.loads(out.strip().splitlines()[-1])
        result["errors"] = result["errors"] + result["lost"]
        result["tool"] = "loadgen.py udp"
        result.update(cpu)
        return result


# ---------------------------------------------------------------------------------------------
# py-spy
# ---------------------------------------------------------------------------------------------


class Profiler:
    """py-spy record of one process during one phase, summarised as top self/total frames."""

    def __init__(self, workdir: Path, lab: Lab) -> None:
        self.workdir = workdir
        self.lab = lab
        exe = shutil.which("py-spy")
        if exe is None:
            raise SystemExit("--py-spy: py-spy is not installed (pip install py-spy)")
        self.exe: str = exe
        self.reports: list[tuple[str, str]] = []

    def start(self, pid: int, label: str, seconds: float) -> tuple[Proc, Path, str]:
        out = self.workdir / f"pyspy-{re.sub(r'[^A-Za-z0-9]+', '-', label)}.txt"
        argv = [
            self.exe,
            "record",
            "--pid",
            str(pid),
            "--duration",
            str(int(seconds)),
            "--rate",
            "200",
            "--format",
            "raw",
            "--output",
            str(out),
        ]
        return self.lab.spawn(f"py-spy {label}", argv, LOAD_CPU), out, label

    def finish(self, handle: tuple[Proc, Path, str]) -> None:
        proc, out, label = handle
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.popen.wait(30)
        self.reports.append((label, summarise_collapsed(out)))


def _frame(frame: str) -> str:
    # py-spy raw frames look like "function (path/to/file.py:123)"
    m = re.match(r"(.*) \((.*?):(\d+)\)$", frame)
    if not m:
        return frame
    func, path, _ = m.groups()
    for marker in ("site-packages/", "/grenache/", "lib/python3"):
        i = path.find(marker)
        if i >= 0:
            path = (
                path[i + len(marker) :]
                if marker != "/grenache/"
                else "grenache/" + path[i + len(marker) :]
            )
            break
    return f"{func} ({path})"


def summarise_collapsed(path: Path, top: int = 15) -> str:
    if not path.exists():
        return "(no py-spy output)"
    own: Counter[str] = Counter()
    total: Counter[str] = Counter()
    samples = 0
    for line in path.read_text("utf-8", "replace").splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        samples += n
        frames = [_frame(f) for f in stack.split(";")]
        own[frames[-1]] += n
        for f in set(frames):
            total[f] += n
    if not samples:
        return "(no samples)"
    lines = [f"{samples} samples; top by own time:"]
    lines += [f"  {100 * n / samples:5.1f}%  {f}" for f, n in own.most_common(top)]
    lines.append("top grenache functions by total (inclusive) time:")
    ours = [(f, n) for f, n in total.most_common() if "(grenache/" in f][:top]
    lines += [f"  {100 * n / samples:5.1f}%  {f}" for f, n in ours]
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# The run
# ---------------------------------------------------------------------------------------------


@dataclass
class Row:
    phase: str
    topology: str
    results: dict[str, dict[str, Any]] = field(default_factory=dict)
    replies: dict[str, str] = field(default_factory=dict)


def aggregate(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Median of each measure over the quiet rounds (all rounds when none was quiet); errors
    added up over all rounds; the rates kept for the spread."""
    out: dict[str, Any] = {}
    quiet = [r for r in runs if r["quiet"]]
    kept = quiet or runs
    for key in ("rate", "p50_us", "p99_us", "server_cpu_pct", "load_cpu_pct"):
        out[key] = statistics.median(r[key] for r in kept)
    out["quiet_runs"] = f"{len(quiet)}/{len(runs)}"
    out["errors"] = sum(r["errors"] for r in runs)
    out["rates"] = [r["rate"] for r in kept]
    out["runs"] = runs
    return out


def fmt_rate(r: float) -> str:
    return f"{r / 1000:.1f}k" if r >= 1000 else f"{r:.0f}"


def fmt_spread(result: dict[str, Any]) -> str:
    rates = result["rates"]
    if len(rates) < 2:
        return fmt_rate(result["rate"])
    return f"{fmt_rate(result['rate'])} ({fmt_rate(min(rates))}-{fmt_rate(max(rates))})"


def fmt_us(us: float) -> str:
    return f"{us / 1000:.2f}ms" if us >= 1000 else f"{us:.0f}us"


def render_table(rows: list[Row]) -> str:
    header = [
        "phase",
        "topology",
        "Python/s",
        "Node/s",
        "Py/Node",
        "Py p50",
        "Py p99",
        "Node p50",
        "Node p99",
        "Py cpu",
        "Node cpu",
        "errors py/node",
        "quiet runs py/node",
    ]
    lines = [header]
    for row in rows:
        py, nd = row.results.get("python"), row.results.get("node")
        if py is None or nd is None:
            continue
        ratio = py["rate"] / nd["rate"] if nd["rate"] else float("inf")
        lines.append(
            [
                row.phase,
                row.topology,
                fmt_spread(py),
                fmt_spread(nd),
                f"{ratio:.2f}",
                fmt_us(py["p50_us"]),
                fmt_us(py["p99_us"]),
                fmt_us(nd["p50_us"]),
                fmt_us(nd["p99_us"]),
                f"{py['server_cpu_pct']:.0f}%",
                f"{nd['server_cpu_pct']:.0f}%",
                f"{py['errors']}/{nd['errors']}",
                f"{py['quiet_runs']} {nd['quiet_runs']}",
            ]
        )
    widths = [max(len(str(line[i])) for line in lines) for i in range(len(header))]
    out = [
        "| " + " | ".join(str(c).ljust(w) for c, w in zip(line, widths, strict=True)) + " |"
        for line in lines
    ]
    out.insert(1, "|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(out)


def machine_facts() -> str:
    node_version = subprocess.run(
        ["node", "--version"], capture_output=True, text=True, check=False
    ).stdout.strip()
    wrk_version = ""
    if shutil.which("wrk"):
        wrk_version = subprocess.run(
            ["wrk", "-v"], capture_output=True, text=True, check=False
        ).stdout.split("\n")[0]
    try:
        model = next(
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        )
    except (OSError, StopIteration):
        model = platform.processor() or "?"
    return (
        f"date {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M UTC}; "
        f"nproc {os.cpu_count()} ({model}); "
        f"Python {platform.python_version()} ({platform.python_implementation()}); "
        f"Node {node_version}; {platform.system()} {platform.release()}; "
        f"wrk: {wrk_version or 'not installed'}"
    )


def python_source(lab: Lab, workdir: Path, rev: str | None) -> str:
    """Point the Python grapes at the code to measure; say which it is.

    With ``rev``, that git revision is exported (``git archive``) into ``workdir`` and put
    first on the grapes' PYTHONPATH, so edits in the working tree do not change what is
    measured; otherwise the grapes import the working tree as installed."""
    git = ["git", "-C", str(REPO)]
    if rev is not None:
        sha = subprocess.run(
            [*git, "rev-parse", "--verify", f"{rev}^{{commit}}"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        src = workdir / "src"
        src.mkdir()
        archive = subprocess.run(
            [*git, "archive", "--format=tar", sha], capture_output=True, check=True
        )
        subprocess.run(["tar", "-x", "-C", str(src)], input=archive.stdout, check=True)
        lab.env["PYTHONPATH"] = os.pathsep.join(
            p for p in (str(src), lab.env.get("PYTHONPATH", "")) if p
        )
    where = subprocess.run(
        [sys.executable, "-c", "import grenache; print(grenache.__file__)"],
        cwd=workdir,
        env=lab.env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    if rev is not None:
        return f"git {rev} = {sha[:12]}, exported to {Path(where).parent.parent}"
    head = subprocess.run([*git, "rev-parse", "--short=12", "HEAD"], capture_output=True, text=True)
    dirty = subprocess.run(
        [*git, "status", "--porcelain", "--", "grenache", "twisted"],
        capture_output=True,
        text=True,
    ).stdout.strip()
    state = "with uncommitted changes in grenache/" if dirty else "clean"
    return f"working tree {Path(where).parent.parent} (HEAD {head.stdout.strip()}, {state})"


def measure_ceilings(
    lab: Lab, loader: Loader, gate: QuietGate, args: argparse.Namespace
) -> list[str]:
    """The generators against trivial Node servers on the server CPU: their ceilings."""
    seconds, conns, window = args.seconds, args.connections, args.window
    ceilings = []
    trivial = lab.spawn("trivial-http", ["node", str(TRIVIAL_JS), "http"], SERVER_CPU)
    port = int(trivial.wait_for(r'\{"port":(\d+)\}').group(1))
    url = f"http://{LOCALHOST}:{port}/lookup"

    def http_once() -> dict[str, Any]:
        loader.http(url, LOOKUP_BODY, 1, conns, [trivial.pid])
        return loader.http(url, LOOKUP_BODY, seconds, conns, [trivial.pid])

    c = gate.measure("HTTP ceiling", http_once)
    ceilings.append(
        f"HTTP generator ({c['tool']}, {conns} connections) vs trivial canned-response server: "
        f"{fmt_rate(c['rate'])} req/s, p50 {fmt_us(c['p50_us'])}, "
        f"server CPU {c['server_cpu_pct']:.0f}%, generator CPU {c['load_cpu_pct']:.0f}%"
        + ("" if c["quiet"] else " (machine not quiet)")
    )
    trivial.stop()
    echo = lab.spawn("trivial-udp", ["node", str(TRIVIAL_JS), "udp"], SERVER_CPU)
    port = int(echo.wait_for(r'\{"port":(\d+)\}').group(1))

    def udp_once() -> dict[str, Any]:
        loader.udp(port, 1, window, [echo.pid], echo=True)
        return loader.udp(port, seconds, window, [echo.pid], echo=True)

    c = gate.measure("UDP ceiling", udp_once)
    ceilings.append(
        f"UDP generator (loadgen.py udp, window {window}) vs UDP echo server: "
        f"{fmt_rate(c['rate'])} queries/s, p50 {fmt_us(c['p50_us'])}, "
        f"server CPU {c['server_cpu_pct']:.0f}%, generator CPU {c['load_cpu_pct']:.0f}%"
        + ("" if c["quiet"] else " (machine not quiet)")
    )
    echo.stop()
    return ceilings


def check_replies(grapes: dict[str, Grape], topology: str) -> dict[str, dict[str, str]]:
    """Announce rpc_test once on each grape and check that a lookup finds it."""
    replies: dict[str, dict[str, str]] = {}
    for impl, g in grapes.items():
        a = post(g.api_port, "/announce", ANNOUNCE_BODY)
        lk = post(g.api_port, "/lookup", LOOKUP_BODY)
        replies[impl] = {"announce": f"{a[0]} {a[1]}", "lookup": f"{lk[0]} {lk[1]}"}
        print(f"# {impl} {topology}: announce -> {a[0]} {a[1]}; lookup -> {lk[0]} {lk[1]}")
        if lk[0] != 200 or f"{LOCALHOST}:{SERVICE_PORT}" not in lk[1]:
            raise RuntimeError(f"{impl} grape does not find {SERVICE} after announcing it: {lk}")
    return replies


def run_phase(
    phase: str,
    path: str,
    grapes: dict[str, Grape],
    loader: Loader,
    profiler: Profiler | None,
    gate: QuietGate,
    args: argparse.Namespace,
    topology: str,
) -> dict[str, dict[str, Any]]:
    """``args.rounds`` measurements of one phase on each grape, interleaved."""
    seconds, conns, window = args.seconds, args.connections, args.window
    body = ANNOUNCE_BODY if path == "/announce" else LOOKUP_BODY
    runs: dict[str, list[dict[str, Any]]] = {"python": [], "node": []}
    for round_ in range(args.rounds):
        # Alternate who goes first, so drift on the machine hits both alike.
        order = ["python", "node"] if round_ % 2 == 0 else ["node", "python"]
        for impl in order:
            g = grapes[impl]
            servers = [p.pid for p in g.procs]

            def once(g: Grape = g, servers: list[int] = servers) -> dict[str, Any]:
                if path:
                    loader.http(g.url(path), body, 1, conns, servers)
                    return loader.http(g.url(path), body, seconds, conns, servers)
                loader.udp(g.dht_port, 1, window, servers)
                return loader.udp(g.dht_port, seconds, window, servers)

            r = gate.measure(f"{phase} {topology} {impl}", once)
            if path:
                what = f"errors {r['errors']}"
            else:
                what = f"lost+errors {r['errors']}, reply keys {r.get('sample_reply_keys')}"
            runs[impl].append(r)
            print(
                f"  {phase:14} {topology:4} {impl:6} round {round_ + 1}: "
                f"{fmt_rate(r['rate']):>6}/s  p50 {fmt_us(r['p50_us'])}  "
                f"p99 {fmt_us(r['p99_us'])}  {what}  server cpu {r['server_cpu_pct']:.0f}%  "
                f"generator cpu {r['load_cpu_pct']:.0f}%  other cpu {r['other_cpu_pct']:.0f}%",
                flush=True,
            )
    if profiler is not None:
        # One more run under py-spy, not counted (the sampler perturbs what it measures).
        g = grapes["python"]
        spy = profiler.start(g.main.pid, f"{phase} {topology}", seconds)
        if path:
            loader.http(g.url(path), body, seconds, conns, [])
        else:
            loader.udp(g.dht_port, seconds, window, [])
        profiler.finish(spy)
    return {impl: aggregate(results) for impl, results in runs.items()}


def run(args: argparse.Namespace) -> int:
    global SERVER_CPU, LOAD_CPU
    cpus = os.sched_getaffinity(0)
    if len(cpus) < 2:
        raise SystemExit("needs 2 CPUs: one for the servers, one for the load generator")
    SERVER_CPU, LOAD_CPU = sorted(cpus)[:2]
    if shutil.which("node") is None:
        raise SystemExit("node is not installed")
    ensure_node_modules()
    workdir = Path(tempfile.mkdtemp(prefix="grenache-bench-grape-", dir="/tmp"))
    lab = Lab(workdir)
    source = python_source(lab, workdir, args.rev)
    loader = Loader(workdir, use_wrk=not args.no_wrk)
    profiler = Profiler(workdir, lab) if args.py_spy else None
    gate = QuietGate(args.quiet, args.retries, args.quiet_budget)
    rows: list[Row] = []
    ceilings: list[str] = []
    tool = "wrk -t1" if loader.wrk else "bench/loadgen.py http"
    print(f"# {machine_facts()}")
    print(
        f"# servers pinned to CPU {SERVER_CPU}, load generator to CPU {LOAD_CPU}; "
        f"{args.rounds} round(s) of {args.seconds:g} s per grape and phase, each after a 1 s "
        f"warm-up; HTTP: {args.connections} keep-alive connections ({tool}); "
        f"DHT: window {args.window}; files in {workdir}",
        flush=True,
    )
    print(f"# Python grape code: {source}", flush=True)
    try:
        if not args.no_ceiling:
            ceilings = measure_ceilings(lab, loader, gate, args)
            for line in ceilings:
                print(f"# ceiling: {line}", flush=True)
        for topology in args.topology:
            grapes = {impl: start_grape(lab, impl, topology) for impl in ("python", "node")}
            if topology == "pair":
                time.sleep(1.0)  # let both sides settle their routing tables
            replies = check_replies(grapes, topology)
            phases = [("HTTP /lookup", "/lookup"), ("HTTP /announce", "/announce")]
            if topology == "lone":
                phases.append(("DHT get_peers", ""))
            for phase, path in phases:
                row = Row(phase, topology)
                row.results = run_phase(phase, path, grapes, loader, profiler, gate, args, topology)
                op = "announce" if path == "/announce" else "lookup"
                row.replies = {impl: replies[impl][op] for impl in grapes}
                rows.append(row)
            for g in grapes.values():
                for p in g.procs:
                    p.stop()
    finally:
        lab.stop_all()
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
    report(rows, ceilings, profiler, args)
    return 0


def report(
    rows: list[Row], ceilings: list[str], profiler: Profiler | None, args: argparse.Namespace
) -> None:
    print()
    print(render_table(rows))
    print()
    print(
        f"Python/s, Node/s: median of {args.rounds} round(s) (min-max); latencies and cpu are "
        "medians too. Py/Node = Python rate / Node rate (above 1: Python is faster). "
        "cpu = server CPU use during the run (100% = its one core saturated). errors = non-2xx, "
        "socket errors, timeouts, lost or error KRPC replies, over all rounds. quiet runs = "
        f"rounds during which other processes used at most {args.quiet:g}% of a core; only "
        "those count when there is one."
    )
    for row in rows:
        for impl in ("python", "node"):
            reply = row.replies.get(impl, "")
            if row.phase == "HTTP /announce" and not re.fullmatch(r"200 \d+", reply):
                print(
                    f"note: {impl} {row.topology} /announce answers {reply!r} "
                    "(an error string with status 200)"
                )
    if profiler is not None:
        for label, text in profiler.reports:
            print(f"\n## py-spy, Python grape, {label}\n{text}")
    if args.json == "-":
        everything = {
            "machine": machine_facts(),
            "ceilings": ceilings,
            "rows": [
                {"phase": r.phase, "topology": r.topology, "results": r.results} for r in rows
            ],
        }
        print("\nBENCHJSON " + json.dumps(everything))
    elif args.json:
        Path(args.json).write_text(json.dumps(bench_json(rows, ceilings, args), indent=1) + "\n")


#: Issue targets: the grape API at least as fast as Node's (Python/Node >= 1.0).
TARGETS = {"HTTP /lookup": 1.0, "HTTP /announce": 1.0}


def bench_json(rows: list[Row], ceilings: list[str], args: argparse.Namespace) -> dict[str, Any]:
    """The results in the bench JSON convention (bench/README.md): one row per phase,
    topology and grape with the rate of each round kept, and the Python/Node ratio of the
    medians per phase."""
    out_rows: list[dict[str, Any]] = []
    ratios: list[dict[str, Any]] = []
    notes = [f"ceiling: {line}" for line in ceilings]
    for row in rows:
        label = f"{row.phase} ({row.topology})"
        for impl in ("python", "node"):
            result = row.results.get(impl)
            if result is not None:
                out_rows.append(
                    {
                        "label": label,
                        "impl": impl,
                        "values": [float(v) for v in result["rates"]],
                        "median": float(result["rate"]),
                        "p50_us": result["p50_us"],
                        "p99_us": result["p99_us"],
                        "errors": result["errors"],
                        "quiet_runs": result["quiet_runs"],
                    }
                )
        py, nd = row.results.get("python"), row.results.get("node")
        if py is not None and nd is not None and nd["rate"]:
            ratios.append(
                {
                    "label": label,
                    "value": round(py["rate"] / nd["rate"], 3),
                    "target": TARGETS.get(row.phase),
                }
            )
            notes.append(
                f"{label}: p99 Python {fmt_us(py['p99_us'])}, Node {fmt_us(nd['p99_us'])}; "
                f"errors {py['errors']}/{nd['errors']}; quiet rounds "
                f"{py['quiet_runs']} / {nd['quiet_runs']}"
            )
        for impl in ("python", "node"):
            reply = row.replies.get(impl, "")
            if row.phase == "HTTP /announce" and not re.fullmatch(r"200 \d+", reply):
                notes.append(
                    f"{impl} {row.topology} /announce answers {reply!r} (an error string with "
                    "status 200), so that row compares a real announce with an error path"
                )
    tool = "wrk -t1" if shutil.which("wrk") and not args.no_wrk else "bench/loadgen.py http"
    notes.append(
        f"{args.rounds} round(s) of {args.seconds:g} s per grape and phase after a 1 s warm-up; "
        f"HTTP: {args.connections} keep-alive connections ({tool}); DHT: {args.window} "
        "get_peers in flight; grapes pinned to one CPU, the load generator to the other"
    )
    return {
        "family": "grape",
        "title": "Grape: HTTP API and DHT",
        "unit": "req/s",
        "rows": out_rows,
        "ratios": ratios,
        "notes": notes,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Python grape vs Node grape, side by side.")
    parser.add_argument("--seconds", type=float, default=5.0, help="per measurement (default 5)")
    parser.add_argument(
        "--connections", type=int, default=32, help="HTTP keep-alive connections (32)"
    )
    parser.add_argument(
        "--rounds", type=int, default=3, help="measurements per grape and phase (3)"
    )
    parser.add_argument(
        "--quiet",
        type=float,
        default=10.0,
        help="%% of a core other processes may use during a measurement before it is retried (10)",
    )
    parser.add_argument("--retries", type=int, default=3, help="re-measurements when not quiet (3)")
    parser.add_argument(
        "--quiet-budget",
        type=float,
        default=600.0,
        help="seconds in all spent waiting for quiet and re-measuring (600)",
    )
    parser.add_argument("--window", type=int, default=64, help="outstanding DHT queries (64)")
    parser.add_argument("--topology", default="lone,pair", help="lone, pair or lone,pair (default)")
    parser.add_argument(
        "--py-spy", action="store_true", help="profile the Python grape with py-spy"
    )
    parser.add_argument(
        "--no-ceiling", action="store_true", help="skip the generator ceiling checks"
    )
    parser.add_argument(
        "--no-wrk", action="store_true", help="use bench/loadgen.py even if wrk exists"
    )
    parser.add_argument(
        "--rev",
        default=None,
        help="measure the Python grape of this git revision (exported under /tmp) instead of "
        "the working tree, e.g. HEAD",
    )
    parser.add_argument(
        "--json",
        nargs="?",
        const="-",
        metavar="PATH",
        help="write the results as bench JSON to PATH; without PATH, print all results as one "
        "BENCHJSON line",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="smoke run: lone topology, one 1 s round, no ceilings, no waiting for quiet",
    )
    parser.add_argument(
        "--repeats", type=int, dest="rounds", default=argparse.SUPPRESS, help="same as --rounds"
    )
    parser.add_argument("--keep", action="store_true", help="keep the /tmp work directory (logs)")
    args = parser.parse_args(argv)
    if args.quick:
        args.seconds, args.rounds, args.topology = 1.0, 1, "lone"
        args.no_ceiling, args.retries, args.quiet_budget = True, 0, 0.0
    args.topology = [t.strip() for t in args.topology.split(",") if t.strip()]
    if not set(args.topology) <= {"lone", "pair"} or not args.topology:
        parser.error("--topology takes lone, pair or lone,pair")
    if not 0 < args.seconds <= 600 or args.connections < 1 or args.window < 1 or args.rounds < 1:
        parser.error("--seconds must be in (0, 600]; --connections, --window, --rounds at least 1")
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
