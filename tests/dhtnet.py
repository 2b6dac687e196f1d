"""An in-memory UDP network for deterministic DHT tests.

Datagrams between attached protocols are delivered through the test's ``Clock`` (a zero-delay
call each), so a whole DHT runs with no socket and no real time: ``settle()`` delivers until
nothing is left at the current instant, ``clock.advance(3)`` lets KRPC timeouts fire.
:class:`GrapeReactor` runs whole grapes (UDP on the fake network, TCP recorded, a scripted
resolver).
"""

from __future__ import annotations

from typing import Any

from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred
from twisted.internet.protocol import DatagramProtocol
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock


class FakeUDPTransport:
    """What a ``DatagramProtocol`` needs of a UDP port, writing into a :class:`FakeNetwork`."""

    def __init__(self, network: FakeNetwork, host: str, port: int) -> None:
        self.network = network
        self.host = host
        self.port = port
        self.closed = False

    def write(self, data: bytes, addr: tuple[str, int]) -> None:
        if not self.closed:
            self.network.send((self.host, self.port), addr, data)

    def getHost(self) -> IPv4Address:
        return IPv4Address("UDP", self.host, self.port)

    def stopListening(self) -> None:
        self.closed = True

    def loseConnection(self) -> None:
        self.closed = True


class FakeNetwork:
    """Addresses to protocols; every datagram is a zero-delay call on ``clock``."""

    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self.protocols: dict[tuple[str, int], DatagramProtocol] = {}
        self.sent: list[tuple[tuple[str, int], tuple[str, int], bytes]] = []
        self._next_port = 20001

    def attach(
        self, protocol: DatagramProtocol, host: str = "127.0.0.1", port: int | None = None
    ) -> int:
        if port is None:
            port = self._next_port
            self._next_port += 1
        transport = FakeUDPTransport(self, host, port)
        self.protocols[(host, port)] = protocol
        protocol.makeConnection(transport)  # type: ignore[arg-type]
        return port

    def detach(self, addr: tuple[str, int]) -> None:
        """The node at ``addr`` vanishes: datagrams to it are lost from now on."""
        protocol = self.protocols.pop(addr, None)
        if protocol is not None and protocol.transport is not None:
            protocol.transport.closed = True  # type: ignore[attr-defined]

    def send(self, source: tuple[str, int], dest: tuple[str, int], data: bytes) -> None:
        self.sent.append((source, dest, data))
        self.clock.callLater(0, self._deliver, source, dest, data)

    def _deliver(self, source: tuple[str, int], dest: tuple[str, int], data: bytes) -> None:
        protocol = self.protocols.get(dest)
        if protocol is not None:
            protocol.datagramReceived(data, source)

    def settle(self, limit: int = 100000) -> None:
        """Deliver datagrams until nothing is due at the current clock time."""
        for _ in range(limit):
            now = self.clock.seconds()
            if not any(call.getTime() <= now for call in self.clock.getDelayedCalls()):
                return
            self.clock.advance(0)
        raise AssertionError("the fake network did not settle")

    def run(self, seconds: float, step: float = 0.5) -> None:
        """Let ``seconds`` of clock time pass, settling after each step."""
        self.settle()
        elapsed = 0.0
        while elapsed < seconds:
            self.clock.advance(step)
            elapsed += step
            self.settle()


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
