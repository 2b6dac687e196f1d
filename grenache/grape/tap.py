"""``twistd grape``: run a grape with the Node grape's flags and spellings.

With no flags it is a working standalone grape: DHT on UDP 20001, HTTP API on TCP 30001, the
documented defaults (peers expire after 120 s, 8 KiB API bodies), no bootstrap node. Times on
the command line are in milliseconds, as Node's. ``--aph`` and ``--apw`` take a port number (as
Node's) or a Twisted endpoint description (``tcp6:30001``,
``ssl:30001:privateKey=key.pem:certKey=cert.pem``); ``--bn`` takes host names and
``[ipv6]:port`` too. ``--metrics PORT`` (or an endpoint description) serves ``/metrics``
(Prometheus) and ``/health`` (docs/metrics.rst). docs/deploying.rst is the operator's page.

:func:`makeService` builds a :class:`~grenache.grape.service.TwistdGrape`, a ``MultiService``
whose children are the listening ports and the maintenance timer, as ``twisted.names``' tap
builds its server. A port that cannot be bound stops ``twistd`` with a one-line error and
status 1. A grape that serves no TLS and no WebSocket API never loads pyOpenSSL and
cryptography's TLS parts (:mod:`grenache.tls_free`): about 13 MiB less resident memory.
"""

from __future__ import annotations

import gc
from typing import TYPE_CHECKING, Any

from twisted.application.service import IService
from twisted.python import usage

# Only light modules here: twistd imports this module to parse the command line, and the
# command line decides whether Twisted's TLS stack is loaded at all (postOptions).
from grenache.dht.limits import DEFAULT_MAX_SOURCES, DEFAULT_QUERY_BURST, DEFAULT_QUERY_RATE
from grenache.dht.routing import MAX_CONTACTS_PER_IP
from grenache.tls_free import keep_tls_out

if TYPE_CHECKING:
    from grenache.grape.service import GrapeConfig


def _port(value: str) -> int:
    port = int(value)
    if not 0 <= port <= 65535:
        raise ValueError(f"{value} is not a port number (0-65535)")
    return port


def _listen_spec(value: str) -> int | str:
    """A port number (Node's spelling) or an endpoint description, checked by ``postOptions``
    (see :func:`grenache.endpoints.check_listen_spec`)."""
    text = value.strip()
    return _port(text) if text.isdigit() else text


def _non_negative(value: str) -> int:
    number = int(value)
    if number < 0:
        raise ValueError(f"{value} must not be negative")
    return number


def _positive(value: str) -> int:
    number = int(value)
    if number <= 0:
        raise ValueError(f"{value} must be positive")
    return number


def _rate(value: str) -> float:
    number = float(value)
    if not number >= 0 or number == float("inf"):
        raise ValueError(f"{value} must be a non-negative number")
    return number


class Options(usage.Options):
    """Flags of ``twistd grape``; each long flag also takes the Node grape's spelling."""

    synopsis = "[options]"
    longdesc = (
        "Run a Grenache grape: a DHT node (UDP) with an HTTP API for links, compatible with "
        "Node.js grenache-grape 1.0.0, and optionally a WebSocket API. Times are in ms."
    )
    examples = (
        "Examples:\n"
        "  twistd -n grape                        a standalone grape on 20001/30001\n"
        "  twistd -n grape --dp 20001 --aph 30001 --bn 127.0.0.1:20002\n"
        "  twistd -n --pidfile g2.pid grape --dp 20002 --aph 40001 --bn localhost:20001\n"
        "  twistd -n grape --aph ssl:30001:privateKey=key.pem:certKey=cert.pem\n"
        "  twistd -n grape --aph tcp6:30001 --apw 30002 -b ::1\n"
        "  twistd -n grape --metrics 9100          /metrics and /health on TCP 9100\n"
    )

    optParameters = [
        ["dp", None, 20001, "DHT UDP port (Node: --dht_port).", _port],
        [
            "aph",
            None,
            30001,
            "HTTP API: TCP port or endpoint description, e.g. tcp6:30001 (Node: --api_port).",
            _listen_spec,
        ],
        [
            "apw",
            None,
            None,
            "WebSocket API: TCP port or endpoint description (off unless given).",
            _listen_spec,
        ],
        [
            "bn",
            None,
            "",
            "Bootstrap nodes, comma-separated host:port; names resolved at start and on every "
            "retry (Node: --bootstrap).",
        ],
        [
            "bind",
            "b",
            None,
            "Address numeric API ports bind to and own announces are stored under (IPv6 too).",
        ],
        [
            "dpa",
            None,
            120000,
            "Announced-peer max age in ms; 0 = never expire (Node: --dht_peer_maxAge).",
            _non_negative,
        ],
        [
            "dnl",
            None,
            300000,
            "Ms without routing-table change before pinging every node (Node: --dht_nodeLiveness).",
            _positive,
        ],
        ["dht_maxTables", None, 5000, "Lookup token tables kept.", _positive],
        ["dht_maxValues", None, 5000, "BEP 44 values kept.", _positive],
        [
            "check_maxPayloadSize",
            None,
            8192,
            "API request body limit in bytes; 0 = no limit.",
            _non_negative,
        ],
        [
            "metrics",
            None,
            None,
            "Serve /metrics (Prometheus) and /health on this TCP port or endpoint description "
            "(off unless given).",
            _listen_spec,
        ],
        [
            "query-rate",
            None,
            DEFAULT_QUERY_RATE,
            "DHT queries per second from one public IP after the burst; 0 = no limit.",
            _rate,
        ],
        [
            "query-burst",
            None,
            DEFAULT_QUERY_BURST,
            "DHT queries one public IP may send at once.",
            _positive,
        ],
        [
            "max-sources",
            None,
            DEFAULT_MAX_SOURCES,
            "Source IPs the DHT query rate limit tracks.",
            _positive,
        ],
        [
            "max-contacts-per-ip",
            None,
            MAX_CONTACTS_PER_IP,
            "Routing-table contacts one public IP may hold.",
            _positive,
        ],
        ["dc", None, None, "Accepted for compatibility with Node; unused, as in Node."],
        ["cache_maxAge", None, None, "Accepted for compatibility with Node; unused, as in Node."],
    ]
    optFlags = [
        ["no-verify", None, "Refuse mutable BEP 44 puts (answer 400), as a stock Node grape does."],
    ]

    _aliases = {
        "dht_port": "dp",
        "api_port": "aph",
        "api_port_ws": "apw",
        "bootstrap": "bn",
        "dht_peer_maxAge": "dpa",
        "dht_nodeLiveness": "dnl",
        "dht_concurrency": "dc",
    }

    compData = usage.Completions(
        optActions={
            "bind": usage.CompleteHostnames(),
            "bn": usage.CompleteUserAtHost(descr="host:port,..."),
        }
    )

    def getUsage(self, width: int | None = None) -> str:
        """The usage text followed by the examples."""
        return super().getUsage(width) + "\n" + self.examples

    def postOptions(self) -> None:
        """Copy each Node spelling given into its short flag, keep Twisted's TLS stack out of a
        grape that serves no TLS (:func:`grenache.tls_free.keep_tls_out`), check the endpoint
        descriptions and parse ``--bn`` (usage errors naming the bad value)."""
        for alias, name in self._aliases.items():
            if self[alias] is not None:
                self[name] = self[alias]
        if self["apw"] is None:  # the WebSocket transport checks certificates with pyOpenSSL
            keep_tls_out([self["aph"], self["metrics"]])
        from grenache.endpoints import check_listen_spec
        from grenache.grape.service import parse_bootstrap  # after keep_tls_out: loads Twisted

        try:
            for name in ("aph", "apw", "metrics"):
                if isinstance(self[name], str):
                    self[name] = check_listen_spec(self[name])
            self["bootstrap_nodes"] = parse_bootstrap(self["bn"] or "")
        except ValueError as error:
            raise usage.UsageError(str(error)) from None

    def config(self) -> GrapeConfig:
        """The grape this command line describes (the Node spellings already copied into the
        short flags; millisecond times made seconds)."""
        from grenache.grape.service import GrapeConfig

        return GrapeConfig(
            dht_port=self["dp"],
            api_port=self["aph"],
            ws_port=self["apw"],
            host=self["bind"],
            bootstrap=self["bootstrap_nodes"],
            peer_max_age=self["dpa"] / 1000.0,
            node_liveness=self["dnl"] / 1000.0,
            max_tables=self["dht_maxTables"],
            max_values=self["dht_maxValues"],
            max_payload_size=self["check_maxPayloadSize"] or None,
            verify_mutable=not self["no-verify"],
            query_rate=self["query-rate"],
            query_burst=self["query-burst"],
            max_sources=self["max-sources"],
            max_contacts_per_ip=self["max-contacts-per-ip"],
        )


def _node_spellings(options: type[Options]) -> list[list[Any]]:
    """Node's long spellings, each its own parameter (so ``--help`` lists it), copied into the
    short one by ``postOptions``."""
    parameters: list[Any] = list(options.optParameters)
    coercers = {p[0]: (p[4] if len(p) > 4 else None) for p in parameters}
    return [
        [alias, None, None, f"Same as --{name}.", coercers[name]]
        for alias, name in options._aliases.items()
    ]


Options.optParameters = Options.optParameters + _node_spellings(Options)


def makeService(options: Options) -> IService:
    """Build the grape service; ``twistd`` binds its ports in ``privilegedStartService``."""
    from twisted.internet import reactor

    from grenache.grape.service import TwistdGrape, add_metrics
    from grenache.speedups import reactor_poll

    reactor_poll.install_under_twistd(options, reactor)

    twistd = options.parent
    daemon = twistd is not None and not twistd.get("nodaemon", True)
    try:
        grape = TwistdGrape(options.config(), reactor, exit_on_listen_error=not daemon)
    except ValueError as error:
        raise SystemExit(f"twistd grape: {error}") from None
    if options["metrics"] is not None:
        add_metrics(grape, options["metrics"])
    # Keep the startup heap (~55k objects: modules, classes) out of full collections, which
    # otherwise walk it all (20-25 ms pauses under load; bench/README.md, Grape). Process-wide,
    # so it is done here at the entry point and not by the library.
    gc.collect()
    gc.freeze()
    return grape  # type: ignore[return-value]
