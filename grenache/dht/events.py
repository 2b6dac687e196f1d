"""The events a grape emits, as grenache-grape 1.0.0 emits them, for programs that want to
watch their grape.

``ready``
    the first bootstrap walk ended (even with no bootstrap node or none answering, as in
    Node: it is no sign of connectivity); no argument.
``listening``
    the DHT's UDP socket is bound; no argument.
``announce``
    this grape stored an announced peer: a remote node's ``announce_peer``, or its own
    announce stored locally (with ``host`` set, or as a lone grape); the service name.
``unannounce``
    this grape dropped a peer at its owner's request (``unannounce_peer``); the service name.
    Node 1.0.0 has no such event; grenache-grape's development branch has it.
``peer``
    a lookup learned a peer (from this grape's own store first, then from each node that
    answered with peers; the same peer may come more than once); ``"ip:port"``.
``node``
    a node joined the routing table; ``"ip:port"`` (Node passes no argument).
``warning``
    a DHT datagram was dropped (undecodable, a late reply, over a rate limit...); the reason
    as text (Node passes no argument). The drop counters and the log report them too.

Listeners are called synchronously, in the order they were added, with the arguments above.
A listener that raises is logged and does not stop the others or the grape.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.logger import Logger

__all__ = ["EVENTS", "Events"]

log = Logger()

#: Every event name :class:`Events` accepts.
EVENTS = ("ready", "listening", "announce", "unannounce", "peer", "node", "warning")


class Events:
    """Listeners by event name (``add_listener`` / ``remove_listener``, as on
    :class:`~grenache.peer.PeerSub`).

    ``active`` holds only the events that have a listener, so the DHT's hot paths test
    ``"peer" in events.active`` (one dict lookup) before building an event's arguments.
    """

    def __init__(self) -> None:
        self.active: dict[str, list[Callable[..., Any]]] = {}

    def add_listener(self, event: str, fn: Callable[..., Any]) -> None:
        """Call ``fn`` on ``event`` (one of :data:`EVENTS`)."""
        if event not in EVENTS:
            raise ValueError(f"unknown event {event!r}; expected one of {', '.join(EVENTS)}")
        if not callable(fn):
            raise TypeError(f"a listener must be callable, not {type(fn).__name__}")
        self.active.setdefault(event, []).append(fn)

    def remove_listener(self, event: str, fn: Callable[..., Any]) -> None:
        """Stop calling ``fn`` on ``event``; ValueError if it was not listening."""
        listeners = self.active.get(event)
        if listeners is None or fn not in listeners:
            raise ValueError(f"{fn!r} is not listening to {event!r}")
        listeners.remove(fn)
        if not listeners:
            del self.active[event]

    def emit(self, event: str, *args: Any) -> None:
        """Call ``event``'s listeners with ``args``; a listener that raises is logged."""
        listeners = self.active.get(event)
        if not listeners:
            return
        for fn in list(listeners):
            try:
                fn(*args)
            except Exception:
                log.failure("grape {event} listener {fn!r} failed", event=event, fn=fn)
