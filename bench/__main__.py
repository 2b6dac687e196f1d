"""``python -m bench``: run every benchmark family and write ``docs/benchmarks.rst`` with plots.

    python -m bench [--quick] [--families grape,http_rpc,...] [--repeats N]
                    [--out docs/benchmarks.rst] [--render-only]

Each family is a script in ``bench/`` run as a subprocess with ``--json PATH`` (and
``--quick``); a script that takes ``--repeats`` (or ``--repeat``) measures N times itself,
alternating Python and Node, any other is run N times and its runs merged (medians). A family
whose script is missing is skipped with a note in the report; one that fails is reported with
the end of its output and the run carries on. The report goes to ``--out``, one PNG per family
to ``_static/bench/`` next to it, and every family's merged JSON to
``_static/bench/results.json`` (``--render-only`` writes the page and figures again from that
file, without measuring).
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
sys.path.insert(0, str(REPO))

from bench import report  # noqa: E402


@dataclass(frozen=True)
class Family:
    """A benchmark family: the script under bench/ and the arguments that select it."""

    name: str
    script: str
    args: tuple[str, ...] = ()
    #: False for a deterministic simulation: one run says all a run can.
    repeatable: bool = True
    what: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


FAMILIES = (
    Family("grape", "grape.py", what="grape HTTP API /lookup, /announce and DHT get_peers"),
    Family("http_rpc", "http_rpc.py", what="RPC over HTTP, echo"),
    Family("ws_rpc", "ws.py", ("--phase", "rpc"), what="RPC over WebSocket, echo"),
    Family("ws_pubsub", "ws.py", ("--phase", "pubsub"), what="pub/sub fan-out over WebSocket"),
    Family("zmq_rpc", "zmq_rpc.py", what="RPC over ZeroMQ"),
    Family("zmq_pubsub", "zmq_pubsub.py", what="pub/sub over ZeroMQ"),
    Family("memory", "memory.py", what="resident memory of grapes and services"),
    Family(
        "scale", "scale.py", repeatable=False, what="simulated networks of 100 to 10,000 grapes"
    ),
)
NAMES = [f.name for f in FAMILIES]


def repeat_flag(script: Path) -> str | None:
    """The option a family script takes for its own repeats, if any."""
    text = script.read_text(encoding="utf-8", errors="replace")
    for flag in ("--repeats", "--repeat"):
        if f'"{flag}"' in text:
            return flag
    return None


def run_family(
    family: Family, repeats: int, quick: bool, workdir: Path, timeout: float
) -> dict[str, Any]:
    """Run one family (several times when it cannot repeat itself); its merged result.
    Raises RuntimeError with the end of the output when the script fails."""
    script = BENCH / family.script
    flag = repeat_flag(script) if family.repeatable else None
    times = 1 if flag or not family.repeatable else repeats
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH")) if p)
    runs = []
    for i in range(times):
        out = workdir / f"{family.name}-{i}.json"
        argv = [sys.executable, str(script), *family.args, "--json", str(out)]
        if quick:
            argv.append("--quick")
        if flag and family.repeatable:
            argv += [flag, str(repeats)]
        log = workdir / f"{family.name}-{i}.log"
        print(f"  $ {shlex.join(argv[1:])}", flush=True)
        with open(log, "wb") as sink:
            try:
                done = subprocess.run(
                    argv,
                    cwd=REPO,
                    env=env,
                    stdin=subprocess.DEVNULL,
                    stdout=sink,
                    stderr=subprocess.STDOUT,
                    timeout=timeout,
                    check=False,
                    start_new_session=True,
                )
                code: int | str = done.returncode
            except subprocess.TimeoutExpired:
                code = f"killed after {timeout:g} s"
        if code != 0 or not out.exists():
            tail = log.read_text("utf-8", "replace")[-1500:]
            raise RuntimeError(f"{family.script} exited {code}: {tail.strip()}")
        runs.append(report.validate(json.loads(out.read_text())))
    result = report.merge(runs)
    result["family"] = family.name  # the runner's name, whatever the script calls itself
    if not family.repeatable:
        result["deterministic"] = True
        result["notes"] = [
            *result["notes"],
            "A deterministic simulation, run once: a spread here is between the samples of "
            "that run (lookups, nodes), not between runs.",
        ]
    return result


def write(
    results: list[dict[str, Any]], meta: dict[str, Any], out: Path, *, plots: bool = True
) -> None:
    """The page, the figures and results.json, from the results and the run's metadata."""
    static = out.parent / "_static" / "bench"
    static.mkdir(parents=True, exist_ok=True)
    # The measurements first: a figure that fails to draw must not lose a long run.
    (static / "results.json").write_text(
        json.dumps({"meta": meta, "results": results}, indent=1) + "\n", encoding="utf-8"
    )
    figures: dict[str, str] = {}
    skipped = list(meta.get("skipped", []))
    for result in results:
        if not plots:
            break
        png = static / f"{result['family']}.png"
        try:
            report.plot(result, png)
        except ImportError:
            skipped.append("No figures: matplotlib is not installed (pip install matplotlib).")
            break
        except Exception as error:  # one bad figure leaves the page and the others
            skipped.append(f"No figure for {result['family']}: {error}")
            continue
        figures[result["family"]] = png.relative_to(out.parent).as_posix()
    text = report.render(
        results,
        meta["machine"],
        figures,
        command=meta["command"],
        repeats=meta.get("repeats"),
        quick=meta.get("quick", False),
        skipped=skipped,
        load=meta.get("load"),
    )
    out.write_text(text, encoding="utf-8")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench", description="Run the benchmark families and write the report."
    )
    parser.add_argument("--quick", action="store_true", help="smoke run: every family in seconds")
    parser.add_argument(
        "--families", default=",".join(NAMES), help=f"comma-separated, of: {', '.join(NAMES)}"
    )
    parser.add_argument("--repeats", type=int, default=3, help="runs per measurement (3)")
    parser.add_argument("--out", default=str(REPO / "docs" / "benchmarks.rst"), help="the page")
    parser.add_argument(
        "--timeout", type=float, default=None, help="seconds per family run (300 quick, 3600)"
    )
    parser.add_argument(
        "--render-only",
        action="store_true",
        help="write the page and figures again from _static/bench/results.json next to --out",
    )
    parser.add_argument("--no-plots", action="store_true", help="write no PNG")
    parser.add_argument(
        "--with-result",
        action="append",
        default=[],
        metavar="PATH",
        help="a family's bench JSON from a separate run (e.g. a long `bench/scale.py --json "
        "PATH`), put in the report as it is; that family is then not run",
    )
    args = parser.parse_args(argv)
    out = Path(args.out).resolve()
    if args.render_only:
        saved = json.loads((out.parent / "_static" / "bench" / "results.json").read_text())
        write(saved["results"], saved["meta"], out, plots=not args.no_plots)
        print(f"wrote {out}")
        return 0
    chosen = [name.strip() for name in args.families.split(",") if name.strip()]
    unknown = sorted(set(chosen) - set(NAMES))
    if unknown or not chosen:
        parser.error(f"unknown families {', '.join(unknown) or '(none given)'}; known: {NAMES}")
    if args.repeats < 1:
        parser.error("--repeats must be at least 1")
    repeats = 1 if args.quick else args.repeats
    timeout = args.timeout or (300.0 if args.quick else 3600.0)
    command = "python -m bench" + (" " + shlex.join(argv if argv is not None else sys.argv[1:]))
    meta: dict[str, Any] = {
        "machine": report.machine_info(),
        "command": command.strip(),
        "repeats": repeats,
        "quick": args.quick,
        "skipped": [],
    }
    load_before = list(os.getloadavg())
    results = []
    for path in args.with_result:
        given = report.validate(json.loads(Path(path).read_text()))
        given["notes"] = [*given["notes"], f"From a separate run ({Path(path).name})."]
        results.append(given)
        chosen = [name for name in chosen if name != given["family"]]
    with tempfile.TemporaryDirectory(prefix="grenache-bench-") as tmp:
        for family in (f for f in FAMILIES if f.name in chosen):
            if not (BENCH / family.script).exists():
                note = f"{family.name} ({family.what}): bench/{family.script} does not exist yet."
                meta["skipped"].append(note)
                print(f"skip {note}", flush=True)
                continue
            print(f"{family.name}: {family.what}", flush=True)
            started = time.monotonic()
            try:
                result = run_family(family, repeats, args.quick, Path(tmp), timeout)
            except (RuntimeError, ValueError, json.JSONDecodeError) as error:
                meta["skipped"].append(f"{family.name} ({family.what}) failed: {error}")
                print(f"  failed: {error}", flush=True)
                continue
            took = time.monotonic() - started
            result["notes"] = [*result["notes"], f"This family took {took:.0f} s."]
            results.append(result)
            print(f"  done in {took:.0f} s", flush=True)
    meta["load"] = [load_before, list(os.getloadavg())]
    write(results, meta, out, plots=not args.no_plots)
    print(f"wrote {out} ({len(results)} families)")
    return 0 if results else 1


if __name__ == "__main__":
    sys.exit(main())
