"""Coroutines under either reactor: Twisted's default one or the asyncio reactor.

A handler may be an ``async def``. Under Twisted's default reactor its coroutine runs as
Twisted runs coroutines (:meth:`Deferred.fromCoroutine`): it may await Deferreds, and nothing
of asyncio. Under the asyncio reactor
(:class:`~twisted.internet.asyncioreactor.AsyncioSelectorReactor`, ``twistd -r asyncio``) an
asyncio event loop is running, and asyncio libraries (``asyncio.sleep``, aiohttp, asyncpg...)
need their coroutines to run as an asyncio Task: :func:`to_deferred` then runs the coroutine
as a Task, driven so that it may await **both** asyncio awaitables and Deferreds (a plain
asyncio Task refuses a Deferred: "Task got bad yield").

Other asyncio code awaits a peer's Deferred with :func:`as_future`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any, TypeVar

from twisted.internet.defer import CancelledError, Deferred
from twisted.python.failure import Failure

__all__ = ["as_future", "running_asyncio_loop", "to_deferred"]

T = TypeVar("T")


def running_asyncio_loop() -> asyncio.AbstractEventLoop | None:
    """The asyncio event loop running in this thread (the asyncio reactor's), or ``None``."""
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None


def to_deferred(coro: Coroutine[Any, Any, T]) -> Deferred[T]:
    """Run ``coro`` and return a Deferred of its result.

    With no asyncio event loop running (Twisted's default reactor) this is
    :meth:`Deferred.fromCoroutine`. Under the asyncio reactor, ``coro`` runs as an asyncio
    Task on the running loop and may await asyncio futures and Deferreds alike; cancelling
    the returned Deferred cancels the Task and fails the Deferred with Twisted's
    :class:`~twisted.internet.defer.CancelledError`, as any cancelled Deferred.
    """
    loop = running_asyncio_loop()
    if loop is None:
        return Deferred.fromCoroutine(coro)
    d = Deferred.fromFuture(loop.create_task(_drive(coro, loop)))
    return d.addErrback(_twisted_cancelled)


def as_future(d: Deferred[T]) -> asyncio.Future[T]:
    """``d`` as a future of the running asyncio loop, for asyncio code: ``await
    as_future(client.request(...))``. Cancelling the future cancels ``d``.

    Like :meth:`Deferred.asFuture`, which it calls, it takes ``d``'s result over.
    """
    loop = asyncio.get_running_loop()
    return d.asFuture(loop)


async def _drive(coro: Coroutine[Any, Any, T], loop: asyncio.AbstractEventLoop) -> T:
    """Step ``coro`` inside an asyncio Task, waiting for whatever it is blocked on.

    ``coro`` yields a Deferred when it awaits an unfired one (Twisted's ``Deferred.__await__``),
    an asyncio future when it awaits one, and ``None`` for a bare yield
    (``asyncio.sleep(0)``). Each is waited for here, as this Task's own await, and ``coro`` is
    resumed once it is done: ``coro`` then reads the outcome itself, as it would in a plain
    Task. A cancellation of the Task cancels what ``coro`` waits for.
    """
    value: Any = None
    error: BaseException | None = None
    while True:
        try:
            yielded = coro.send(value) if error is None else coro.throw(error)
        except StopIteration as stop:
            return stop.value  # type: ignore[no-any-return]
        value = error = None
        if isinstance(yielded, Deferred):
            try:
                await _fired(yielded, loop)
            except BaseException as e:  # this Task was cancelled
                if not yielded.called:
                    yielded.addErrback(_trap_cancelled)
                    error = e
        elif yielded is None:
            await asyncio.sleep(0)
        elif asyncio.isfuture(yielded):
            # What a Task does with a future its coroutine yields: take the "blocking" flag
            # that the future's __await__ set (the asyncio future protocol), then wait.
            yielded._asyncio_future_blocking = False
            try:
                await yielded
            except BaseException as e:
                if not yielded.done():
                    error = e
        else:
            error = RuntimeError(
                f"a coroutine awaited {yielded!r}, which is neither a Deferred nor an"
                " asyncio future"
            )


def _fired(d: Deferred[Any], loop: asyncio.AbstractEventLoop) -> asyncio.Future[None]:
    """A future that completes when ``d`` fires, leaving ``d``'s result in place for the
    coroutine that awaits ``d``. Cancelling the future cancels ``d``."""
    future: asyncio.Future[None] = loop.create_future()

    def fired(result: Any) -> Any:
        if not future.done():
            future.set_result(None)
        return result

    def done(f: asyncio.Future[None]) -> None:
        if f.cancelled() and not d.called:
            d.cancel()

    d.addBoth(fired)
    future.add_done_callback(done)
    return future


def _trap_cancelled(failure: Failure) -> Failure | None:
    return None if failure.check(CancelledError) else failure


def _twisted_cancelled(failure: Failure) -> Failure:
    if failure.check(asyncio.CancelledError):
        return Failure(CancelledError())
    return failure
