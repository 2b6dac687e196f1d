"""Bootstrap: resolve the bootstrap nodes' names, walk from them, and say how it went.

Bootstrap nodes may be given by host name: they are resolved (IPv4: the DHT is IPv4-only, as
Node's) before every bootstrap walk, so a name that did not resolve at start is tried again on
the next retry. Each bootstrap logs which bootstrap nodes answered, and a node alone although
bootstrap nodes were given warns and bootstraps again (:meth:`Bootstrap.check_alone`, run by
the grape's maintenance timer). Log lines: docs/deploying.rst, *What a grape logs*.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from twisted.internet.abstract import isIPAddress
from twisted.internet.defer import Deferred, DeferredList, fail, succeed
from twisted.logger import Logger
from twisted.python.failure import Failure

from grenache.dht.krpc import Address, Response
from grenache.dht.lookup import Walk
from grenache.dht.routing import KBucket, RoutingTable
from grenache.endpoints import join_host_port

if TYPE_CHECKING:
    from grenache.dht.node import DHTConfig, Resolve

#: The node's own log namespace (docs/deploying.rst, *What a grape logs*).
log = Logger(namespace="grenache.dht.node")


class Bootstrap:
    """The bootstrap part of :class:`~grenache.dht.node.DHTNode` (a mixin on its state)."""

    config: DHTConfig
    node_id: bytes
    routing: RoutingTable
    _running: bool
    _resolve: Resolve | None
    _bootstrap_given: list[Address]
    _bootstrap_addresses: dict[Address, Address]
    _bootstrap_waiters: list[Deferred[int]] | None

    if TYPE_CHECKING:

        def _walk(
            self,
            target: bytes,
            query: str,
            args: dict[str, Any],
            visit: Any = None,
            skip_down: bool = True,
        ) -> Walk: ...

    def bootstrap(self) -> Deferred[int]:
        """Resolve the bootstrap nodes' names, then walk ``find_node`` on our own id from them;
        fires (never fails) with the number of responders and logs the outcome.

        A call while a bootstrap is under way shares it.
        """
        waiter: Deferred[int] = Deferred()
        if self._bootstrap_waiters is not None:
            self._bootstrap_waiters.append(waiter)
            return waiter
        waiters = self._bootstrap_waiters = [waiter]

        def done(result: Any) -> None:
            self._bootstrap_waiters = None
            if isinstance(result, Failure):
                log.failure("bootstrap failed", result)
                result = 0
            for one in waiters:
                one.callback(result)

        self._resolve_bootstrap().addCallback(self._bootstrap_walk).addBoth(done)
        return waiter

    def _resolve_bootstrap(self) -> Deferred[None]:
        """Look up every bootstrap name again (addresses change); literals need no lookup."""
        names = [(h, p) for h, p in self._bootstrap_given if not isIPAddress(h)]
        if not names:
            return succeed(None)
        if self._resolve is None:
            for host, port in names:
                log.warn(
                    "bootstrap node {node} not resolved: no resolver",
                    node=join_host_port(host, port),
                )
            return succeed(None)
        resolve = self._resolve

        def one(host: str, port: int) -> Deferred[None]:
            try:
                d = resolve(host)
            except Exception:
                d = fail()

            def resolved(address: str) -> None:
                self._bootstrap_addresses[(host, port)] = (address, port)

            def failed(failure: Failure) -> None:
                self._bootstrap_addresses.pop((host, port), None)
                log.warn(
                    "bootstrap node {node} not resolved ({reason}); it is tried again on the "
                    "next bootstrap",
                    node=join_host_port(host, port),
                    reason=failure.getErrorMessage(),
                )

            return d.addCallbacks(resolved, failed)

        return DeferredList([one(h, p) for h, p in names]).addCallback(lambda _: None)

    def _bootstrap_walk(self, _: None) -> Deferred[int] | int:
        if not self._running:
            return 0
        addresses = self._bootstrap_addresses
        answered: set[Address] = set()

        def visit(response: Response) -> None:
            answered.add(response.addr)

        # Bootstrap nodes are asked even when down: this walk is how a lone grape finds them back.
        walk = self._walk(
            self.node_id, "find_node", {"target": self.node_id}, visit, skip_down=False
        )

        def finished(_: KBucket) -> int:
            if self._bootstrap_given:
                self._log_bootstrap(
                    [
                        (given, addresses[given])
                        for given in self._bootstrap_given
                        if addresses.get(given) in walk.queried
                    ],
                    answered,
                )
            return walk.responses

        return walk.run().addCallback(finished)

    def _log_bootstrap(
        self, queried: list[tuple[Address, Address]], answered: set[Address]
    ) -> None:
        """One line per bootstrap: which bootstrap nodes answered, which did not."""

        def name(given: Address, address: Address) -> str:
            text = join_host_port(*given)
            return text if given == address else f"{text} ({join_host_port(*address)})"

        good = [name(g, a) for g, a in queried if a in answered]
        bad = [name(g, a) for g, a in queried if a not in answered]
        if good:
            log.info(
                "bootstrap succeeded: {answered} answered{missing}; {neighbours} DHT neighbours",
                answered=", ".join(good),
                missing=f" (no answer from {', '.join(bad)})" if bad else "",
                neighbours=len(self.routing),
            )
        elif bad and len(self.routing):
            # Another node found us meanwhile (it bootstrapped from us): not alone.
            log.info(
                "bootstrap: no answer from {nodes}, but {neighbours} DHT neighbours known",
                nodes=", ".join(bad),
                neighbours=len(self.routing),
            )
        elif bad:
            log.warn("bootstrap failed: no answer from {nodes}", nodes=", ".join(bad))

    def check_alone(self) -> bool:
        """If bootstrap nodes were given but the node has no neighbour, warn and bootstrap again
        (names resolved anew). Returns whether a bootstrap was started. The grape runs this
        periodically; it never raises."""
        if not self._running or not self.config.bootstrap or len(self.routing) != 0:
            return False
        if self._bootstrap_waiters is not None:
            return False
        log.warn(
            "no DHT neighbours although bootstrap nodes were given ({nodes}): retrying bootstrap",
            nodes=", ".join(join_host_port(h, p) for h, p in self.config.bootstrap),
        )
        self.bootstrap()
        return True
