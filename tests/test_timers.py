"""One timer for many deadlines (grenache.timers), on a Clock."""

from __future__ import annotations

import math

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from grenache.timers import Deadlines, DeadlineTimer


class Item:
    def __init__(self) -> None:
        self.done = False
        self.expired = False


class DeadlineTimerTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.sweeps: list[float] = []
        self.next: float | None = None

        def sweep(now: float) -> float | None:
            self.sweeps.append(now)
            return self.next

        self.timer = DeadlineTimer(self.clock, sweep)

    def test_at_is_the_earliest_deadline_asked_for(self) -> None:
        """``at`` says when the one call fires: a later deadline leaves it, an earlier one
        moves it; infinity when nothing is due (so ``at > deadline`` tells who must call
        ``due``)."""
        self.assertEqual(self.timer.at, math.inf)
        self.timer.due(5.0)
        self.timer.due(10.0)
        self.assertEqual((self.timer.at, len(self.clock.getDelayedCalls())), (5.0, 1))
        self.timer.due(3.0)
        self.assertEqual((self.timer.at, len(self.clock.getDelayedCalls())), (3.0, 1))
        self.clock.advance(3.0)
        self.assertEqual((self.sweeps, self.timer.at), ([3.0], math.inf))
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_the_sweep_sets_the_next_call_and_cancel_clears_it(self) -> None:
        self.next = 7.0
        self.timer.due(1.0)
        self.clock.advance(1.0)
        self.assertEqual(self.timer.at, 7.0)
        self.timer.due(9.0)  # later than the pending call: nothing to do
        self.assertEqual(len(self.clock.getDelayedCalls()), 1)
        self.timer.cancel()
        self.assertEqual((self.timer.at, self.clock.getDelayedCalls()), (math.inf, []))
        self.timer.due(2.0)
        self.assertEqual(self.timer.at, 2.0)


class DeadlinesTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.expired: list[Item] = []

        def expire(item: Item) -> None:
            item.expired = True
            self.expired.append(item)
            self.finish(item)

        self.deadlines: Deadlines[Item] = Deadlines(self.clock, expire, lambda item: item.done)

    def finish(self, item: Item) -> None:
        item.done = True
        self.deadlines.finished()

    def test_expires_in_deadline_order_with_one_timer(self) -> None:
        late, early = Item(), Item()
        self.deadlines.add(late, 5.0)
        self.deadlines.add(early, 2.0)
        self.assertEqual(len(self.clock.getDelayedCalls()), 1)
        self.clock.advance(1.9)
        self.assertEqual(self.expired, [])
        self.clock.advance(0.2)
        self.assertEqual(self.expired, [early])
        self.clock.advance(3.0)
        self.assertEqual(self.expired, [early, late])
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_settled_items_never_expire_and_the_timer_stops_when_none_is_live(self) -> None:
        items = [Item() for _ in range(3)]
        for item in items:
            self.deadlines.add(item, 1.0)
        self.finish(items[0])
        self.finish(items[2])
        self.assertEqual(len(self.clock.getDelayedCalls()), 1)
        self.clock.advance(1.0)
        self.assertEqual(self.expired, [items[1]])
        other = Item()
        self.deadlines.add(other, 1.0)
        self.finish(other)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_many_settled_items_do_not_pile_up(self) -> None:
        keep = Item()
        self.deadlines.add(keep, 100.0)
        for _ in range(10000):
            item = Item()
            self.deadlines.add(item, 50.0)
            self.finish(item)
        self.assertLess(len(self.deadlines._heap), 600)
        self.clock.advance(100.0)
        self.assertEqual(self.expired, [keep])
