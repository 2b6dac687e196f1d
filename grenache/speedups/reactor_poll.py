"""A leaner dispatch of socket events for Twisted's epoll reactor (private internals).

Twisted's ``EPollReactor.doPoll`` hands every ready socket to the reactor's
``_doReadOrWrite`` through :func:`twisted.python.log.callWithLogger`, which asks the socket for
its log prefix and runs the handling inside a new legacy log context, through a thread-local
lookup and three more Python calls. On a lone grape answering ``/lookup`` that wrapping is
about 15,000 of the 111,000 instructions each request costs (docs/performance.rst, *Grape HTTP
API*). :func:`install` replaces the reactor's ``doIteration`` with a poll loop that does the
same work directly: the same sockets handled in the same order by the same
``_doReadOrWrite``, each inside a legacy log context whose ``system`` is its
``logPrefix()``, pushed on Twisted's context stack as ``log.callWithContext`` pushes it (so a
legacy ``log.msg`` or ``log.err`` made while a socket is handled is labelled as before), and
an exception that escapes logged as ``callWithLogger`` logs it.

It relies on ``EPollReactor._poller``, ``_selectables`` and ``_doReadOrWrite`` and on
``twisted.python.context.theContextTracker.currentContext().contexts`` with
``twisted.python.log.ILogContext`` as its key; :func:`available`
checks them for a reactor, and :func:`install` leaves any other reactor (another kind, a
test's fake, a Twisted without them) on Twisted's own loop and answers ``False``. Entry points
that own their reactor install it: ``twistd grape``, ``twistd grenache-service`` and ``twistd
grenache-proxy``; a program of its own may call :func:`install` once its reactor is chosen.
"""

from __future__ import annotations

import errno
from typing import Any

from twisted.python import context, log

__all__ = ["available", "install", "install_under_twistd", "installed", "uninstall"]


_LOG_CONTEXT: Any = getattr(log, "ILogContext", None)


def _tracker_contexts() -> list[dict[Any, Any]] | None:
    """The calling thread's context stack (dicts searched from the end), or ``None`` if
    Twisted has none."""
    current = getattr(context.theContextTracker, "currentContext", None)
    if current is None or _LOG_CONTEXT is None:
        return None
    contexts = getattr(current(), "contexts", None)
    return contexts if isinstance(contexts, list) else None


def _log_context(contexts: list[dict[Any, Any]]) -> dict[str, Any]:
    """The legacy log context in force (what ``log.callWithContext`` copies and extends)."""
    for layer in reversed(contexts):
        found = layer.get(_LOG_CONTEXT)
        if found is not None:
            return found  # type: ignore[no-any-return]
    return {"system": "-"}


def available(reactor: Any) -> bool:
    """Whether ``reactor`` is an epoll reactor with the internals :func:`install` uses."""
    try:
        from twisted.internet.epollreactor import EPollReactor
    except ImportError:  # not Linux
        return False
    return (
        isinstance(reactor, EPollReactor)
        and callable(getattr(getattr(reactor, "_poller", None), "poll", None))
        and isinstance(getattr(reactor, "_selectables", None), dict)
        and callable(getattr(reactor, "_doReadOrWrite", None))
        and _tracker_contexts() is not None
    )


def installed(reactor: Any) -> bool:
    """Whether :func:`install` replaced ``reactor``'s poll loop."""
    return getattr(reactor.__dict__.get("doIteration"), "lean_poll", False) is True


def install(reactor: Any) -> bool:
    """Run ``reactor``'s socket events through the lean loop; ``False`` (and nothing changed)
    when :func:`available` says it cannot. Call it from the reactor's thread."""
    if installed(reactor):
        return True
    if not available(reactor):
        return False

    def lean_poll(timeout: float | None) -> None:
        # Read per poll, as Twisted's doPoll does, should the reactor ever replace them.
        poller = reactor._poller
        selectables: dict[int, Any] = reactor._selectables
        handle = reactor._doReadOrWrite
        try:
            events = poller.poll(-1 if timeout is None else timeout, len(selectables))
        except OSError as error:
            if error.errno == errno.EINTR:
                return
            raise
        contexts = _tracker_contexts()
        assert contexts is not None  # checked by available(); per thread, so read per poll
        outer = _log_context(contexts)
        for fd, event in events:
            selectable = selectables.get(fd)
            if selectable is None:
                continue
            try:
                prefix = selectable.logPrefix()
            except KeyboardInterrupt:
                raise
            except BaseException:
                prefix = "(buggy logPrefix method)"
                log.err(system=prefix)
            contexts.append({_LOG_CONTEXT: {**outer, "system": prefix}})
            try:
                handle(selectable, fd, event)
            except KeyboardInterrupt:
                raise
            except BaseException:
                log.err(system=prefix)
            finally:
                contexts.pop()

    lean_poll.lean_poll = True  # type: ignore[attr-defined]
    reactor.doIteration = lean_poll
    return True


def uninstall(reactor: Any) -> None:
    """Put ``reactor`` back on Twisted's own poll loop."""
    if installed(reactor):
        del reactor.doIteration


def install_under_twistd(options: Any, reactor: Any) -> bool:
    """:func:`install` when ``options`` (a plugin's) were parsed by ``twistd``, which sets their
    ``parent``: the process is twistd's and so is its reactor. A plugin's ``makeService``
    called by a program or a test leaves that program's reactor as it is."""
    if getattr(options, "parent", None) is None:
        return False
    return install(reactor)
