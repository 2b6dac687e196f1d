#!/usr/bin/env python3
"""Scale benchmark: thousands of real Python grapes in one process, on one simulated clock.

    python bench/scale.py [--sizes 100,300,1000,3000,10000] [--cluster 1000] [--lookups 200]
                          [--names 20] [--seed 1] [--quick] [--json PATH] [--plot PNG]

Every grape is the project's own: a real DHT node and grape HTTP API
(:class:`~grenache.testing.MemoryGrape`), announced to and looked up through a real
:class:`~grenache.link.Link`, talking KRPC over the in-memory UDP network with a random one-way
delay of 2 to 20 ms per datagram, on an event clock (see ``bench/scale_sim.py``). Three parts:

1. **Node suite scenario** (n = 100): the Node test suite's "announce to lots of grapes": grape
   1 bootstraps from grape 0, every other grape from grape 0 or 1, all booting together; grape 1
   announces ``B`` (a 1-byte key), grapes 2 and 3 look it up, and so does every other grape.
   The same scenario runs with 100 Node grapes (``bench/node/scale_suite.js``, one Node
   process, real loopback sockets, lookups traced the same way) when Node is installed.
2. **Cluster** (``--cluster`` grapes, 1000): two seed grapes, then every other grape boots at
   once from both; time to converge (simulated and wall), memory, then 100 names announced and
   one lookup from every grape. Every lookup must find its peer.
3. **Sizes** (``--sizes``): for each n, grapes join in batches of 500 from the two seeds, then
   ``--names`` names are announced and ``--lookups`` lookups made from random grapes. Hops and
   messages per lookup are fitted against log2(n).

Per lookup: ``queries`` (get_peers the walk sent), ``datagrams`` (every datagram on the network
while it ran, replies included), ``hops`` (hop of the first reply holding the peer: 1 for a
contact from the looker's routing table, h + 1 for one learned from a hop-h reply) and
``depth`` (deepest hop queried). ``--quick`` runs small sizes for a smoke test (seconds).
``--json PATH`` writes the bench JSON object (``-`` for stdout); ``plot()`` draws it. The file
(and the ``--plot`` PNG) is rewritten after each part and each size, so a run cut short leaves
the results it reached (``"partial": true``, the missing sizes named in the notes).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.scale_sim import (
    LookupTrace,
    ScaleNetwork,
    Stats,
    log2_fit,
    rss_mb,
    summarize,
)

FAMILY = "scale"
NODE_SCRIPT = Path(__file__).resolve().parent / "node" / "scale_suite.js"
DEFAULT_SIZES = (100, 300, 1000, 3000, 10000)
QUICK_SIZES = (32, 64, 128)


def nearest_known(net: ScaleNetwork, sample: int, rng: random.Random) -> float:
    """Fraction of (up to ``sample``) grapes whose routing table holds their nearest
    neighbour by XOR distance: how well the tables converged."""
    ids = [(int.from_bytes(g.node_id or b"", "big"), g) for g in net.grapes]
    chosen = rng.sample(ids, min(sample, len(ids)))
    hits = 0
    for own, grape in chosen:
        nearest = min((own ^ other, g) for other, g in ids if g is not grape)[1]
        assert grape.node is not None and nearest.node_id is not None
        hits += grape.node.routing.get(nearest.node_id) is not None
    return hits / len(chosen)


def node_suite(seed: int) -> dict[str, Any]:
    """The Node suite's 100-grape scenario, with Python grapes."""
    wall = time.perf_counter()
    net = ScaleNetwork(100, seed=seed, batch=100, topology="node-suite")
    net.build()
    stored = net.announce(1, "B", 2000)
    first = [net.lookup(2, "B"), net.lookup(3, "B")]
    rest = [net.lookup(i, "B") for i in range(4, 100)] + [net.lookup(0, "B")]
    return {
        "n": 100,
        "converge_sim_s": round(net.build_sim_time, 3),
        "converge_wall_s": round(net.build_wall_time, 2),
        "announce_stored_on": stored,
        "grapes_2_and_3": [trace_dict(t) for t in first],
        "all_grapes": summarize(first + rest),
        "wall_s": round(time.perf_counter() - wall, 2),
    }


def node_suite_node(n: int = 100, sizes: tuple[int, ...] = ()) -> dict[str, Any] | str:
    """The same scenario with Node grapes (``bench/node/scale_suite.js``: n Grapes in one Node
    process, as the Node suite runs them, on real loopback sockets), each lookup traced as
    ours are; the reason as text when Node cannot run. With ``sizes`` = ``(batch, names,
    lookups, seed)`` it runs :func:`size_point`'s scenario with Node grapes instead."""
    try:
        from tests.interop.harness import node_executable, node_modules_dir

        modules = node_modules_dir()
        node = node_executable()
    except BaseException as e:  # SkipTest when Node or npm is missing
        return f"Node not run: {e}"
    env = {k: v for k, v in os.environ.items() if k not in ("NODE_OPTIONS", "NODE_PATH")}
    env["NODE_PATH"] = str(modules)
    try:
        done = subprocess.run(
            [node, str(NODE_SCRIPT), str(n)] + (["sizes", *map(str, sizes)] if sizes else []),
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
            start_new_session=True,
        )
    except subprocess.TimeoutExpired:
        return "Node not run: the scenario did not finish within 300 s"
    if done.returncode != 0:
        return f"Node scenario failed: {done.stderr.strip()[-500:]}"
    result = json.loads(done.stdout.strip().splitlines()[-1])
    traces = [
        LookupTrace(
            queries=t["queries"],
            answered=t["queries"],
            hops=t["hops"],
            depth=t["depth"],
            datagrams=t["datagrams"],
            sim_time=t["ms"] / 1000,
            found=t["found"],
        )
        for t in result["lookups"]
    ]
    summary = summarize(traces)
    summary["real_ms"] = summary.pop("sim_ms")
    extra = {k: result[k] for k in ("no_other_half", "routing_mean") if k in result}
    return {
        "n": n,
        **extra,
        "up_s": round(result["up_ms"] / 1000, 2),
        "announce_stored_on": result["announce_stored_on"],
        "rss_mb": result["rss_mb"],
        "grapes_2_and_3": result["lookups"][:2],
        "all_grapes": summary,
    }


def trace_dict(trace: LookupTrace) -> dict[str, Any]:
    """One lookup's measures."""
    return {
        "found": trace.found,
        "queries": trace.queries,
        "datagrams": trace.datagrams,
        "hops": trace.hops,
        "depth": trace.depth,
        "sim_ms": round(1000 * trace.sim_time, 1),
    }


def cluster(n: int, seed: int, names: int) -> dict[str, Any]:
    """``n`` grapes booting at once from two seeds; one lookup from every grape."""
    wall = time.perf_counter()
    rss_before = rss_mb()
    net = ScaleNetwork(n, seed=seed, batch=n)
    net.build()
    rss_built = rss_mb()
    rng = random.Random(seed)
    converged = nearest_known(net, 200, rng)
    sizes = net.routing_sizes()
    announce_wall = time.perf_counter()
    service_names = [f"rest:cluster:{i:04d}" for i in range(names)]
    stored = [
        net.announce(rng.randrange(n), name, 20000 + i) for i, name in enumerate(service_names)
    ]
    announce_wall = time.perf_counter() - announce_wall
    lookup_wall = time.perf_counter()
    traces = [net.lookup(i, rng.choice(service_names)) for i in range(n)]
    lookup_wall = time.perf_counter() - lookup_wall
    return {
        "n": n,
        "converge_sim_s": round(net.build_sim_time, 3),
        "converge_wall_s": round(net.build_wall_time, 2),
        "build_datagrams": net.build_datagrams,
        "nearest_neighbour_known": round(converged, 3),
        "routing_table": Stats.of(sizes).as_dict(),
        "rss_mb_before": round(rss_before, 1),
        "rss_mb_built": round(rss_built, 1),
        "rss_mb_after": round(rss_mb(), 1),
        "kb_per_grape": round(1024 * (rss_built - rss_before) / n, 1),
        "announces": names,
        "announce_stored_on": Stats.of(stored).as_dict(),
        "announce_wall_s": round(announce_wall, 2),
        "lookup_wall_s": round(lookup_wall, 2),
        "lookups": summarize(traces),
        "wall_s": round(time.perf_counter() - wall, 2),
    }


def size_point(n: int, seed: int, names: int, lookups: int) -> dict[str, Any]:
    """One point of the log(n) curve."""
    wall, cpu = time.perf_counter(), time.process_time()
    rss_before = rss_mb()
    net = ScaleNetwork(n, seed=seed, batch=500)
    net.build()
    rss_built = rss_mb()
    rng = random.Random(seed + n)
    service_names = [f"rest:scale:{i:04d}" for i in range(names)]
    for i, name in enumerate(service_names):
        net.announce(rng.randrange(n), name, 30000 + i)
    traces = [net.lookup(rng.randrange(n), rng.choice(service_names)) for _ in range(lookups)]
    summary = summarize(traces)
    summary.update(
        n=n,
        converge_sim_s=round(net.build_sim_time, 3),
        converge_wall_s=round(net.build_wall_time, 2),
        build_datagrams=net.build_datagrams,
        routing_table=Stats.of(net.routing_sizes()).as_dict(),
        kb_per_grape=round(1024 * (rss_built - rss_before) / n, 1),
        wall_s=round(time.perf_counter() - wall, 2),
        cpu_s=round(time.process_time() - cpu, 2),
        datagrams_total=net.udp.datagrams,
        cpu_us_per_datagram=round(1e6 * (time.process_time() - cpu) / max(1, net.udp.datagrams), 1),
        queries_all=[t.queries for t in traces],
    )
    return summary


def run(
    sizes: list[int],
    cluster_n: int,
    names: int,
    lookups: int,
    seed: int,
    quick: bool,
    checkpoint: Callable[[dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """Every part; the bench JSON object. ``checkpoint`` (if given) gets the object as it
    stands after each part and each size, so that a run cut short leaves its results."""
    started = time.perf_counter()
    done: dict[str, Any] = {"points": []}

    def finished(part: str, value: Any) -> None:
        done[part] = value
        if checkpoint is not None:
            checkpoint(assemble(done, quick, started, sizes))

    suite = node_suite(seed)
    log(f"node suite scenario: {json.dumps(suite['all_grapes'])}")
    finished("suite", suite)
    node = node_suite_node(100)
    log(f"node suite scenario, Node grapes: {json.dumps(node)}")
    finished("node", node)
    node_sizes = node_suite_node(1000, (500, names, lookups, seed)) if not quick else "quick run"
    log(f"size point n=1000, Node grapes: {json.dumps(node_sizes)}")
    finished("node_sizes", node_sizes)
    part1 = cluster(cluster_n, seed, max(2, min(100, cluster_n // 10)))
    log(f"cluster of {cluster_n}: {json.dumps(part1)}")
    finished("cluster", part1)
    for n in sizes:
        point = size_point(n, seed, names, lookups)
        log(f"n={n}: {json.dumps({k: v for k, v in point.items() if k != 'queries_all'})}")
        finished("points", done["points"] + [point])
    return assemble(done, quick, started, sizes)


def assemble(done: dict[str, Any], quick: bool, started: float, sizes: list[int]) -> dict[str, Any]:
    """The bench JSON object from the parts in ``done`` (those not run yet are ``None``, and
    the sizes not reached yet are named in the notes)."""
    notes: list[str] = []
    suite = done.get("suite")
    node = done.get("node")
    node_sizes = done.get("node_sizes")
    part1 = done.get("cluster")
    points: list[dict[str, Any]] = done["points"]
    ns = [p["n"] for p in points]
    measures = {
        "get_peers queries per lookup (mean)": [p["queries"]["mean"] for p in points],
        "datagrams per lookup (mean)": [p["datagrams"]["mean"] for p in points],
        "hops to the peer (mean)": [p["hops"]["mean"] for p in points],
        "walk depth (mean)": [p["depth"]["mean"] for p in points],
    }
    fits = {name: log2_fit(ns, ys) for name, ys in measures.items()} if len(ns) > 1 else {}
    rows = [
        {
            "label": f"n={p['n']}: get_peers queries per lookup",
            "impl": "python",
            "values": [float(q) for q in p["queries_all"]],
            "median": float(p["queries"]["p50"]),
        }
        for p in points
    ]
    if suite is not None:
        rows.append(
            {
                "label": "Node suite scenario (n=100, key B): queries per lookup",
                "impl": "python",
                "values": [float(t["queries"]) for t in suite["grapes_2_and_3"]],
                "median": float(suite["all_grapes"]["queries"]["p50"]),
            }
        )
    if isinstance(node, dict):
        rows.append(
            {
                "label": "Node suite scenario (n=100, key B): queries per lookup",
                "impl": "node",
                "values": [float(t["queries"]) for t in node["grapes_2_and_3"]],
                "median": float(node["all_grapes"]["queries"]["p50"]),
            }
        )
    found = total = 0
    for summary in (
        suite["all_grapes"] if suite is not None else None,
        part1["lookups"] if part1 is not None else None,
        *points,
    ):
        if summary is not None:
            found += summary["found"]
            total += summary["lookups"]
    ratios: list[dict[str, Any]] = []
    if total:
        ratios.append(
            {
                "label": "lookups that found the announced peer",
                "value": found / total,
                "target": 1.0,
            }
        )
    if suite is not None and isinstance(node, dict) and node["all_grapes"]["queries"]["mean"]:
        ratios.append(
            {
                "label": "Node suite scenario, n=100: Python / Node get_peers per lookup (mean)",
                "value": round(
                    suite["all_grapes"]["queries"]["mean"] / node["all_grapes"]["queries"]["mean"],
                    3,
                ),
                "target": None,
            }
        )
    for name, fit in fits.items():
        ratios.append(
            {"label": f"{name}: growth per doubling of n", "value": fit["b"], "target": None}
        )
    notes.append(
        "Real grapes (DHT node + grape API, reached through a Link) on an in-memory UDP network "
        "with 2-20 ms one-way delay per datagram, on a simulated clock; one process."
    )
    if isinstance(node, dict):
        notes.append(
            "Node comparison: 100 grenache-grape 1.0.0 Grapes in one Node process (as the Node "
            "suite runs them) on real loopback sockets, lookups traced by wrapping each "
            "k-rpc socket (bench/node/scale_suite.js)."
        )
    elif isinstance(node, str):
        notes.append(node)
    for name, fit in fits.items():
        notes.append(f"{name} = {fit['a']} + {fit['b']} * log2(n), r^2 = {fit['r2']}")
    missing = [n for n in sizes if n not in ns]
    if missing:
        notes.append(
            "Partial result, written while the run went on: sizes not reached yet: "
            + ", ".join(map(str, missing))
        )
    return {
        "family": FAMILY,
        "title": "DHT at scale (simulated network of real grapes)",
        "unit": "KRPC messages per lookup",
        "rows": rows,
        "ratios": ratios,
        "notes": notes,
        "series": {
            "x": ns,
            "y": measures,
            "xlabel": "grapes in the network (n)",
            "ylabel": "per lookup",
            "logx": True,
        },
        "fits": fits,
        "node_suite": suite,
        "node_suite_node": node,
        "size_point_node_1000": node_sizes,
        "cluster": part1,
        "sizes": [{k: v for k, v in p.items() if k != "queries_all"} for p in points],
        "partial": bool(missing) or part1 is None,
        "quick": quick,
        "wall_s": round(time.perf_counter() - started, 1),
    }


def plot(result: dict[str, Any], png_path: str) -> None:
    """Draw the messages and hops per lookup against n (log scale), with the log2(n) fits,
    into ``png_path``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    series = result["series"]
    ns = series["x"]
    fits = result.get("fits", {})
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    for axis, names in (
        (left, ["get_peers queries per lookup (mean)", "datagrams per lookup (mean)"]),
        (right, ["hops to the peer (mean)", "walk depth (mean)"]),
    ):
        for name in names:
            ys = series["y"].get(name)
            if not ys:
                continue
            (line,) = axis.plot(ns, ys, "o", label=name)
            fit = fits.get(name)
            if fit:
                xs = [ns[0] * (ns[-1] / ns[0]) ** (i / 50) for i in range(51)]
                axis.plot(
                    xs,
                    [fit["a"] + fit["b"] * math.log2(x) for x in xs],
                    "--",
                    color=line.get_color(),
                    label=f"{fit['a']:.1f} + {fit['b']:.2f} log2 n (r²={fit['r2']:.2f})",
                )
        axis.set_xscale("log", base=2)
        axis.set_xlabel(series["xlabel"])
        axis.grid(True, alpha=0.3)
        axis.legend(fontsize=7)
        axis.set_ylim(bottom=0)
    left.set_ylabel("messages per lookup")
    right.set_ylabel("hops per lookup")
    title = result.get("title", "DHT at scale")
    if result.get("partial"):
        title += f" — partial run, n up to {max(ns):,}" if ns else " — partial run"
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(png_path, dpi=100)
    plt.close(fig)


def log(text: str) -> None:
    """Progress on stderr (stdout may carry the JSON)."""
    print(text, file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> int:
    """Parse the arguments, run, write the JSON and the plot."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default=",".join(map(str, DEFAULT_SIZES)))
    parser.add_argument("--cluster", type=int, default=1000, help="grapes in part 2 (1000)")
    parser.add_argument("--names", type=int, default=20, help="names announced per size")
    parser.add_argument("--lookups", type=int, default=200, help="lookups per size")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--quick", action="store_true", help="small sizes: a smoke test")
    parser.add_argument("--json", metavar="PATH", help="write the result as JSON ('-': stdout)")
    parser.add_argument("--plot", metavar="PNG", help="draw the curve into PNG (matplotlib)")
    args = parser.parse_args(argv)
    if args.quick:
        sizes, cluster_n, names, lookups = list(QUICK_SIZES), 50, 5, 20
    else:
        sizes = [int(s) for s in args.sizes.split(",") if s.strip()]
        cluster_n, names, lookups = args.cluster, args.names, args.lookups
    if any(n < 2 for n in sizes) or cluster_n < 2:
        parser.error("every size must be at least 2")

    def write(result: dict[str, Any]) -> None:
        """Save the result as it stands (a file written whole: replaced, never half-written)."""
        if args.json and args.json != "-":
            path = Path(args.json)
            partial = path.with_name(path.name + ".tmp")
            partial.write_text(json.dumps(result, indent=1) + "\n")
            partial.replace(path)
        if args.plot and len(result["series"]["x"]) > 0:
            plot(result, args.plot)

    result = run(sizes, cluster_n, names, lookups, args.seed, args.quick, checkpoint=write)
    write(result)
    if not args.json or args.json == "-":
        print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
