"""The benchmark report: bench JSON in, ``docs/benchmarks.rst`` and one PNG per family out.

Every family script writes one JSON object (bench/README.md, *Bench JSON*)::

    {"family": str, "title": str, "unit": str,
     "rows": [{"label": str, "impl": "python"|"node", "values": [float, ...], "median": float}],
     "ratios": [{"label": str, "value": float, "target": float|null}],
     "notes": [str],
     "series": {"x": [...], "y": {name: [...]}, "xlabel": str, "ylabel": str, "logx": bool},
     "better": "higher"|"lower"}

``series``, ``better`` and ``deterministic`` are optional: ``deterministic`` (set by the
runner for a simulation) keeps a family's spread, which is between samples and not between
runs, out of the machine's noise figures; ``better`` says which way a ratio meets its target
(``higher``, the default, for rates: Python/Node at least the target; ``lower`` for sizes such
as memory: at most the target); a ratio may carry its own ``better``.

:func:`merge` folds several runs of one family into one result (values concatenated, medians
and ratios recomputed as medians), :func:`render` writes the reStructuredText page and
:func:`plot` a family's figure (matplotlib, imported only there: a bench-only dependency).
"""

from __future__ import annotations

import datetime
import math
import os
import platform
import shutil
import statistics
import subprocess
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

IMPLS = ("python", "node")
#: What an empty table cell shows (a cell is never left blank).
EMPTY = "n/a"
#: A row whose coefficient of variation is above this is flagged as noisy in the tables.
NOISY_CV = 0.10


# --- input ------------------------------------------------------------------------------------


def validate(result: Any) -> dict[str, Any]:
    """Check one family's bench JSON; returns it, or raises ValueError saying what is wrong."""
    if not isinstance(result, dict):
        raise ValueError("bench JSON must be an object")
    for key, kind in (("family", str), ("title", str), ("unit", str), ("rows", list)):
        if not isinstance(result.get(key), kind):
            raise ValueError(f"bench JSON: {key!r} must be a {kind.__name__}")
    for row in result["rows"]:
        if not isinstance(row, dict) or not isinstance(row.get("label"), str):
            raise ValueError(f"bench JSON {result['family']}: a row needs a label: {row!r}")
        if row.get("impl") not in IMPLS:
            raise ValueError(f"bench JSON {result['family']}: impl must be python or node: {row!r}")
        values = row.get("values")
        if not isinstance(values, list) or not values:
            raise ValueError(f"bench JSON {result['family']}: row {row['label']!r} has no values")
        if not all(isinstance(v, (int, float)) for v in [*values, row.get("median")]):
            raise ValueError(f"bench JSON {result['family']}: row {row['label']!r}: not numbers")
    for ratio in result.get("ratios", []):
        if not isinstance(ratio.get("label"), str) or not isinstance(
            ratio.get("value"), (int, float)
        ):
            raise ValueError(f"bench JSON {result['family']}: bad ratio {ratio!r}")
    result.setdefault("ratios", [])
    result.setdefault("notes", [])
    return result


def merge(runs: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """One result from several runs of a family: each row's values concatenated and its median
    recomputed; each ratio the median of the runs' ratios (its ``values`` kept); notes
    deduplicated in order; the last run's series."""
    if not runs:
        raise ValueError("nothing to merge")
    if len(runs) == 1:
        return runs[0]
    first = runs[0]
    rows: dict[tuple[str, str], dict[str, Any]] = {}
    ratios: dict[str, dict[str, Any]] = {}
    notes: list[str] = []
    for run in runs:
        for row in run["rows"]:
            key = (row["label"], row["impl"])
            if key not in rows:
                rows[key] = {**row, "values": []}
            rows[key]["values"] = rows[key]["values"] + list(row["values"])
        for ratio in run.get("ratios", []):
            entry = ratios.setdefault(ratio["label"], {**ratio, "values": []})
            entry["values"].append(ratio["value"])
        notes += [n for n in run.get("notes", []) if n not in notes]
    for row in rows.values():
        row["median"] = statistics.median(row["values"])
    for ratio in ratios.values():
        ratio["value"] = statistics.median(ratio["values"])
    merged = {**first, "rows": list(rows.values()), "ratios": list(ratios.values()), "notes": notes}
    if any("series" in run for run in runs):
        merged["series"] = next(run["series"] for run in reversed(runs) if "series" in run)
    return merged


# --- numbers ----------------------------------------------------------------------------------


def cv(values: Sequence[float]) -> float | None:
    """Coefficient of variation (sample standard deviation / mean); None for fewer than two."""
    if len(values) < 2:
        return None
    mean = statistics.fmean(values)
    if mean == 0:
        return None
    return statistics.stdev(values) / abs(mean)


def fmt(value: float) -> str:
    """A figure for a table: thousands separated above 1,000, three significant digits below."""
    if not math.isfinite(value):
        return str(value)
    if abs(value) >= 1000:
        return f"{value:,.0f}"
    if abs(value) >= 100:
        return f"{value:.0f}"
    if abs(value) >= 10:
        return f"{value:.1f}"
    return f"{value:.3g}"


def fmt_cv(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.1f} %"


def better(result: dict[str, Any], ratio: dict[str, Any]) -> str:
    """``higher`` or ``lower``: how ``ratio`` meets its target."""
    return str(ratio.get("better") or result.get("better") or "higher")


def target_met(result: dict[str, Any], ratio: dict[str, Any]) -> bool | None:
    """Whether the ratio meets its target; None when it has none."""
    target = ratio.get("target")
    if target is None:
        return None
    if better(result, ratio) == "lower":
        return bool(ratio["value"] <= target)
    return bool(ratio["value"] >= target)


def target_text(result: dict[str, Any], ratio: dict[str, Any]) -> str:
    target = ratio.get("target")
    if target is None:
        return ""
    return f"{'≤' if better(result, ratio) == 'lower' else '≥'} {target:g}"


def noise_summary(results: Iterable[dict[str, Any]]) -> dict[str, Any]:
    """How much the repeats of every row spread: the median and worst coefficient of
    variation over the rows measured more than once, and how many rows were noisy."""
    cvs: list[tuple[float, str]] = []
    for result in results:
        if result.get("deterministic"):
            continue  # its spread is between samples of one simulation, not between runs
        for row in result["rows"]:
            value = cv(row["values"])
            if value is not None:
                cvs.append((value, f"{result['title']}: {row['label']} ({row['impl']})"))
    if not cvs:
        return {"rows": 0}
    worst = max(cvs)
    return {
        "rows": len(cvs),
        "median_cv": statistics.median(v for v, _ in cvs),
        "worst_cv": worst[0],
        "worst_row": worst[1],
        "noisy_rows": sum(1 for v, _ in cvs if v > NOISY_CV),
    }


# --- the machine ------------------------------------------------------------------------------


def _run(argv: list[str]) -> str:
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=30, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return done.stdout.strip()


def _version(module: str) -> str:
    try:
        from importlib.metadata import version

        return version(module)
    except Exception:
        return "not installed"


def machine_info() -> dict[str, str]:
    """What the numbers were measured on: CPU, cores, memory, OS, and the versions that matter."""
    info: dict[str, str] = {}
    cpuinfo = Path("/proc/cpuinfo")
    model = ""
    if cpuinfo.exists():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    info["CPU"] = model or platform.processor() or platform.machine()
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    info["Cores"] = f"{os.cpu_count()} ({usable} usable by the benchmarks)"
    meminfo = Path("/proc/meminfo")
    if meminfo.exists():
        total = next(
            (
                int(line.split()[1])
                for line in meminfo.read_text().splitlines()
                if line.startswith("MemTotal")
            ),
            0,
        )
        info["RAM"] = f"{total / 1024 / 1024:.1f} GiB"
    os_name = platform.system()
    release = Path("/etc/os-release")
    if release.exists():
        for line in release.read_text().splitlines():
            if line.startswith("PRETTY_NAME="):
                os_name = line.split("=", 1)[1].strip().strip('"')
    info["OS"] = f"{os_name}, kernel {platform.release()}"
    info["Python"] = f"{platform.python_version()} ({platform.python_implementation()})"
    node = shutil.which("node")
    info["Node.js"] = _run([node, "--version"]) if node else "not installed"
    info["Twisted"] = _version("twisted")
    info["autobahn"] = _version("autobahn")
    try:
        import zmq

        info["libzmq"] = f"{zmq.zmq_version()} (pyzmq {zmq.pyzmq_version()})"
    except Exception:
        info["libzmq"] = "not installed"
    wrk = shutil.which("wrk")
    info["wrk"] = _run([wrk, "-v"]).split("\n")[0] if wrk else "not installed"
    commit = _run(
        ["git", "-C", str(Path(__file__).resolve().parents[1]), "rev-parse", "--short=12", "HEAD"]
    )
    info["Commit"] = commit or "unknown"
    info["Date"] = f"{datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC"
    return info


# --- reStructuredText -------------------------------------------------------------------------


def esc(text: str) -> str:
    """Text safe inside reStructuredText: inline markup characters escaped."""
    out = str(text).replace("\\", "\\\\")
    for char in "*`|_[]":
        out = out.replace(char, "\\" + char)
    if out[:1] in "-+#=" and out[:1]:
        out = "\\" + out
    return out


def _heading(text: str, char: str) -> list[str]:
    return [text, char * len(text), ""]


def list_table(
    header: Sequence[str], rows: Sequence[Sequence[str]], widths: str | None = None
) -> list[str]:
    """A ``list-table`` directive (cells already escaped)."""
    lines = [".. list-table::", "   :header-rows: 1"]
    if widths:
        lines.append(f"   :widths: {widths}")
    lines.append("")
    for row in [header, *rows]:
        for i, cell in enumerate(row):
            lines.append(f"   {'* -' if i == 0 else '  -'} {cell if cell != '' else EMPTY}")
    lines.append("")
    return lines


def family_table(result: dict[str, Any]) -> list[str]:
    """Medians with min-max and the coefficient of variation per implementation, and the
    Python/Node ratio of the medians on each label measured for both."""
    by_label: dict[str, dict[str, dict[str, Any]]] = {}
    for row in result["rows"]:
        by_label.setdefault(row["label"], {})[row["impl"]] = row
    ratios = {r["label"]: r for r in result.get("ratios", [])}
    body = []
    for label, impls in by_label.items():
        cells = [esc(label)]
        for impl in IMPLS:
            row = impls.get(impl)
            if row is None:
                cells += ["", ""]
                continue
            values = row["values"]
            spread = f"{fmt(min(values))} to {fmt(max(values))}" if len(values) > 1 else "one run"
            noisy = cv(values)
            flag = ""
            if noisy is not None and noisy > NOISY_CV and not result.get("deterministic"):
                flag = " (noisy)"
            cells += [fmt(row["median"]), f"{spread}, CV {fmt_cv(noisy)}{flag}"]
        ratio = ratios.get(label)
        if ratio is not None:
            cells.append(f"{ratio['value']:.2f}")
        elif "python" in impls and "node" in impls and impls["node"]["median"]:
            cells.append(f"{impls['python']['median'] / impls['node']['median']:.2f}")
        else:
            cells.append("")
        body.append(cells)
    unit = esc(result["unit"])
    header = [
        "Measurement",
        f"Python ({unit})",
        "Python spread",
        f"Node ({unit})",
        "Node spread",
        "Python/Node",
    ]
    return list_table(header, body, "30 10 20 10 20 10")


def summary_rows(results: Sequence[dict[str, Any]]) -> list[list[str]]:
    rows = []
    for result in results:
        for ratio in result.get("ratios", []):
            met = target_met(result, ratio)
            verdict = "" if met is None else ("met" if met else "missed")
            rows.append(
                [
                    esc(result["title"]),
                    esc(ratio["label"]),
                    f"{ratio['value']:.2f}",
                    target_text(result, ratio),
                    verdict,
                ]
            )
    return rows


def render(
    results: Sequence[dict[str, Any]],
    machine: dict[str, str],
    figures: dict[str, str] | None = None,
    *,
    command: str = "python -m bench",
    repeats: int | None = None,
    quick: bool = False,
    skipped: Sequence[str] = (),
    load: tuple[Sequence[float], Sequence[float]] | None = None,
) -> str:
    """The whole ``docs/benchmarks.rst`` page. ``figures`` maps a family to its image path
    relative to the page; ``skipped`` are notes on families that did not run; ``load`` the
    load averages before and after the run."""
    figures = figures or {}
    lines = [
        ".. This page is written by ``python -m bench`` (bench/__main__.py and bench/report.py);",
        "   change those and run it again rather than editing the page.",
        "",
        *_heading("Benchmarks", "="),
    ]
    if repeats == 1:
        how = "Every figure comes from one run of each measurement, or is a ratio of two. "
    else:
        runs = f"{repeats} runs" if repeats else "several runs"
        how = (
            f"Every figure is the median of {runs} (each family repeats its measurements, "
            "alternating Python and Node where it can) or a ratio of such medians. "
        )
    lines += [
        f"Measured on {esc(machine.get('Date', 'an unknown date'))} with ``{command}``. "
        + how
        + "A ratio is "
        "Python/Node: above 1 Python answers more requests or messages per second, and for "
        "memory below 1 Python is smaller. Node.js runs the real grenache packages "
        "(grenache-grape 1.0.0, grenache-nodejs-http 1.0.2, grenache-nodejs-ws 1.0.0, "
        "grenache-nodejs-link) on the same machine in the same run.",
        "",
    ]
    if quick:
        lines += [
            ".. warning::",
            "",
            "   This is a smoke run (``--quick``): every family ran for seconds only. Its figures "
            "show that the benchmarks work, not how fast anything is.",
            "",
        ]
    lines += [
        "How to run the benchmarks again, what each family measures and how: ``bench/README.md`` "
        "in the source tree. How the figures were made, where each target stands and what the "
        "profiles say where one is missed: :doc:`performance`.",
        "",
    ]
    table = summary_rows(results)
    if table:
        lines += _heading("Summary", "-")
        lines += list_table(
            ["Family", "Comparison", "Python/Node", "Target", "Verdict"], table, "25 40 12 10 13"
        )
    lines += _heading("The machine", "-")
    lines += list_table(["Item", "Value"], [[esc(k), esc(v)] for k, v in machine.items()], "20 80")
    lines += _heading("How noisy the machine was", "-")
    lines += noise_paragraph(results, load)
    for result in results:
        lines += _heading(esc(result["title"]), "-")
        figure = figures.get(result["family"])
        if figure:
            lines += [
                f".. image:: {figure}",
                f"   :alt: {esc(result['title'])}: Python and Node side by side",
                "",
            ]
        lines += family_table(result)
        for note in result.get("notes", []):
            lines += [f"- {esc(note)}"]
        if result.get("notes"):
            lines.append("")
    if skipped:
        lines += _heading("Not measured in this run", "-")
        lines += [f"- {esc(note)}" for note in skipped]
        lines.append("")
    return "\n".join(lines).rstrip("\n") + "\n"


def noise_paragraph(
    results: Sequence[dict[str, Any]], load: tuple[Sequence[float], Sequence[float]] | None
) -> list[str]:
    summary = noise_summary(results)
    text: list[str] = []
    if summary["rows"] == 0:
        text.append(
            "Every row was measured once, so this run says nothing about the spread between "
            "runs; compare ratios only, and run again with ``--repeats 3`` or more."
        )
    else:
        text.append(
            f"The spread of the repeats, as the coefficient of variation (standard deviation / "
            f"mean) of each row's runs: median {fmt_cv(summary['median_cv'])} over "
            f"{summary['rows']} rows, worst {fmt_cv(summary['worst_cv'])} "
            f"({esc(summary['worst_row'])}); {summary['noisy_rows']} row(s) above "
            f"{100 * NOISY_CV:.0f} % are marked noisy in the tables. A ratio whose two rows "
            "spread by more than its distance from 1 (or from its target) is a tie on this "
            "machine."
        )
    if load is not None:
        before, after = load
        text.append(
            "Load average (1, 5, 15 min) before the run "
            + ", ".join(f"{x:.2f}" for x in before)
            + "; after it "
            + ", ".join(f"{x:.2f}" for x in after)
            + "."
        )
    return [" ".join(text), ""]


# --- figures ----------------------------------------------------------------------------------


def plot(result: dict[str, Any], path: Path) -> None:
    """One PNG for a family: medians per measurement with min-max bars (Python beside Node),
    its ``series`` as lines, and its Python/Node ratios against their targets."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = []
    if result["rows"]:
        panels.append("rows")
    if result.get("series"):
        panels.append("series")
    if result.get("ratios"):
        panels.append("ratios")
    if not panels:
        raise ValueError(f"{result['family']}: nothing to plot")
    labels = list(dict.fromkeys(row["label"] for row in result["rows"]))
    height = max(3.2, 0.45 * max(len(labels), len(result.get("ratios", [])), 1) + 1.6)
    fig, axes = plt.subplots(1, len(panels), figsize=(6.2 * len(panels), height), squeeze=False)
    for ax, panel in zip(axes[0], panels, strict=True):
        if panel == "rows":
            _plot_rows(ax, result, labels)
        elif panel == "series":
            _plot_series(ax, result["series"])
        else:
            _plot_ratios(ax, result)
    fig.suptitle(result["title"])
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90, metadata={"Software": None})
    plt.close(fig)


COLORS = {"python": "#3572A5", "node": "#7fb24a"}


def _plot_rows(ax: Any, result: dict[str, Any], labels: list[str]) -> None:
    height = 0.38
    for offset, impl in ((-height / 2, "python"), (height / 2, "node")):
        ys, medians, low, high = [], [], [], []
        for i, label in enumerate(labels):
            row = next(
                (r for r in result["rows"] if r["label"] == label and r["impl"] == impl), None
            )
            if row is None:
                continue
            ys.append(i + offset)
            medians.append(row["median"])
            # a median given beside its values (not one of them) may lie outside their range
            low.append(max(0.0, row["median"] - min(row["values"])))
            high.append(max(0.0, max(row["values"]) - row["median"]))
        if ys:
            ax.barh(
                ys,
                medians,
                height,
                xerr=[low, high],
                label=impl.capitalize(),
                color=COLORS[impl],
                capsize=3,
            )
    ax.set_yticks(range(len(labels)))
    ax.set_yticklabels([_wrap(label) for label in labels], fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel(f"{result['unit']} (median, bars: min-max)")
    ax.legend(fontsize=8, loc="best")
    ax.grid(axis="x", alpha=0.3)


def _plot_series(ax: Any, series: dict[str, Any]) -> None:
    for name, ys in series["y"].items():
        ax.plot(series["x"][: len(ys)], ys, marker="o", markersize=3, label=str(name))
    if series.get("logx"):
        ax.set_xscale("log")
    ax.set_xlabel(series.get("xlabel", ""))
    ax.set_ylabel(series.get("ylabel", ""))
    ax.legend(fontsize=8, loc="best")
    ax.grid(alpha=0.3)


def _plot_ratios(ax: Any, result: dict[str, Any]) -> None:
    ratios = result["ratios"]
    ys = range(len(ratios))
    colors = []
    for ratio in ratios:
        met = target_met(result, ratio)
        colors.append("#999999" if met is None else ("#2e8b57" if met else "#c0392b"))
    ax.barh(list(ys), [r["value"] for r in ratios], 0.6, color=colors)
    for y, ratio in zip(ys, ratios, strict=True):
        if ratio.get("target") is not None:
            ax.plot([ratio["target"]] * 2, [y - 0.4, y + 0.4], color="black", linewidth=2)
    ax.axvline(1.0, color="grey", linestyle=":", linewidth=1)
    ax.set_yticks(list(ys))
    ax.set_yticklabels([_wrap(r["label"]) for r in ratios], fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("ratio, Python/Node unless labelled (black tick: target; green met, red missed)")
    ax.grid(axis="x", alpha=0.3)


def _wrap(text: str, width: int = 28) -> str:
    words, lines, line = text.split(), [], ""
    for word in words:
        if line and len(line) + 1 + len(word) > width:
            lines.append(line)
            line = word
        else:
            line = f"{line} {word}".strip()
    lines.append(line)
    return "\n".join(lines)
