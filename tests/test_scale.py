"""Tests for the scale simulation (bench/scale_sim.py, bench/scale.py): real grapes on an
event clock, where every lookup must find its peer with few hops and a number of messages
that grows far slower than the network.

Deterministic (seeded ids and delays, simulated time only); a few seconds in all.
"""

from __future__ import annotations

import json
import math
import os
import tempfile

from twisted.trial.unittest import SynchronousTestCase

from bench.scale import nearest_known, plot
from bench.scale_sim import EventClock, LookupTrace, ScaleNetwork, Stats, log2_fit, summarize
from grenache.dht.routing import K

LOOKUPS = 20


def lookups(net: ScaleNetwork, names: int, count: int) -> list:
    """Announce ``names`` names from random grapes, then ``count`` traced lookups."""
    service_names = [f"rest:test:{i:03d}" for i in range(names)]
    for i, name in enumerate(service_names):
        stored = net.announce(net.rng.randrange(net.n), name, 5000 + i)
        assert stored >= 1
    return [
        net.lookup(net.rng.randrange(net.n), net.rng.choice(service_names)) for _ in range(count)
    ]


class EventClockTests(SynchronousTestCase):
    def test_order_cancel_and_reset(self) -> None:
        clock = EventClock()
        seen: list[tuple[str, float]] = []
        clock.callLater(2, lambda: seen.append(("b", clock.seconds())))
        clock.callLater(1, lambda: seen.append(("a", clock.seconds())))
        cancelled = clock.callLater(1.5, lambda: seen.append(("x", clock.seconds())))
        moved = clock.callLater(0.5, lambda: seen.append(("c", clock.seconds())))
        cancelled.cancel()
        moved.reset(3)
        self.assertEqual(len(clock.getDelayedCalls()), 3)
        clock.advance(2.5)
        self.assertEqual(seen, [("a", 1.0), ("b", 2.0)])
        self.assertEqual(clock.seconds(), 2.5)
        self.assertTrue(clock.step())
        self.assertEqual(seen[-1], ("c", 3.0))
        self.assertFalse(clock.step())
        self.assertIsNone(clock.next_time())

    def test_same_time_runs_in_call_order(self) -> None:
        clock = EventClock()
        seen: list[int] = []
        for i in range(5):
            clock.callLater(0, seen.append, i)
        clock.advance(0)
        self.assertEqual(seen, [0, 1, 2, 3, 4])


class FitTests(SynchronousTestCase):
    def test_exact_log2(self) -> None:
        fit = log2_fit([100, 1000, 10000], [3 + 2 * math.log2(n) for n in (100, 1000, 10000)])
        self.assertEqual((fit["a"], fit["b"], fit["r2"]), (3.0, 2.0, 1.0))

    def test_stats(self) -> None:
        stats = Stats.of(list(range(1, 101)))
        self.assertEqual((stats.mean, stats.p50, stats.p95, stats.max), (50.5, 50.5, 95, 100))
        self.assertEqual(Stats.of([]).max, 0.0)


class ScaleTests(SynchronousTestCase):
    """Networks of 40 and 160 real grapes joining in batches from two seeds."""

    def network(self, n: int, **options: object) -> ScaleNetwork:
        net = ScaleNetwork(n, seed=7, **options)  # type: ignore[arg-type]
        net.build()
        self.assertEqual(len(net.routing_sizes()), n)
        self.assertGreater(net.build_sim_time, 0)
        return net

    def test_lookups_succeed_in_few_hops_with_sublinear_messages(self) -> None:
        means = {}
        for n in (40, 160):
            net = self.network(n, batch=50)
            self.assertGreaterEqual(min(net.routing_sizes()), min(K, n - 1) // 2)
            traces = lookups(net, 5, LOOKUPS)
            summary = summarize(traces)
            self.assertEqual(summary["found"], LOOKUPS, f"n={n}: every lookup finds its peer")
            bound = math.ceil(math.log2(n))
            for trace in traces:
                self.assertIsNotNone(trace.hops)
                assert trace.hops is not None
                self.assertLessEqual(trace.hops, trace.depth)
                self.assertLessEqual(trace.depth, bound, f"n={n}: walk depth within log2(n)")
                # A walk never asks a node twice, and replies come back for every query.
                self.assertLessEqual(trace.queries, n - 1)
                self.assertEqual(trace.answered, trace.queries)
                self.assertGreaterEqual(trace.datagrams, 2 * trace.queries)
            means[n] = summary["queries"]["mean"]
        # Four times the grapes, well under twice the messages: logarithmic, not linear.
        self.assertLess(means[160], 2 * means[40])
        self.assertLess(means[160], 160 / 4)

    def test_cluster_booting_at_once_converges(self) -> None:
        """Every grape boots at the same moment from the two seeds: the network goes quiet
        with every routing table holding its grape's nearest neighbour, and lookups from
        every grape succeed."""
        net = self.network(60, batch=60)
        self.assertLess(net.build_sim_time, 5.0)
        self.assertEqual(nearest_known(net, 60, net.rng), 1.0)
        net.announce(5, "rest:cluster", 4000)
        traces = [net.lookup(i, "rest:cluster") for i in range(60)]
        self.assertTrue(all(t.found for t in traces))
        self.assertEqual(traces[5].hops, 1, "the announcer finds it among its own neighbours")

    def test_node_suite_topology_one_byte_key(self) -> None:
        """The Node suite's createGrapes shape (each grape bootstraps from grape 0 or 1) and
        its 1-byte service name B, every grape booting together."""
        net = self.network(40, batch=40, topology="node-suite")
        self.assertGreaterEqual(net.announce(1, "B", 2000), 1)
        for index in (2, 3, *range(4, 40)):
            self.assertTrue(net.lookup(index, "B").found, f"grape {index}")

    def test_names_are_reannounced_past_their_lifetime(self) -> None:
        """An announce lives 120 s; lookups spread over longer simulated time still find the
        name because the network re-announces it between lookups, as a service's link does."""
        net = self.network(20, batch=20)
        net.announce(3, "rest:long", 4100)
        net.clock.advance(200)
        trace = net.lookup(7, "rest:long")
        self.assertTrue(trace.found)
        self.assertGreaterEqual(trace.started, 200)

    def test_unknown_topology(self) -> None:
        self.assertRaises(ValueError, ScaleNetwork, 10, topology="ring")
        self.assertRaises(ValueError, ScaleNetwork, 1)


class PlotTests(SynchronousTestCase):
    def test_plot_writes_a_png(self) -> None:
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            raise self.skipTest("matplotlib is a bench-only dependency") from None
        result = {
            "title": "t",
            "series": {
                "x": [100, 1000, 10000],
                "y": {"get_peers queries per lookup (mean)": [20.0, 30.0, 40.0]},
                "xlabel": "n",
                "ylabel": "per lookup",
                "logx": True,
            },
            "fits": {
                "get_peers queries per lookup (mean)": log2_fit([100, 1000, 10000], [20, 30, 40])
            },
        }
        with tempfile.TemporaryDirectory() as tmp:
            path = os.path.join(tmp, "scale.png")
            plot(result, path)
            with open(path, "rb") as png:
                self.assertEqual(png.read(8), b"\x89PNG\r\n\x1a\n")

    def test_a_partial_run_is_plotted_and_says_so(self) -> None:
        """A checkpoint with one size (no fit yet) still draws, titled as partial."""
        try:
            from matplotlib.figure import Figure
        except ImportError:
            raise self.skipTest("matplotlib is a bench-only dependency") from None
        titles: list[str] = []
        original = Figure.suptitle

        def suptitle(fig: Figure, t: str, **kw: object) -> object:
            titles.append(t)
            return original(fig, t)

        self.patch(Figure, "suptitle", suptitle)
        result = {
            "title": "t",
            "partial": True,
            "series": {
                "x": [3000],
                "y": {"get_peers queries per lookup (mean)": [50.0]},
                "xlabel": "n",
                "ylabel": "per lookup",
                "logx": True,
            },
            "fits": {},
        }
        with tempfile.TemporaryDirectory() as tmp:
            path = os.path.join(tmp, "scale.png")
            plot(result, path)
            self.assertTrue(os.path.getsize(path) > 0)
        self.assertEqual(titles, ["t — partial run, n up to 3,000"])


class CheckpointTests(SynchronousTestCase):
    """bench/scale.py saves its result after each part and size, so a run cut short (the
    10,000-grape size takes long) still leaves the sizes it reached."""

    def test_each_part_and_size_is_saved_as_it_completes(self) -> None:
        import bench.scale as scale

        def fake_suite(seed: int) -> dict:
            return {"all_grapes": summarize([]), "grapes_2_and_3": []}

        def fake_cluster(n: int, seed: int, names: int) -> dict:
            return {"n": n, "lookups": summarize([])}

        def fake_point(n: int, seed: int, names: int, lookups: int) -> dict:
            traces = [LookupTrace(queries=n // 8, datagrams=n // 4, hops=1, depth=2, found=True)]
            return {**summarize(traces), "n": n, "queries_all": [n // 8]}

        self.patch(scale, "node_suite", fake_suite)
        self.patch(scale, "node_suite_node", lambda *a: "Node not run: test")
        self.patch(scale, "cluster", fake_cluster)
        self.patch(scale, "size_point", fake_point)
        self.patch(scale, "log", lambda text: None)
        saved: list[dict] = []
        final = scale.run([16, 32, 64], 10, 2, 1, 1, False, checkpoint=saved.append)
        # suite, Node suite, Node n=1000, cluster, then one save per size
        self.assertEqual(len(saved), 7)
        self.assertEqual([s["series"]["x"] for s in saved[3:]], [[], [16], [16, 32], [16, 32, 64]])
        self.assertTrue(saved[5]["partial"])
        self.assertIn("sizes not reached yet: 64", saved[5]["notes"][-1])
        self.assertFalse(final["partial"])
        self.assertEqual(final["series"], saved[-1]["series"])
        self.assertIn("get_peers queries per lookup (mean)", final["fits"])

    def test_main_rewrites_the_json_file(self) -> None:
        import bench.scale as scale

        written: list[list[int]] = []
        with tempfile.TemporaryDirectory() as tmp:
            path = os.path.join(tmp, "scale.json")

            def fake_run(*args: object, checkpoint: object = None) -> dict:
                assert callable(checkpoint)
                for ns in ([], [8]):
                    checkpoint(
                        scale.assemble(
                            {"points": [{**summarize([]), "n": n, "queries_all": []} for n in ns]},
                            False,
                            0.0,
                            [8, 16],
                        )
                    )
                    with open(path) as f:
                        written.append(json.load(f)["series"]["x"])
                return scale.assemble({"points": []}, False, 0.0, [])

            self.patch(scale, "run", fake_run)
            self.assertEqual(scale.main(["--sizes", "8,16", "--json", path]), 0)
            self.assertEqual(written, [[], [8]])
            self.assertEqual(os.listdir(tmp), ["scale.json"])

    def test_a_size_point_reports_its_cost(self) -> None:
        """Each size records its CPU time and datagrams, so runs can be compared and the
        largest sizes estimated from the smaller ones."""
        from bench.scale import size_point

        point = size_point(24, 1, 2, 3)
        self.assertEqual(point["found"], 3)
        self.assertGreaterEqual(point["datagrams_total"], point["build_datagrams"])
        self.assertGreater(point["build_datagrams"], 24)
        self.assertGreater(point["cpu_s"], 0)
        per_datagram = 1e6 * point["cpu_s"] / point["datagrams_total"]
        self.assertLess(abs(point["cpu_us_per_datagram"] - per_datagram), 0.1 * per_datagram + 5)
