#!/usr/bin/env python3
"""Memory benchmark: resident memory (RSS, from /proc) of Python and Node processes, side by side.

    python bench/memory.py [--names 5000] [--load-seconds 3] [--repeats 3] [--rev REV]
                           [--json PATH] [--quick]

Each repeat starts fresh processes and reads ``VmRSS`` from ``/proc/PID/status`` (and the
proportional and private sizes from ``/proc/PID/smaps_rollup`` for the notes):

- **idle grape**: a lone grape (``twistd -n grape``; Node: grenache-grape 1.0.0 started by
  ``tests/interop/node/grape.js``, as ``bench/grape.py`` starts it), once it listens and has
  settled.
- **grape holding N names**: a pair of grapes of one implementation (a lone Node grape refuses
  announces: "No nodes to query"); N distinct names are announced through the first grape's
  HTTP API and each is then looked up (2N requests, one keep-alive connection), and both
  grapes of the pair are read: the one serving the API, and its peer, which stores the
  announces it is sent.
- **service**: an announced echo service, ``grenache serve`` (HTTP transport, handler
  ``bench.handlers:echo``) beside grenache-nodejs-http 1.0.2 with grenache-nodejs-link
  (``bench/node/service.js``), each announcing to a grape of its own implementation; read
  idle, then near the end of ``--load-seconds`` of load (the Python client of
  ``bench/http_rpc.py``, 32 requests in flight), and its peak (``VmHWM``) after the load.

Servers run pinned to the first CPU, the load client to the second, every process in its own
process group, killed at the end. ``--rev REV`` measures the Python code of a git revision
(exported under /tmp), e.g. to compare with the tree before a change.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
REPO = BENCH_DIR.parent
sys.path.insert(0, str(BENCH_DIR))

import grape as grape_bench  # noqa: E402  (bench/grape.py: process handling shared with it)

LOCALHOST = "127.0.0.1"
SERVICE_JS = BENCH_DIR / "node" / "service.js"
HTTP_RPC = BENCH_DIR / "http_rpc.py"
SERVICE_NAME = "bench_echo"
IMPLS = ("python", "node")


def rss_kib(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM (kiB) of ``pid`` from /proc/PID/status, Pss and USS from smaps_rollup."""
    out: dict[str, int] = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM", "RssAnon", "RssFile"):
            out[key] = int(value.split()[0])
    try:
        rollup = Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()
    except OSError:
        return out
    sizes = {}
    for line in rollup[1:]:
        key, _, value = line.partition(":")
        if value.strip().endswith("kB"):
            sizes[key] = int(value.split()[0])
    out["Pss"] = sizes.get("Pss", 0)
    out["USS"] = sizes.get("Private_Clean", 0) + sizes.get("Private_Dirty", 0)
    return out


def mib(kib: int) -> float:
    return round(kib / 1024, 1)


class Keepalive:
    """POSTs to a grape's HTTP API over one keep-alive connection."""

    def __init__(self, port: int) -> None:
        self.conn = http.client.HTTPConnection(LOCALHOST, port, timeout=10)

    def post(self, path: str, data: Any) -> tuple[int, Any]:
        body = json.dumps({"rid": "memory-bench", "data": data}, separators=(",", ":"))
        self.conn.request("POST", path, body, {"Content-Type": "application/json"})
        reply = self.conn.getresponse()
        return reply.status, json.loads(reply.read() or b"null")

    def close(self) -> None:
        self.conn.close()


def settle(seconds: float) -> None:
    time.sleep(seconds)


def measure_idle(lab: grape_bench.Lab, impl: str, args: argparse.Namespace) -> dict[str, int]:
    g = grape_bench.start_grape(lab, impl, "lone")
    try:
        settle(args.settle)
        return rss_kib(g.main.pid)
    finally:
        for p in g.procs:
            p.stop()


def measure_loaded(
    lab: grape_bench.Lab, impl: str, args: argparse.Namespace
) -> tuple[dict[str, int], dict[str, int], str]:
    g = grape_bench.start_grape(lab, impl, "pair")
    try:
        settle(1.0)  # both sides settle their routing tables (as bench/grape.py does)
        api = Keepalive(g.api_port)
        found = failed = 0
        started = time.monotonic()
        try:
            for i in range(args.names):
                api.post("/announce", [f"memory_bench_{i:05d}", 10000 + i % 50000])
            for i in range(args.names):
                status, answer = api.post("/lookup", f"memory_bench_{i:05d}")
                if status == 200 and isinstance(answer, list) and answer:
                    found += 1
                else:
                    failed += 1
        finally:
            api.close()
        took = time.monotonic() - started
        settle(args.settle)
        note = (
            f"{impl}: {args.names} announces + {args.names} lookups in {took:.1f} s, "
            f"{found} lookups found the name, {failed} did not"
        )
        return rss_kib(g.main.pid), rss_kib(g.procs[1].pid), note
    finally:
        for p in g.procs:
            p.stop()


def start_service(lab: grape_bench.Lab, impl: str, grape_port: int) -> tuple[Any, int]:
    grape_url = f"http://{LOCALHOST}:{grape_port}"
    if impl == "python":
        grenache = Path(sys.executable).with_name("grenache")
        argv = [sys.executable, str(grenache)] if grenache.exists() else ["grenache"]
        argv += [
            "serve",
            SERVICE_NAME,
            "--handler",
            "bench.handlers:echo",
            "--grape",
            grape_url,
            "--port",
            "0",
            "--bind",
            LOCALHOST,
        ]
        proc = lab.spawn("python-service", argv, grape_bench.SERVER_CPU)
        port = int(proc.wait_for(r'"port":\s*(\d+)').group(1))
    else:
        conf = json.dumps({"grape": grape_url, "name": SERVICE_NAME})
        proc = lab.spawn("node-service", ["node", str(SERVICE_JS), conf], grape_bench.SERVER_CPU)
        port = int(proc.wait_for(r'"port":(\d+)').group(1))
    return proc, port


def measure_service(
    lab: grape_bench.Lab, impl: str, args: argparse.Namespace
) -> tuple[dict[str, int], dict[str, int], int, float]:
    g = grape_bench.start_grape(lab, impl, "lone")
    service = None
    try:
        service, port = start_service(lab, impl, g.api_port)
        settle(args.settle)
        idle = rss_kib(service.pid)
        conf = {
            "dest": f"{LOCALHOST}:{port}",
            "duration": args.load_seconds,
            "warmup": 0.5,
            "concurrency": 32,
            "payload": {"data": "x" * 52},
            "compress": False,
        }
        env = dict(lab.env)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH")) if p)
        client = subprocess.Popen(
            [sys.executable, str(HTTP_RPC), "--role", "py-client", "--conf", json.dumps(conf)],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            env=env,
            cwd=REPO,
            preexec_fn=grape_bench._pin(grape_bench.LOAD_CPU),
        )
        try:
            # Sample near the end of the measured window, while requests are in flight.
            time.sleep(1.0 + 0.5 + 0.8 * args.load_seconds)
            loaded = rss_kib(service.pid)
            out, _ = client.communicate(timeout=args.load_seconds + 60)
        finally:
            if client.poll() is None:
                client.kill()
                client.wait()
        rate = float(json.loads(out.decode().strip().splitlines()[-1])["rps"])
        peak = rss_kib(service.pid)["VmHWM"]
        return idle, loaded, peak, rate
    finally:
        if service is not None:
            service.stop()
        for p in g.procs:
            p.stop()


LABELS = {
    "idle": "idle grape",
    "loaded": "grape holding {n} names (API grape)",
    "peer": "grape holding {n} names (its pair peer)",
    "service_idle": "service, idle",
    "service_load": "service under load (32 in flight)",
    "service_peak": "service peak (VmHWM) after the load",
}
TARGETS = {"idle": 0.8, "loaded": 1.0}


def run(args: argparse.Namespace) -> dict[str, Any]:
    cpus = sorted(os.sched_getaffinity(0))
    grape_bench.SERVER_CPU = cpus[0]
    grape_bench.LOAD_CPU = cpus[1] if len(cpus) > 1 else cpus[0]
    impls = list(IMPLS)
    notes: list[str] = []
    try:
        grape_bench.ensure_node_modules()
    except SystemExit as exc:
        impls = ["python"]
        notes.append(f"Node rows skipped: {exc}")
    workdir = Path(tempfile.mkdtemp(prefix="grenache-bench-memory-", dir="/tmp"))
    lab = grape_bench.Lab(workdir)
    source = grape_bench.python_source(lab, workdir, args.rev)
    values: dict[tuple[str, str], list[float]] = {}
    extra: dict[tuple[str, str], list[dict[str, int]]] = {}
    rates: dict[str, list[float]] = {impl: [] for impl in impls}

    def keep(key: str, impl: str, kib: dict[str, int] | int) -> None:
        sizes = kib if isinstance(kib, dict) else {"VmRSS": kib}
        values.setdefault((key, impl), []).append(mib(sizes["VmRSS"]))
        extra.setdefault((key, impl), []).append(sizes)

    try:
        for repeat in range(args.repeats):
            order = impls if repeat % 2 == 0 else impls[::-1]
            for impl in order:
                keep("idle", impl, measure_idle(lab, impl, args))
            for impl in order:
                api, peer, note = measure_loaded(lab, impl, args)
                keep("loaded", impl, api)
                keep("peer", impl, peer)
                if repeat == 0:
                    notes.append(note)
            for impl in order:
                idle, loaded, peak, rate = measure_service(lab, impl, args)
                keep("service_idle", impl, idle)
                keep("service_load", impl, loaded)
                keep("service_peak", impl, peak)
                rates[impl].append(rate)
            print(f"repeat {repeat + 1}/{args.repeats} done", flush=True)
    finally:
        lab.stop_all()
    rows = []
    for key, label in LABELS.items():
        for impl in impls:
            vals = values.get((key, impl))
            if vals:
                rows.append(
                    {
                        "label": label.format(n=f"{args.names:,}"),
                        "impl": impl,
                        "values": vals,
                        "median": statistics.median(vals),
                    }
                )
    ratios = []
    if "node" in impls:
        for key, label in LABELS.items():
            py, nd = values.get((key, "python")), values.get((key, "node"))
            if py and nd:
                ratios.append(
                    {
                        "label": label.format(n=f"{args.names:,}"),
                        "value": round(statistics.median(py) / statistics.median(nd), 3),
                        "target": TARGETS.get(key),
                    }
                )
    for impl in impls:
        for key in ("idle", "loaded"):
            sizes = extra.get((key, impl), [])
            if sizes and "Pss" in sizes[0]:
                pss = statistics.median(s["Pss"] for s in sizes)
                uss = statistics.median(s["USS"] for s in sizes)
                anon = statistics.median(s.get("RssAnon", 0) for s in sizes)
                notes.append(
                    f"{impl} {LABELS[key].format(n=f'{args.names:,}')}: PSS {mib(int(pss))} MiB, "
                    f"private (USS) {mib(int(uss))} MiB, anonymous RSS {mib(int(anon))} MiB"
                )
        if rates.get(impl):
            notes.append(
                f"{impl} service under load answered {statistics.median(rates[impl]):,.0f} req/s "
                "(median), from the Python HTTP client of bench/http_rpc.py"
            )
    notes.append(f"Python code measured: {source}")
    notes.append(
        "RSS counts the pages of shared libraries a process touched (libpython, libcrypto, "
        "Node's binary) as well as its own heap; PSS shares them out between processes."
    )
    return {
        "family": "memory",
        "title": "Memory (resident set size)",
        "unit": "MiB",
        "better": "lower",
        "rows": rows,
        "ratios": ratios,
        "notes": notes,
    }


def print_table(result: dict[str, Any]) -> None:
    by_label: dict[str, dict[str, dict[str, Any]]] = {}
    for row in result["rows"]:
        by_label.setdefault(row["label"], {})[row["impl"]] = row
    print(f"{'':44} {'Python MiB':>18} {'Node MiB':>18}")
    for label, impls in by_label.items():
        cells = []
        for impl in IMPLS:
            row = impls.get(impl)
            if row is None:
                cells.append(f"{'-':>18}")
            else:
                spread = f"({min(row['values']):.1f}-{max(row['values']):.1f})"
                cells.append(f"{row['median']:7.1f} {spread:>10}")
        print(f"{label:44} {cells[0]} {cells[1]}")
    for ratio in result["ratios"]:
        target = "" if ratio["target"] is None else f"  (target <= {ratio['target']:g})"
        print(f"  python/node {ratio['label']}: {ratio['value']:.2f}{target}")
    for note in result["notes"]:
        print(f"  note: {note}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--names", type=int, default=5000, help="names announced (5000)")
    parser.add_argument("--load-seconds", type=float, default=3.0, help="load on the service (3 s)")
    parser.add_argument("--settle", type=float, default=2.0, help="seconds before a reading (2)")
    parser.add_argument("--repeats", type=int, default=3, help="fresh processes per reading (3)")
    parser.add_argument("--rev", default=None, help="measure this git revision's Python code")
    parser.add_argument("--json", metavar="PATH", help="write the results as bench JSON")
    parser.add_argument(
        "--quick", action="store_true", help="smoke run: 300 names, 1 s of load, one repeat"
    )
    args = parser.parse_args(argv)
    if args.quick:
        args.names, args.load_seconds, args.settle, args.repeats = 300, 1.0, 0.5, 1
    if args.names < 1 or args.repeats < 1 or not 0 < args.load_seconds <= 600:
        parser.error("--names and --repeats at least 1, --load-seconds in (0, 600]")
    result = run(args)
    print_table(result)
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
