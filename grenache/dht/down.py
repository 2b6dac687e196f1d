"""Down neighbours: addresses whose queries timed out, left out of walks and fan-outs.

An address whose query of ours timed out is marked down (:class:`_Down`): walks and token-table
fan-outs skip it, a background ping goes to it once its retry time has come (or when it sends us
a query), at most :data:`MAX_PROBES` at a time, and it leaves the routing table after
:data:`DOWN_EVICT_AFTER` timeouts in a row. Any reply from it clears the mark
(docs/protocol.rst, *DHT messages*; the limits are listed in docs/security.rst).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import attrs

from grenache.dht.krpc import Address, KRPCProtocol
from grenache.dht.routing import RoutingTable

#: Seconds a node that timed out is left out of walks and fan-outs before it is pinged again
#: (in the background); doubled at each further timeout, up to :data:`DOWN_RETRY_MAX`.
DOWN_RETRY = 15.0
#: The longest wait, in seconds, before a down neighbour is tried again.
DOWN_RETRY_MAX = 600.0
#: Consecutive timeouts after which a node leaves the routing table (a timeout in a walk
#: removes it at once, as Node does).
DOWN_EVICT_AFTER = 3
#: Addresses remembered as down; the oldest is forgotten past it.
MAX_DOWN_ADDRESSES = 1024
#: Pings to down addresses in flight at once, so that probing never takes the KRPC slots
#: that lookups need (a sender that queries us but never answers is probed at this pace).
MAX_PROBES = 4


@attrs.define
class _Down:
    """An address our queries timed out on: how often in a row, and when to ping it again."""

    failures: int = 0
    retry_at: float = 0.0
    probing: bool = False


class DownNeighbours:
    """The down-neighbour part of :class:`~grenache.dht.node.DHTNode` (a mixin on its state)."""

    down: dict[Address, _Down]
    _probes: int
    _running: bool
    clock: Any
    krpc: KRPCProtocol
    routing: RoutingTable

    if TYPE_CHECKING:

        def _neighbours_changed(self) -> None: ...

    def _timed_out(self, addr: Address) -> None:
        """A query of ours to ``addr`` timed out: leave it out of walks for a while, and out
        of the routing table after :data:`DOWN_EVICT_AFTER` timeouts in a row."""
        down = self.down.get(addr)
        if down is None:
            if len(self.down) >= MAX_DOWN_ADDRESSES:
                del self.down[next(iter(self.down))]
            down = self.down[addr] = _Down()
        down.failures += 1
        delay = min(DOWN_RETRY * 2 ** min(down.failures - 1, 16), DOWN_RETRY_MAX)
        down.retry_at = self.clock.seconds() + delay
        if down.failures >= DOWN_EVICT_AFTER:
            contact = self.routing.at(addr)
            if contact is not None:
                self.routing.remove(contact.id)
                self._neighbours_changed()

    def is_down(self, addr: Address) -> bool:
        """Whether ``addr`` timed out and has not answered since: walks and fan-outs skip it.

        Once its retry time has come, a ping goes to it in the background (the caller does not
        wait for it), as it does when a query comes from it; a reply from the address (to any
        query of ours) clears the mark.
        """
        down = self.down.get(addr)
        if down is None:
            return False
        if self.clock.seconds() >= down.retry_at:
            self._probe(addr)
        return True

    def _skip_queued(self, addr: Address) -> bool:
        """A queued query to ``addr`` is not sent: it is down and not being probed."""
        down = self.down.get(addr) if self.down else None
        return down is not None and not down.probing

    def _answered(self, addr: Address) -> None:
        if self.down:
            self.down.pop(addr, None)

    def _probe(self, addr: Address) -> None:
        """Ping an address marked down, unless a ping to it is already out."""
        down = self.down.get(addr)
        if down is None or down.probing or self._probes >= MAX_PROBES or not self._running:
            return
        down.probing = True
        self._probes += 1

        def probed(_: object) -> None:
            down.probing = False
            self._probes -= 1

        try:
            self.krpc.query(addr, "ping", {}).addBoth(probed)
        except Exception:
            probed(None)

    def _has_live_neighbour(self) -> bool:
        """Whether some routing-table contact is not known to be down."""
        down = self.down
        return any(c.addr not in down for c in self.routing)
