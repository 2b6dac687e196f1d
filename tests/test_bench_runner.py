"""The benchmark runner (``python -m bench``) and its report writer (bench/report.py).

The report is checked on fixed bench JSON (no measuring, no timing assertions); one smoke
test runs ``python -m bench --quick`` end to end on one cheap family into a temporary
directory.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import docutils.core
from twisted.trial import unittest

import tests.test_docs  # noqa: F401  (registers Sphinx's roles, e.g. :doc:, for plain docutils)
from bench import report
from bench.__main__ import FAMILIES, repeat_flag

REPO = Path(__file__).resolve().parents[1]

MACHINE = {"CPU": "Test CPU", "Cores": "2", "Date": "2026-11-29 12:00 UTC"}


def http_family(python: list[float], node: list[float]) -> dict[str, Any]:
    """A family as http_rpc.py writes it."""
    py, nd = sorted(python)[len(python) // 2], sorted(node)[len(node) // 2]
    return {
        "family": "http_rpc",
        "title": "HTTP RPC",
        "unit": "req/s",
        "rows": [
            {"label": "client + server", "impl": "python", "values": python, "median": py},
            {"label": "client + server", "impl": "node", "values": node, "median": nd},
            {
                "label": "python client -> node server",
                "impl": "python",
                "values": [5000.0],
                "median": 5000.0,
            },
        ],
        "ratios": [{"label": "client + server", "value": py / nd, "target": 1.0}],
        "notes": ["32 in flight"],
    }


def memory_family() -> dict[str, Any]:
    """A family whose ratios meet their targets from below (memory)."""
    return {
        "family": "memory",
        "title": "Memory",
        "unit": "MiB",
        "better": "lower",
        "rows": [
            {"label": "idle grape", "impl": "python", "values": [50.0, 51.0], "median": 50.5},
            {"label": "idle grape", "impl": "node", "values": [52.0, 52.0], "median": 52.0},
        ],
        "ratios": [
            {"label": "idle grape", "value": 0.97, "target": 0.8},
            {"label": "grape holding names", "value": 0.84, "target": 1.0},
        ],
        "notes": [],
    }


def render(results: list[dict[str, Any]], **kwargs: Any) -> str:
    text = report.render([report.validate(r) for r in results], MACHINE, **kwargs)
    # The page must be valid reStructuredText: any warning is an error here.
    docutils.core.publish_string(
        text, writer_name="html", settings_overrides={"halt_level": 2, "report_level": 2}
    )
    return text


class ReportTests(unittest.TestCase):
    """The page written from fixed bench JSON."""

    def test_tables_show_medians_spread_and_ratio(self) -> None:
        text = render([http_family([10000.0, 12000.0, 11000.0], [3000.0, 3300.0, 3100.0])])
        self.assertIn("HTTP RPC\n--------", text)
        self.assertIn(".. list-table::", text)
        # Medians, the min-max spread, the coefficient of variation and the ratio.
        self.assertIn("     - 11,000\n     - 10,000 to 12,000, CV 9.1 %", text)
        self.assertIn("     - 3,100\n     - 3,000 to 3,300, CV 4.9 %", text)
        self.assertIn("     - 3.55\n", text)
        # A crossing has a Python cell only.
        self.assertIn("python client -> node server\n     - 5,000\n     - one run", text)
        self.assertIn("- 32 in flight", text)

    def test_summary_says_whether_targets_are_met(self) -> None:
        text = render([http_family([9.0], [10.0]), memory_family()])
        self.assertIn(
            "   * - HTTP RPC\n     - client + server\n     - 0.90\n     - ≥ 1\n     - missed", text
        )
        self.assertIn("     - idle grape\n     - 0.97\n     - ≤ 0.8\n     - missed", text)
        self.assertIn("     - grape holding names\n     - 0.84\n     - ≤ 1\n     - met", text)

    def test_noise_note(self) -> None:
        """The noise paragraph gives the median and worst coefficient of variation, names the
        worst row and flags a row past 10 % as noisy; a deterministic family is left out."""
        noisy = http_family([10000.0, 20000.0, 15000.0], [3000.0, 3000.0, 3000.0])
        simulation = {
            "family": "scale",
            "title": "Scale",
            "unit": "hops",
            "deterministic": True,
            "rows": [{"label": "n=100", "impl": "python", "values": [1.0, 9.0], "median": 5.0}],
            "ratios": [],
            "notes": [],
        }
        text = render([noisy, simulation], load=([0.5, 0.4, 0.3], [1.5, 1.0, 0.5]))
        self.assertIn(
            "median 16.7 % over 2 rows, worst 33.3 % (HTTP RPC: client + server (python))", text
        )
        self.assertIn("1 row(s) above 10 % are marked noisy", text)
        self.assertIn("CV 33.3 % (noisy)", text)
        self.assertNotIn("CV 113.1 % (noisy)", text)  # the simulation's spread
        self.assertIn("before the run 0.50, 0.40, 0.30; after it 1.50, 1.00, 0.50.", text)

    def test_single_runs_say_so(self) -> None:
        text = render([http_family([1.0], [2.0])], repeats=1, quick=True)
        self.assertIn("Every row was measured once", text)
        self.assertIn("one run of each measurement", text)
        self.assertIn(".. warning::", text)

    def test_machine_figures_and_skipped(self) -> None:
        text = render(
            [http_family([1.0], [2.0])],
            figures={"http_rpc": "_static/bench/http_rpc.png"},
            skipped=["zmq_rpc (RPC over ZeroMQ): bench/zmq_rpc.py does not exist yet."],
        )
        self.assertIn("   * - CPU\n     - Test CPU", text)
        self.assertIn(".. image:: _static/bench/http_rpc.png", text)
        self.assertIn("Not measured in this run", text)
        self.assertIn("bench/zmq\\_rpc.py does not exist yet", text)

    def test_markup_in_labels_is_escaped(self) -> None:
        family = http_family([1.0], [2.0])
        family["rows"][0]["label"] = "*star* `tick` |bar| name_"
        render([family])  # publish_string raises on a warning

    def test_merge_runs(self) -> None:
        """Runs of a family that cannot repeat itself merge into medians of all values."""
        a = http_family([100.0], [50.0])
        b = http_family([300.0], [100.0])
        c = http_family([200.0], [60.0])
        merged = report.merge([a, b, c])
        rows = {(r["label"], r["impl"]): r for r in merged["rows"]}
        self.assertEqual(rows[("client + server", "python")]["values"], [100.0, 300.0, 200.0])
        self.assertEqual(rows[("client + server", "python")]["median"], 200.0)
        self.assertEqual(rows[("python client -> node server", "python")]["median"], 5000.0)
        self.assertEqual(merged["ratios"][0]["value"], 3.0)  # median of 2.0, 3.0, 10/3
        self.assertEqual(merged["notes"], ["32 in flight"])

    def test_validate_refuses_bad_input(self) -> None:
        with self.assertRaisesRegex(ValueError, "impl must be python or node"):
            report.validate(
                {
                    "family": "x",
                    "title": "X",
                    "unit": "u",
                    "rows": [{"label": "a", "impl": "rust", "values": [1.0], "median": 1.0}],
                }
            )
        with self.assertRaisesRegex(ValueError, "has no values"):
            report.validate(
                {
                    "family": "x",
                    "title": "X",
                    "unit": "u",
                    "rows": [{"label": "a", "impl": "node", "values": [], "median": 1.0}],
                }
            )
        with self.assertRaisesRegex(ValueError, "'unit' must be a str"):
            report.validate({"family": "x", "title": "X", "rows": []})

    def test_plot_writes_a_png(self) -> None:
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            raise unittest.SkipTest("matplotlib is not installed") from None
        family = http_family([1.0, 2.0], [2.0, 3.0])
        family["series"] = {"x": [1, 10, 100], "y": {"hops": [1, 2, 3]}, "logx": True}
        path = Path(self.mktemp()) / "http.png"
        report.plot(family, path)
        self.assertEqual(path.read_bytes()[:8], b"\x89PNG\r\n\x1a\n")

    def test_family_scripts_take_their_repeats(self) -> None:
        """The runner passes --repeats to the scripts that measure several times themselves."""
        bench = REPO / "bench"
        for name in ("grape.py", "http_rpc.py", "ws.py", "memory.py"):
            self.assertEqual(repeat_flag(bench / name), "--repeats", name)
        self.assertEqual(
            {f.name for f in FAMILIES},
            {
                "grape",
                "http_rpc",
                "ws_rpc",
                "ws_pubsub",
                "zmq_rpc",
                "zmq_pubsub",
                "memory",
                "scale",
            },
        )


class SmokeTests(unittest.TestCase):
    """``python -m bench --quick`` end to end on one family."""

    def test_quick_run_writes_the_page_figure_and_results(self) -> None:
        out = Path(self.mktemp()).resolve() / "benchmarks.rst"
        out.parent.mkdir()
        env = dict(os.environ, PYTHONPATH=str(REPO))
        done = subprocess.run(
            [
                sys.executable,
                "-m",
                "bench",
                "--quick",
                "--families",
                "ws_pubsub",
                "--out",
                str(out),
            ],
            cwd=REPO,
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        self.assertEqual(done.returncode, 0, done.stdout[-3000:] + done.stderr[-3000:])
        text = out.read_text()
        self.assertIn("Pub/sub over WebSocket (fan-out)\n", text)
        self.assertIn("publisher + subscribers", text)
        self.assertIn("The machine", text)
        saved = json.loads((out.parent / "_static" / "bench" / "results.json").read_text())
        self.assertEqual([r["family"] for r in saved["results"]], ["ws_pubsub"])
        self.assertTrue(saved["meta"]["quick"])
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            return
        self.assertIn(".. image:: _static/bench/ws_pubsub.png", text)
        self.assertTrue((out.parent / "_static" / "bench" / "ws_pubsub.png").is_file())

    def test_a_result_from_a_separate_run_is_reported_and_not_rerun(self) -> None:
        from bench.__main__ import main

        directory = Path(self.mktemp()).resolve()
        directory.mkdir()
        given = directory / "http.json"
        given.write_text(json.dumps(http_family([100.0, 110.0], [50.0, 55.0])))
        out = directory / "benchmarks.rst"
        code = main(
            ["--families", "http_rpc", "--with-result", str(given), "--out", str(out), "--no-plots"]
        )
        self.assertEqual(code, 0)
        saved = json.loads((directory / "_static" / "bench" / "results.json").read_text())
        self.assertEqual([r["family"] for r in saved["results"]], ["http_rpc"])
        self.assertEqual(saved["results"][0]["rows"][0]["values"], [100.0, 110.0])
        self.assertIn("From a separate run (http.json).", out.read_text())
