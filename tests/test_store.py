"""Tests for grenache.dht.store: record-cache, LRU and write-token semantics on a fake clock."""

from __future__ import annotations

import hashlib
import random

from twisted.internet.task import Clock
from twisted.logger import Logger, LogLevel
from twisted.trial.unittest import SynchronousTestCase

from grenache.dht import store
from grenache.dht.store import LRUCache, RecordCache, TokenSecrets

KEY = b"rpc_test"
PEER_A = b"\x7f\x00\x00\x01\x05\x39"
PEER_B = b"\x7f\x00\x00\x01\x05\x3a"


class RecordCacheTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()

    def cache(self, max_age: float = 120.0, max_size: int = 10000) -> RecordCache:
        cache = RecordCache(self.clock, max_age, max_size, rng=random.Random(1))
        cache.start()
        self.addCleanup(cache.stop)
        return cache

    def test_tick_is_two_thirds_rounded_up_to_a_millisecond(self) -> None:
        self.assertEqual(RecordCache(self.clock, 120).tick, 80.0)
        self.assertEqual(RecordCache(self.clock, 0.05).tick, 0.034)  # ceil(33.33 ms)
        self.assertIsNone(RecordCache(self.clock, 0).tick)
        self.assertIsNone(RecordCache(self.clock, float("inf")).tick)

    def test_version_moves_with_every_change_get_can_see(self) -> None:
        cache = self.cache()
        seen = [cache.version]

        def moved() -> bool:
            changed = cache.version != seen[-1]
            seen.append(cache.version)
            return changed

        cache.add(KEY, PEER_A)
        self.assertTrue(moved())
        cache.add(KEY, PEER_A)  # already there: the answer is the same
        self.assertFalse(moved())
        cache.gc()  # nothing expired: PEER_A is stale now, still answered
        self.assertFalse(moved())
        self.assertEqual(cache.get(KEY), [PEER_A])
        cache.add(KEY, PEER_A)  # refreshed from stale
        cache.add(KEY, PEER_B)
        self.assertTrue(moved())
        self.assertTrue(cache.remove(KEY, PEER_B))
        self.assertTrue(moved())
        self.assertFalse(cache.remove(KEY, PEER_B))
        self.assertFalse(moved())
        cache.gc()
        cache.gc()  # PEER_A expired
        self.assertTrue(moved())
        self.assertEqual(cache.get(KEY), [])
        cache.add(KEY, PEER_A)
        moved()
        cache.remove_key(KEY)
        self.assertTrue(moved())
        cache.remove_key(KEY)
        self.assertFalse(moved())

    def test_expiry_is_one_structured_event_per_gc(self) -> None:
        events: list[dict[str, object]] = []
        self.patch(store, "log", Logger(observer=events.append))
        cache = self.cache()
        cache.add(KEY, PEER_A)
        cache.add(KEY, PEER_B)
        self.clock.advance(80)  # fresh -> stale: nothing expired, nothing logged
        self.assertEqual(events, [])
        cache.add(KEY, PEER_A)  # refreshed
        self.clock.advance(80)  # PEER_B expires
        (event,) = events
        self.assertEqual(
            (event["event"], event["expired"], event["kept"], event["log_level"]),
            ("expiry", 1, 1, LogLevel.debug),
        )

    def test_dedup(self) -> None:
        cache = self.cache()
        cache.add(KEY, PEER_A)
        cache.add(KEY, PEER_A)
        cache.add(KEY, PEER_B)
        self.assertEqual(len(cache), 2)
        self.assertEqual(sorted(cache.get(KEY)), [PEER_A, PEER_B])

    def test_dedup_across_generations(self) -> None:
        """Re-adding a stale record moves it back to fresh instead of duplicating it."""
        cache = self.cache()
        cache.add(KEY, PEER_A)
        cache.gc()
        cache.add(KEY, PEER_A)
        self.assertEqual(len(cache), 1)
        self.assertEqual(cache.get(KEY), [PEER_A])

    def test_keys_are_independent(self) -> None:
        cache = self.cache()
        cache.add(b"a", PEER_A)
        cache.add(b"b", PEER_A)
        self.assertEqual(cache.get(b"a"), [PEER_A])
        self.assertEqual(cache.get(b"b"), [PEER_A])
        self.assertEqual(cache.get(b"c"), [])
        self.assertEqual(sorted(cache.keys()), [b"a", b"b"])
        self.assertEqual(len(cache), 2)

    def test_sample_size(self) -> None:
        cache = self.cache()
        peers = [bytes([127, 0, 0, 1, 0, i]) for i in range(50)]
        for i, p in enumerate(peers):
            cache.add(KEY, p)
            if i == 25:
                cache.gc()  # spread the records over both generations
        sample = cache.get(KEY, 10)
        self.assertEqual(len(sample), 10)
        self.assertEqual(len(set(sample)), 10)
        self.assertTrue(set(sample) <= set(peers))
        self.assertEqual(sorted(cache.get(KEY)), sorted(peers))
        self.assertEqual(sorted(cache.get(KEY, 0)), sorted(peers))
        self.assertEqual(sorted(cache.get(KEY, 500)), sorted(peers))

    def test_sample_is_random(self) -> None:
        """Samples come from the injected rng, so a fixed seed is reproducible."""
        peers = [bytes([10, 0, 0, 1, 0, i]) for i in range(30)]

        def draw(seed: int) -> list[list[bytes]]:
            cache = RecordCache(self.clock, 0, rng=random.Random(seed))
            for p in peers:
                cache.add(KEY, p)
            return [cache.get(KEY, 5) for _ in range(5)]

        self.assertEqual(draw(3), draw(3))
        self.assertEqual(len({tuple(s) for s in draw(3)}), 5)

    def test_remove(self) -> None:
        cache = self.cache()
        cache.add(KEY, PEER_A)
        cache.gc()
        cache.add(KEY, PEER_B)
        cache.remove(KEY, PEER_A)
        cache.remove(KEY, PEER_B)
        cache.remove(KEY, PEER_B)
        self.assertEqual(cache.get(KEY), [])
        self.assertEqual(len(cache), 0)
        self.assertEqual(cache.keys(), [])

    def test_expiry_longest(self) -> None:
        """Added just after a tick: lives until the second tick, 4/3 of max_age."""
        cache = self.cache(max_age=120)
        cache.add(KEY, PEER_A)
        self.clock.advance(80)
        self.assertEqual(cache.get(KEY), [PEER_A])  # now stale, still served
        self.clock.advance(79.5)
        self.assertEqual(cache.get(KEY), [PEER_A])
        self.clock.advance(0.5)
        self.assertEqual(cache.get(KEY), [])
        self.assertEqual(len(cache), 0)

    def test_expiry_shortest(self) -> None:
        """Added just before a tick: lives one tick and a bit, 2/3 of max_age."""
        cache = self.cache(max_age=120)
        self.clock.advance(79.5)
        cache.add(KEY, PEER_A)
        self.clock.advance(80)  # t=159.5: ticked at 80 without drifting the schedule
        self.assertEqual(cache.get(KEY), [PEER_A])
        self.clock.advance(0.5)  # t=160
        self.assertEqual(cache.get(KEY), [])

    def test_ticks_do_not_drift(self) -> None:
        """One big advance runs every tick it covers, on the original schedule."""
        cache = self.cache(max_age=120)
        cache.add(KEY, PEER_A)
        self.clock.advance(1000)  # ticks at 80, 160, ..., 960
        self.assertEqual(len(cache), 0)
        cache.add(KEY, PEER_A)
        self.clock.advance(39)  # t=1039: next tick at 1040
        self.assertEqual(len(self.clock.getDelayedCalls()), 1)
        self.assertEqual(self.clock.getDelayedCalls()[0].getTime(), 1040)

    def test_refresh_keeps_alive(self) -> None:
        cache = self.cache(max_age=120)
        cache.add(KEY, PEER_A)
        cache.add(KEY, PEER_B)
        for _ in range(5):
            self.clock.advance(80)
            cache.add(KEY, PEER_A)
        self.assertEqual(cache.get(KEY), [PEER_A])

    def test_never_expires_with_zero_age(self) -> None:
        cache = self.cache(max_age=0)
        cache.add(KEY, PEER_A)
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.clock.advance(10**9)
        self.assertEqual(cache.get(KEY), [PEER_A])

    def test_size_triggered_gc(self) -> None:
        """Exceeding max_size fresh records ages everything at once."""
        cache = self.cache(max_age=0, max_size=3)
        for i in range(3):
            cache.add(KEY, bytes([1, 1, 1, 1, 0, i]))
        self.assertEqual(len(cache), 3)
        cache.add(b"other", PEER_A)  # 4 fresh records across keys > 3: gc
        self.assertEqual(len(cache), 4)  # all stale now, still served
        for i in range(4):
            cache.add(KEY, bytes([2, 2, 2, 2, 0, i]))  # 4th add: gc again, first batch dropped
        self.assertEqual(len(cache), 4)
        self.assertEqual(cache.get(b"other"), [])
        self.assertEqual(len(cache.get(KEY)), 4)

    def test_refresh_does_not_count_twice(self) -> None:
        """Re-adding a fresh record adds nothing, so it cannot trigger a size gc."""
        cache = self.cache(max_age=0, max_size=1)
        cache.add(KEY, PEER_A)
        cache.add(KEY, PEER_A)
        cache.add(KEY, PEER_A)
        cache.remove(KEY, PEER_A)
        self.assertEqual(len(cache), 0)

    def test_size_gc_skips_next_tick(self) -> None:
        """After a size-triggered gc the next automatic gc is skipped once."""
        cache = self.cache(max_age=120, max_size=1)
        cache.add(KEY, PEER_A)
        self.clock.advance(40)
        cache.add(KEY, PEER_B)  # 2 fresh > 1: gc, PEER_A and PEER_B both stale
        self.clock.advance(40)  # t=80: skipped
        self.assertEqual(sorted(cache.get(KEY)), [PEER_A, PEER_B])
        self.clock.advance(80)  # t=160: gc, stale dropped
        self.assertEqual(cache.get(KEY), [])

    def test_start_stop(self) -> None:
        cache = RecordCache(self.clock, 120)
        cache.stop()  # before start: fine
        cache.start()
        cache.start()  # idempotent: still one timer
        self.assertEqual(len(self.clock.getDelayedCalls()), 1)
        self.clock.advance(80)
        self.assertEqual(len(self.clock.getDelayedCalls()), 1)  # re-armed
        cache.add(KEY, PEER_A)
        cache.stop()
        cache.stop()
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.clock.advance(1000)
        self.assertEqual(cache.get(KEY), [PEER_A])

    def test_rejects_negative_age(self) -> None:
        self.assertRaises(ValueError, RecordCache, self.clock, -1)


class LRUCacheTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()

    def test_basic(self) -> None:
        lru: LRUCache[str, int] = LRUCache(self.clock, 10)
        self.assertIsNone(lru.get("a"))
        self.assertNotIn("a", lru)
        lru.set("a", 1)
        self.assertEqual(lru.get("a"), 1)
        self.assertEqual(lru.peek("a"), 1)
        self.assertIn("a", lru)
        lru.set("a", 2)
        self.assertEqual(lru.get("a"), 2)
        self.assertEqual(len(lru), 1)
        lru.delete("a")
        lru.delete("a")
        self.assertIsNone(lru.get("a"))
        self.assertEqual(len(lru), 0)

    def test_eviction_least_recently_used(self) -> None:
        lru: LRUCache[str, int] = LRUCache(self.clock, 3)
        for i, k in enumerate("abc"):
            lru.set(k, i)
        lru.get("a")  # a is now most recent; b is least
        lru.set("d", 3)
        self.assertNotIn("b", lru)
        self.assertEqual(lru.keys(), ["c", "a", "d"])
        lru.set("c", 9)  # overwrite refreshes recency, evicts nothing
        self.assertEqual(lru.keys(), ["a", "d", "c"])
        self.assertEqual(len(lru), 3)

    def test_peek_does_not_refresh(self) -> None:
        lru: LRUCache[str, int] = LRUCache(self.clock, 2)
        lru.set("a", 1)
        lru.set("b", 2)
        self.assertEqual(lru.peek("a"), 1)
        self.assertIn("a", lru)  # __contains__ does not refresh either
        lru.set("c", 3)
        self.assertIsNone(lru.peek("a"))
        self.assertEqual(list(lru.items()), [("b", 2), ("c", 3)])

    def test_no_age_by_default(self) -> None:
        lru: LRUCache[bytes, bytes] = LRUCache(self.clock, 5)
        lru.set(b"k", b"v")
        self.clock.advance(10**9)
        self.assertEqual(lru.get(b"k"), b"v")

    def test_age_expiry_from_insertion(self) -> None:
        """Reads do not extend the age; expired once strictly older than max_age."""
        lru: LRUCache[str, str] = LRUCache(self.clock, 5, max_age=300)
        lru.set("t", "table")
        self.clock.advance(200)
        self.assertEqual(lru.get("t"), "table")
        self.clock.advance(100)
        self.assertEqual(lru.get("t"), "table")  # exactly 300 s: still valid
        self.clock.advance(0.001)
        self.assertIsNone(lru.get("t"))
        self.assertNotIn("t", lru)
        self.assertEqual(len(lru), 0)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_set_restarts_age(self) -> None:
        lru: LRUCache[str, str] = LRUCache(self.clock, 5, max_age=300)
        lru.set("t", "old")
        self.clock.advance(250)
        lru.set("t", "new")
        self.clock.advance(250)
        self.assertEqual(lru.peek("t"), "new")

    def test_len_and_items_skip_expired(self) -> None:
        lru: LRUCache[str, int] = LRUCache(self.clock, 5, max_age=10)
        lru.set("a", 1)
        self.clock.advance(6)
        lru.set("b", 2)
        self.clock.advance(6)
        self.assertEqual(len(lru), 1)
        self.assertEqual(list(lru.items()), [("b", 2)])
        self.assertIsNone(lru.peek("a"))

    def test_rejects_zero_size(self) -> None:
        self.assertRaises(ValueError, LRUCache, self.clock, 0)


class TokenSecretsTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.tokens = TokenSecrets(self.clock, rng=random.Random(7))
        self.tokens.start()
        self.addCleanup(self.tokens.stop)

    def test_token_is_sha1_of_ip_and_secret(self) -> None:
        """Same derivation as bittorrent-dht: SHA1(utf8(ip) || current secret), port ignored."""
        secret = random.Random(7).randbytes(20)  # the first secret drawn is the current one
        token = self.tokens.token("127.0.0.1")
        self.assertEqual(token, hashlib.sha1(b"127.0.0.1" + secret).digest())
        self.assertEqual(len(token), 20)
        self.assertNotEqual(token, self.tokens.token("127.0.0.2"))

    def test_valid_for_the_issuing_ip_only(self) -> None:
        token = self.tokens.token("10.0.0.1")
        self.assertTrue(self.tokens.is_valid("10.0.0.1", token))
        self.assertFalse(self.tokens.is_valid("10.0.0.2", token))
        self.assertFalse(self.tokens.is_valid("10.0.0.1", token[:-1]))
        self.assertFalse(self.tokens.is_valid("10.0.0.1", b""))

    def test_valid_across_one_rotation_not_two(self) -> None:
        token = self.tokens.token("10.0.0.1")
        self.clock.advance(300)
        self.assertTrue(self.tokens.is_valid("10.0.0.1", token))
        self.assertNotEqual(self.tokens.token("10.0.0.1"), token)
        self.clock.advance(300)
        self.assertFalse(self.tokens.is_valid("10.0.0.1", token))

    def test_manual_rotate(self) -> None:
        token = self.tokens.token("10.0.0.1")
        self.tokens.rotate()
        self.assertTrue(self.tokens.is_valid("10.0.0.1", token))
        self.tokens.rotate()
        self.assertFalse(self.tokens.is_valid("10.0.0.1", token))

    def test_validity_window(self) -> None:
        """A token issued just before a rotation is still good for 5 minutes after it."""
        self.clock.advance(299)
        token = self.tokens.token("10.0.0.1")
        self.clock.advance(300)  # t=599, one rotation at 300
        self.assertTrue(self.tokens.is_valid("10.0.0.1", token))
        self.clock.advance(1)  # t=600, second rotation
        self.assertFalse(self.tokens.is_valid("10.0.0.1", token))

    def test_stop(self) -> None:
        token = self.tokens.token("10.0.0.1")
        self.tokens.stop()
        self.tokens.stop()
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.clock.advance(3600)
        self.assertTrue(self.tokens.is_valid("10.0.0.1", token))

    def test_os_urandom_by_default(self) -> None:
        a, b = TokenSecrets(self.clock), TokenSecrets(self.clock)
        self.assertNotEqual(a.token("1.2.3.4"), b.token("1.2.3.4"))
        self.assertEqual(len(self.clock.getDelayedCalls()), 1)  # only self.tokens' timer
