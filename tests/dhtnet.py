"""An in-memory UDP network for deterministic DHT tests.

Datagrams between attached protocols are delivered through the test's ``Clock`` (a zero-delay
call each), so a whole DHT runs with no socket and no real time: ``settle()`` delivers until
nothing is left at the current instant, ``clock.advance(3)`` lets KRPC timeouts fire.
:class:`GrapeReactor` runs whole grapes (UDP on the fake network, TCP recorded, a scripted
resolver).
"""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.protocol import DatagramProtocol
from twisted.internet.testing import MemoryReactorClock

from grenache.testing.udp import MemoryUDPNetwork, MemoryUDPPort

# One in-memory UDP network for the project's tests and users' tests alike.
FakeNetwork = MemoryUDPNetwork
FakeUDPTransport = MemoryUDPPort


def result_of(network: FakeNetwork, d: Any, within: float = 10.0) -> Any:
    """Run the network until Deferred ``d`` fires (at most ``within`` clock seconds)."""
    box: list[Any] = []
    d.addBoth(box.append)
    network.settle()
    waited = 0.0
    while not box and waited < within:
        network.clock.advance(0.5)
        waited += 0.5
        network.settle()
    if not box:
        raise AssertionError(f"Deferred did not fire within {within} s of clock time")
    result = box[0]
    if hasattr(result, "raiseException"):
        result.raiseException()
    return result


class GrapeReactor(MemoryReactorClock):
    """A reactor for whole grapes with no socket and no real time: a ``MemoryReactorClock``
    (TCP listens are recorded, time is a Clock) whose UDP ports are on a :class:`FakeNetwork`
    and whose ``resolve`` is scripted: each call is recorded in ``resolutions`` as
    ``(name, Deferred)`` for the test to fire."""

    def __init__(self) -> None:
        super().__init__()
        self.network = FakeNetwork(self)  # type: ignore[arg-type]
        self.resolutions: list[tuple[str, Deferred[str]]] = []

    def listenUDP(
        self, port: int, protocol: DatagramProtocol, interface: str = "", maxPacketSize: int = 8192
    ) -> FakeUDPTransport:
        self.network.attach(protocol, port=port or None)
        return protocol.transport  # type: ignore[return-value]

    def resolve(self, name: str, timeout: Any = None) -> Deferred[str]:
        d: Deferred[str] = Deferred()
        self.resolutions.append((name, d))
        return d
