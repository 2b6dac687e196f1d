"""An in-memory UDP network: DHT nodes exchange datagrams through a ``Clock``, no socket.

Each datagram is a zero-delay call on the clock, so a whole DHT runs with no socket and no real
time: :meth:`MemoryUDPNetwork.settle` delivers until nothing is left at the current instant,
``clock.advance(2)`` lets KRPC timeouts fire and :meth:`MemoryUDPNetwork.run` lets minutes pass
in small steps (periodic timers keep their rhythm).
"""

from __future__ import annotations

from typing import Any

from twisted.internet.address import IPv4Address
from twisted.internet.error import CannotListenError
from twisted.internet.protocol import DatagramProtocol
from twisted.internet.task import Clock

__all__ = ["Datagram", "MemoryUDPNetwork", "MemoryUDPPort", "UDPAddress"]

UDPAddress = tuple[str, int]
"""``(host, port)``, as a ``DatagramProtocol`` sees addresses."""

Datagram = tuple[UDPAddress, UDPAddress, bytes]
"""``(source, destination, data)`` of one datagram sent."""


class MemoryUDPPort:
    """What a ``DatagramProtocol`` needs of a UDP port, writing into a
    :class:`MemoryUDPNetwork`."""

    def __init__(self, network: MemoryUDPNetwork, protocol: DatagramProtocol, host: str, port: int):
        self.network = network
        self.protocol = protocol
        self.host = host
        self.port = port
        self.closed = False

    def write(self, data: bytes, addr: UDPAddress) -> None:
        """Send ``data`` to ``addr`` (lost if this port is closed or nobody is there)."""
        if not self.closed:
            self.network.send((self.host, self.port), addr, data)

    def getHost(self) -> IPv4Address:
        """The address this port is bound to on the in-memory network."""
        return IPv4Address("UDP", self.host, self.port)

    def stopListening(self) -> None:
        """Close the port as a reactor's port closes: the protocol's ``stopProtocol`` runs."""
        if self.closed:
            return
        self.network.detach((self.host, self.port))
        self.protocol.doStop()

    def loseConnection(self) -> None:
        """The same as :meth:`stopListening` (UDP ports offer both)."""
        self.stopListening()


class MemoryUDPNetwork:
    """Addresses to protocols; every datagram is a zero-delay call on ``clock``.

    ``sent`` records every datagram written (delivered or not), for tests that count or
    inspect traffic.
    """

    def __init__(self, clock: Clock, *, first_port: int = 20001) -> None:
        self.clock = clock
        self.protocols: dict[UDPAddress, DatagramProtocol] = {}
        self.sent: list[Datagram] = []
        self._next_port = first_port

    def attach(
        self, protocol: DatagramProtocol, host: str = "127.0.0.1", port: int | None = None
    ) -> int:
        """Listen with ``protocol`` at ``host``:``port`` (a free port when None or 0); returns
        the port. The protocol gets a :class:`MemoryUDPPort` as its transport."""
        if not port:
            port = self.free_port(host)
        elif (host, port) in self.protocols:
            raise CannotListenError(host, port, OSError(f"UDP {host}:{port} is in use"))
        self.protocols[(host, port)] = protocol
        protocol.makeConnection(MemoryUDPPort(self, protocol, host, port))  # type: ignore[arg-type]
        return port

    def free_port(self, host: str = "127.0.0.1") -> int:
        """A port nobody listens on at ``host`` (the next one from ``first_port`` up); it
        is not handed out again by this method."""
        while (host, self._next_port) in self.protocols:
            self._next_port += 1
        port = self._next_port
        self._next_port += 1
        return port

    def detach(self, addr: UDPAddress) -> None:
        """The node at ``addr`` vanishes: datagrams to and from it are lost from now on (its
        protocol is not told; :meth:`MemoryUDPPort.stopListening` tells it)."""
        protocol = self.protocols.pop(addr, None)
        if protocol is not None and isinstance(protocol.transport, MemoryUDPPort):
            protocol.transport.closed = True

    def send(self, source: UDPAddress, dest: UDPAddress, data: bytes) -> None:
        """Deliver ``data`` to ``dest`` at the clock's next turn (``clock.advance(0)``)."""
        self.sent.append((source, dest, data))
        self.clock.callLater(0, self._deliver, source, dest, data)

    def _deliver(self, source: UDPAddress, dest: UDPAddress, data: bytes) -> None:
        protocol = self.protocols.get(dest)
        if protocol is not None:
            protocol.datagramReceived(data, source)

    def settle(self, limit: int = 100000) -> None:
        """Run what is due at the current clock time (datagrams, replies to them...) until
        nothing is left; AssertionError after ``limit`` rounds (a datagram storm)."""
        clock: Any = self.clock
        for _ in range(limit):
            now = clock.seconds()
            if not any(call.getTime() <= now for call in clock.getDelayedCalls()):
                return
            clock.advance(0)
        raise AssertionError("the in-memory network did not settle")

    def run(self, seconds: float, step: float = 0.5) -> None:
        """Let ``seconds`` of clock time pass in steps of ``step``, settling after each."""
        self.settle()
        elapsed = 0.0
        while elapsed < seconds:
            advance = min(step, seconds - elapsed)
            self.clock.advance(advance)
            elapsed += advance
            self.settle()
