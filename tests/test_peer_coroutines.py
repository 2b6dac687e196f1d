"""Tests for grenache.peer.coroutines: which way a handler's coroutine runs, and that under a
running asyncio loop it may await asyncio futures and Deferreds alike.

The asyncio cases run their own event loop with ``asyncio.run`` (trial's reactor is the
default one); tests/test_asyncio_reactor.py runs a whole service under the asyncio reactor.
"""

from __future__ import annotations

import asyncio
from typing import Any

from twisted.internet.defer import CancelledError, Deferred, succeed
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from grenache.peer import Request, as_future, call_handler, to_deferred
from grenache.peer.coroutines import running_asyncio_loop

REQUEST = Request("rid", "key", 2)


def outcome(d: Deferred[Any]) -> asyncio.Future[Any]:
    """A future with ``d``'s result or failure, without consuming it into None."""
    future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()

    def done(result: Any) -> None:
        if isinstance(result, Failure):
            future.set_exception(result.value)
        else:
            future.set_result(result)

    d.addBoth(done)
    return future


class DefaultReactorTests(SynchronousTestCase):
    def test_no_loop_means_twisted_coroutine(self) -> None:
        """Without a running asyncio loop the coroutine runs as Twisted runs them: at once,
        up to its first await of an unfired Deferred."""
        self.assertIsNone(running_asyncio_loop())
        steps: list[str] = []
        gate: Deferred[int] = Deferred()

        async def handler(request: Request) -> int:
            steps.append("started")
            return request.payload + await gate

        d = call_handler(handler, REQUEST)
        self.assertEqual(steps, ["started"])
        self.assertNoResult(d)
        gate.callback(40)
        self.assertEqual(self.successResultOf(d), 42)


class AsyncioLoopTests(SynchronousTestCase):
    def run_loop(self, main: Any) -> Any:
        return asyncio.run(main())

    def test_task_awaits_asyncio_and_deferreds(self) -> None:
        """Under a running loop the coroutine is an asyncio Task: asyncio.sleep, a Queue and
        an unfired Deferred can all be awaited, in any order."""

        async def handler(request: Request) -> Any:
            task = asyncio.current_task()
            queue: asyncio.Queue[int] = asyncio.Queue()
            asyncio.get_running_loop().call_soon(queue.put_nowait, 10)
            await asyncio.sleep(0)
            from_queue = await queue.get()
            d: Deferred[int] = Deferred()
            asyncio.get_running_loop().call_soon(d.callback, 30)
            from_deferred = await d
            already = await succeed(0)
            return [task is not None, request.payload + from_queue + from_deferred + already]

        async def main() -> Any:
            d = call_handler(handler, REQUEST)
            self.assertNoResult(d)  # a Task starts on the loop's next turn
            return await outcome(d)

        self.assertEqual(self.run_loop(main), [True, 42])

    def test_a_future_shared_by_two_handlers(self) -> None:
        """Two coroutines awaiting the same asyncio future both get its result."""

        async def main() -> Any:
            shared = asyncio.get_running_loop().create_future()

            async def handler(request: Request) -> Any:
                return request.payload + await shared

            d1 = call_handler(handler, REQUEST)
            d2 = call_handler(handler, Request("rid", "key", 3))
            await asyncio.sleep(0)
            shared.set_result(1)
            return [await outcome(d1), await outcome(d2)]

        self.assertEqual(self.run_loop(main), [3, 4])

    def test_failures_reach_the_deferred(self) -> None:
        async def handler(request: Request) -> Any:
            d: Deferred[int] = Deferred()
            asyncio.get_running_loop().call_soon(d.errback, ValueError("from a Deferred"))
            try:
                await d
            except ValueError as e:
                future = asyncio.get_running_loop().create_future()
                future.set_exception(KeyError(str(e)))
                await future

        async def main() -> Any:
            with self.assertRaises(KeyError) as caught:
                await outcome(call_handler(handler, REQUEST))
            return caught.exception.args

        self.assertEqual(self.run_loop(main), ("from a Deferred",))

    def test_cancel_while_awaiting_asyncio(self) -> None:
        """Cancelling the Deferred cancels the Task and the future it waits for."""
        seen: list[str] = []

        async def handler(request: Request) -> Any:
            try:
                await asyncio.Event().wait()
            except asyncio.CancelledError:
                seen.append("cancelled")
                raise

        async def main() -> None:
            d = call_handler(handler, REQUEST)
            await asyncio.sleep(0)
            d.cancel()
            with self.assertRaises(CancelledError):
                await outcome(d)
            await asyncio.sleep(0)

        self.run_loop(main)
        self.assertEqual(seen, ["cancelled"])

    def test_cancel_while_awaiting_a_deferred(self) -> None:
        """... and the Deferred it waits for, whose CancelledError the coroutine sees."""
        seen: list[Any] = []
        inner: Deferred[int] = Deferred(lambda d: seen.append("inner cancelled"))

        async def handler(request: Request) -> Any:
            try:
                return await inner
            except CancelledError:
                seen.append("coroutine saw it")
                raise

        async def main() -> None:
            d = call_handler(handler, REQUEST)
            await asyncio.sleep(0)
            d.cancel()
            with self.assertRaises(CancelledError):
                await outcome(d)
            for _ in range(3):
                await asyncio.sleep(0)

        self.run_loop(main)
        self.assertEqual(seen, ["inner cancelled", "coroutine saw it"])

    def test_foreign_awaitable_is_an_error(self) -> None:
        class Odd:
            def __await__(self) -> Any:
                yield "neither"

        async def handler(request: Request) -> Any:
            return await Odd()

        async def main() -> None:
            with self.assertRaises(RuntimeError) as caught:
                await outcome(call_handler(handler, REQUEST))
            self.assertIn("neither a Deferred nor an asyncio future", str(caught.exception))

        self.run_loop(main)

    def test_to_deferred_and_as_future(self) -> None:
        """asyncio code awaits a peer's Deferred through as_future; cancelling the future
        cancels the Deferred."""
        cancelled: list[bool] = []

        async def work() -> int:
            await asyncio.sleep(0)
            return 7

        async def main() -> Any:
            d: Deferred[int] = Deferred()
            asyncio.get_running_loop().call_soon(d.callback, 5)
            first = await as_future(d)
            second = await as_future(to_deferred(work()))
            hanging: Deferred[int] = Deferred(lambda _: cancelled.append(True))
            future = as_future(hanging)
            future.cancel()
            await asyncio.sleep(0)
            hanging.addErrback(lambda f: f.trap(CancelledError))
            return first, second

        self.assertEqual(self.run_loop(main), (5, 7))
        self.assertEqual(cancelled, [True])
