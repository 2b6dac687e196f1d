"""DHT fuzz in CI: 5,000 generated hostile datagrams against a live node (``bench/dht_fuzz.py``
runs 100,000 and more with the same generator, tests/dhtfuzz.py)."""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from tests.dhtfuzz import run_fuzz

#: Drop reasons that would mean a bug (an exception) rather than bad input.
BUG_REASONS = ("internal error", "handler error", "handler bug", "reply not encodable")


class FuzzTests(SynchronousTestCase):
    def test_five_thousand_hostile_datagrams(self) -> None:
        result = run_fuzz(5000, seed=9)
        # Nothing raised: no exception was caught and logged anywhere.
        self.assertEqual(self.flushLoggedErrors(), [])
        bugs = {r: n for r, n in result.dropped.items() if r.startswith(BUG_REASONS)}
        self.assertEqual(bugs, {})
        # Every datagram the node received ended in exactly one counted outcome.
        self.assertEqual(sum(result.received.values()), result.delivered)
        self.assertGreaterEqual(result.delivered, result.datagrams + result.probes)
        self.assertEqual(result.received["dropped"], sum(result.dropped.values()))
        self.assertEqual(result.received["refused"], sum(result.refused.values()))
        # The mix reached every path: answers, refusals, drops for bad input, and replies.
        for outcome in ("answered", "refused", "dropped"):
            self.assertGreater(result.received[outcome], 800, outcome)
        self.assertGreater(result.received["response"], 10)
        self.assertGreater(result.dropped["undecodable"], 100)
        # Valid queries kept being answered, and the node's own lookups all ended.
        self.assertEqual(result.probes_answered, result.probes)
        self.assertEqual(result.lookups_done, result.lookups)
        self.assertGreater(result.routing, 0)

    def test_same_seed_same_counts(self) -> None:
        first, second = run_fuzz(500, seed=3), run_fuzz(500, seed=3)
        self.assertEqual((first.received, first.dropped), (second.received, second.dropped))
