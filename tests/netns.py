"""Private networks of Linux network namespaces for fault tests: hosts on two bridged sides
that can be split apart and joined again.

::

    lab = Lab(sides={"a": 2, "b": 2})
    lab.create()                  # namespaces, bridges, veth pairs, 10.231.x addresses
    ... run processes with prefix=host.exec_prefix ...
    lab.split()                   # side a and side b no longer reach each other
    lab.join()
    lab.delete()                  # always (in a cleanup): removes every namespace it made

Layout: a *hub* namespace holds one bridge per side, joined by a veth pair (the *trunk*);
each host is a namespace whose ``eth0`` is a veth whose other end is a port of its side's
bridge. :meth:`Lab.split` takes the trunk down, :meth:`Lab.join` brings it up again. Nothing
is created in the caller's namespace, so the test traffic never leaves the lab.

Needs root (``CAP_NET_ADMIN`` and ``CAP_SYS_ADMIN``) and iproute2's ``ip``;
:func:`unavailable_reason` says why a lab cannot be made here (for a skip message).
"""

from __future__ import annotations

import itertools
import os
import shutil
import subprocess
import sys
from collections.abc import Sequence

__all__ = ["Host", "Lab", "LabError", "unavailable_reason"]

#: The first three octets of lab addresses: a private range (RFC 1918) unlikely to be in use.
SUBNET = "10.231.0"

_counter = itertools.count()
_probe_result: list[str | None] = []


class LabError(Exception):
    """An ``ip`` command failed; the message has the command and its stderr."""


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    command = ["ip", *args]
    done = subprocess.run(command, capture_output=True, text=True, timeout=30, check=False)
    if check and done.returncode != 0:
        raise LabError(f"{' '.join(command)}: {done.stderr.strip() or done.returncode}")
    return done


def unavailable_reason() -> str | None:
    """Why a :class:`Lab` cannot be made on this machine, or ``None`` when it can (probed
    once: a namespace, a bridge and a veth pair are made and deleted)."""
    if _probe_result:
        return _probe_result[0]
    reason: str | None = None
    if not hasattr(os, "geteuid") or os.geteuid() != 0:
        reason = "needs root (ip netns add)"
    elif shutil.which("ip") is None:
        reason = "the ip command (iproute2) is not installed"
    else:
        name = f"gnprobe{os.getpid()}"
        try:
            _ip("netns", "add", name)
            try:
                _ip("-n", name, "link", "add", "br0", "type", "bridge")
                _ip("-n", name, "link", "add", "v0", "type", "veth", "peer", "name", "v1")
            finally:
                _ip("netns", "del", name, check=False)
        except (LabError, OSError, subprocess.TimeoutExpired) as error:
            reason = f"network namespaces, bridges or veth pairs unsupported here ({error})"
    _probe_result.append(reason)
    return reason


class Host:
    """One namespace of a lab: ``address`` on its ``eth0``, on side ``side``."""

    def __init__(self, lab_tag: str, name: str, side: str, address: str) -> None:
        self.name = name
        self.side = side
        self.address = address
        self.namespace = f"{lab_tag}-{name}"

    @property
    def exec_prefix(self) -> tuple[str, ...]:
        """Prepend to a command line to run it in this host's namespace."""
        return ("ip", "netns", "exec", self.namespace)

    def __repr__(self) -> str:
        return f"Host({self.name!r}, side={self.side!r}, address={self.address!r})"


class Lab:
    """Hosts in network namespaces on bridged sides (see the module docstring).

    ``sides`` maps a side's name (one letter or two: it names interfaces) to its number of
    hosts. Hosts are named ``<side><index>`` and numbered from ``SUBNET.10`` up.
    """

    def __init__(self, sides: dict[str, int]) -> None:
        if not sides or any(n < 1 for n in sides.values()):
            raise ValueError("every side needs at least one host")
        self.tag = f"gn{os.getpid() % 100000}x{next(_counter)}"
        self.hub = f"{self.tag}-hub"
        self.sides = list(sides)
        self.hosts: list[Host] = []
        number = 10
        for side, count in sides.items():
            for index in range(count):
                host = Host(self.tag, f"{side}{index}", side, f"{SUBNET}.{number}")
                self.hosts.append(host)
                number += 1
        self._namespaces: list[str] = []

    def side(self, name: str) -> list[Host]:
        """The hosts of side ``name``."""
        return [h for h in self.hosts if h.side == name]

    def _add_namespace(self, name: str) -> None:
        _ip("netns", "add", name)
        self._namespaces.append(name)
        _ip("-n", name, "link", "set", "lo", "up")

    def create(self) -> None:
        """Make the namespaces, bridges, veth pairs and addresses (undone by :meth:`delete`,
        even half made)."""
        self._add_namespace(self.hub)
        for side in self.sides:
            _ip("-n", self.hub, "link", "add", f"br{side}", "type", "bridge")
            _ip("-n", self.hub, "link", "set", f"br{side}", "up")
        first, *others = self.sides
        for side in others:  # a trunk from the first side's bridge to each other one
            a, b = self._trunk(side)
            _ip("-n", self.hub, "link", "add", a, "type", "veth", "peer", "name", b)
            _ip("-n", self.hub, "link", "set", a, "master", f"br{first}", "up")
            _ip("-n", self.hub, "link", "set", b, "master", f"br{side}", "up")
        for index, host in enumerate(self.hosts):
            self._add_namespace(host.namespace)
            port = f"p{index}"
            _ip(
                "-n", self.hub, "link", "add", port, "type", "veth",
                "peer", "name", "eth0", "netns", host.namespace,
            )  # fmt: skip
            _ip("-n", self.hub, "link", "set", port, "master", f"br{host.side}", "up")
            _ip("-n", host.namespace, "addr", "add", f"{host.address}/24", "dev", "eth0")
            _ip("-n", host.namespace, "link", "set", "eth0", "up")

    def _trunk(self, side: str) -> tuple[str, str]:
        return f"t{self.sides[0]}{side}", f"t{side}{self.sides[0]}"

    def _set_trunks(self, state: str, sides: Sequence[str]) -> None:
        for side in sides:
            for end in self._trunk(side):
                _ip("-n", self.hub, "link", "set", end, state)

    def split(self) -> None:
        """Cut every other side off the first one (their trunks go down)."""
        self._set_trunks("down", self.sides[1:])

    def join(self) -> None:
        """Join the sides again (their trunks come up)."""
        self._set_trunks("up", self.sides[1:])

    def reachable(self, source: Host, target: Host) -> bool:
        """Whether ``source`` reaches ``target``: a TCP connection to a closed port there is
        refused (reachable) rather than unanswered (not), within 1 s."""
        probe = (
            "import socket,sys\n"
            "try:\n"
            f"    socket.create_connection(({target.address!r}, 9), timeout=1)\n"
            "except ConnectionRefusedError:\n"
            "    sys.exit(0)\n"
            "except OSError:\n"
            "    sys.exit(1)\n"
        )
        done = subprocess.run(
            [*source.exec_prefix, sys.executable, "-c", probe],
            capture_output=True,
            timeout=30,
            check=False,
        )
        return done.returncode == 0

    def delete(self) -> None:
        """Delete every namespace this lab made (their interfaces go with them)."""
        namespaces, self._namespaces = self._namespaces, []
        for name in reversed(namespaces):
            _ip("netns", "del", name, check=False)
