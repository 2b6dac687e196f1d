"""``twistd grenache-proxy``: run a transport proxy (the options of ``grenache proxy``).

::

    twistd -n grenache-proxy --name fibonacci_worker --from ws --to http --port 1340

serves ``ws:fibonacci_worker`` over WebSocket on port 1340 and forwards each request to the
``fibonacci_worker`` services over HTTP. Without ``--name``, the proxy speaks
grenache-nodejs-proxy's control protocol under ``rpc_proxy``::

    twistd -n grenache-proxy --from http --port 1340

and with ``--pubsub`` it relays one name's messages from one pub/sub transport to another.
``grenache proxy NAME ...`` runs the same :class:`~grenache.proxy.service.ProxyService` with
the same options; docs/proxy.rst describes all three modes.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from twisted.application.service import IService
from twisted.python import usage

from grenache.announced_service import AnnouncedServiceOptions, positive_number, twistd_service
from grenache.curve_options import CurveServerOptions, curve_client
from grenache.link import DEFAULT_GRAPE
from grenache.proxy import DEFAULT_MAX_KEYS, ProxyConfig, ProxyError, ProxyService
from grenache.tls_options import ServerTLSOptions, TLSFlagError, client_tls
from grenache.transports import UnknownTransport, transport_names

__all__ = ["ForwardSecurityOptions", "Options", "makeService"]


def _positive_int(value: str) -> int:
    number = int(value)
    if number < 1:
        raise ValueError(f"{value} must be an integer of at least 1")
    return number


class ForwardSecurityOptions(usage.Options):
    """The forwarding side's security flags (the proxy as a client of the services): TLS
    for http and ws (``--to-tls-ca``, ``--to-tls-cert``, ``--to-tls-key``,
    ``--to-tls-insecure``) and CURVE for zmq (``--to-curve-server-key``, ``--to-curve-key``).
    :meth:`read_to_security` reads them into ``self["to-security"]``, what each target
    transport's client gets as ``tls``."""

    optParameters: list[list[Any]] = [
        ["to-tls-ca", None, None, "PEM CA bundle the services' certificates must lead to."],
        ["to-tls-cert", None, None, "PEM client certificate to present to the services."],
        ["to-tls-key", None, None, "PEM private key of --to-tls-cert."],
        [
            "to-curve-server-key",
            None,
            None,
            "zmq services: their CURVE public key (Z85): encrypt and check them.",
        ],
        [
            "to-curve-key",
            None,
            None,
            "zmq services: the proxy's CURVE key file (for services with --curve-clients).",
        ],
    ]
    optFlags: list[list[Any]] = [
        ["to-tls-insecure", None, "Reach the services over TLS without checking them."],
    ]

    def read_to_security(self, targets: Sequence[str]) -> None:
        """Read the flags' files for the ``targets`` transports; a usage error naming the
        flag when one is wrong or does not apply to any target."""
        tls_flags = [
            f"--{flag}"
            for flag in ("to-tls-ca", "to-tls-cert", "to-tls-key", "to-tls-insecure")
            if self.get(flag)
        ]
        curve_flags = [
            f"--{flag}" for flag in ("to-curve-server-key", "to-curve-key") if self.get(flag)
        ]
        if tls_flags and all(target == "zmq" for target in targets):
            raise usage.UsageError(
                f"{', '.join(tls_flags)}: the zmq transport has no TLS; it is secured with "
                "CURVE (--to-curve-server-key, --to-curve-key)"
            )
        if curve_flags and "zmq" not in targets:
            raise usage.UsageError(f"{', '.join(curve_flags)}: CURVE needs --to zmq")
        try:
            tls = client_tls(
                self["to-tls-ca"],
                self["to-tls-cert"],
                self["to-tls-key"],
                bool(self["to-tls-insecure"]),
            )
        except TLSFlagError as error:
            # client_tls names the flags without their "to-" prefix.
            raise usage.UsageError(str(error).replace("--tls-", "--to-tls-")) from None
        security: dict[str, Any] = dict.fromkeys(targets, tls)
        if "zmq" in targets:
            try:
                security["zmq"] = curve_client(self["to-curve-server-key"], self["to-curve-key"])
            except usage.UsageError as error:
                raise usage.UsageError(str(error).replace("--curve-", "--to-curve-")) from None
        self["to-security"] = security


class Options(
    ServerTLSOptions, CurveServerOptions, ForwardSecurityOptions, AnnouncedServiceOptions
):
    """Options of ``twistd grenache-proxy`` (and of ``grenache proxy``)."""

    synopsis = "--from TRANSPORT [--name NAME --to TRANSPORT [--as KEY] [--pubsub]] [options]"
    longdesc = (
        "Run a Grenache transport proxy. With --name NAME (static mode), serve the key "
        "FROM:NAME (or --as KEY) over the --from transport and forward each request to "
        "NAME's services over the --to transport, carrying their replies and errors back "
        "unchanged. Without --name (control mode, grenache-nodejs-proxy's protocol), announce "
        "rpc_proxy: a request to it with payload 'ws:NAME' starts serving the key ws:NAME, "
        "forwarded to NAME over WebSocket ('http:NAME': over HTTP), and 'stop ws:NAME' stops "
        "it. With --pubsub, subscribe to NAME's publishers over --to and publish every message "
        "over --from as FROM:NAME. --tls-* flags serve over TLS (--curve-* with --from zmq); "
        "--to-tls-* flags reach the services over TLS (--to-curve-* over zmq with CURVE)."
    )
    examples = (
        "Examples:\n"
        "  twistd -n grenache-proxy --name fibonacci_worker --from ws --to http --port 1340\n"
        "  twistd -n grenache-proxy --from http --port 1341              (control mode)\n"
        "  twistd -n grenache-proxy --name ticker --pubsub --from ws --to ws --port 1342\n"
        "  twistd -n grenache-proxy --name svc --from http --to ws --as svc_http --metrics 9100\n"
    )

    optParameters: list[list[Any]] = [
        [
            "from",
            None,
            None,
            f"Transport the proxy serves on, its callers' ({' or '.join(transport_names())}).",
        ],
        [
            "to",
            None,
            None,
            "Transport the proxied service speaks (static and pub/sub modes).",
        ],
        ["as", None, None, "Key to announce instead of FROM:NAME (one NAME), or of rpc_proxy."],
        [
            "listen",
            "l",
            None,
            "Endpoint description to listen on instead of --port, e.g. tcp6:0.",
        ],
        ["grape", "g", DEFAULT_GRAPE, "URL of the grape's API to look up and announce through."],
        [
            "timeout",
            None,
            10.0,
            "Seconds each forwarded request may take (per attempt).",
            positive_number,
        ],
        [
            "retry",
            None,
            1,
            "Attempts per forwarded request (each to a server chosen afresh).",
            _positive_int,
        ],
        [
            "max-keys",
            None,
            DEFAULT_MAX_KEYS,
            "Most keys proxied at once; a control request past it is answered with an error.",
            _positive_int,
        ],
    ]
    optFlags: list[list[Any]] = [
        ["pubsub", None, "Relay NAME's published messages instead of its requests."],
    ]

    compData = usage.Completions(
        optActions={
            "from": usage.CompleteList(transport_names()),
            "to": usage.CompleteList(transport_names()),
            "grape": usage.CompleteList([DEFAULT_GRAPE], descr="grape URL"),
            "bind": usage.CompleteHostnames(),
            "name": usage.Completer(descr="service name", repeat=True),
        }
    )

    def opt_name(self, name: str) -> None:
        """Service name to proxy (may be given more than once; none: control mode)."""
        self["names"].append(name)

    def postOptions(self) -> None:
        """Check the whole command line now (transports, where to listen, both sides'
        security, the mode :class:`~grenache.proxy.ProxyConfig` makes of it), so that a
        mistake is a usage error before anything listens."""
        if not self["from"]:
            raise usage.UsageError(
                f"give --from TRANSPORT, the transport the proxy serves on "
                f"({' or '.join(transport_names())})"
            )
        self.check_where()
        self.check_transport(self["from"])
        self.read_security(self["from"])
        targets = [self["to"]] if self["to"] else transport_names()
        self.read_to_security([t for t in targets if t in transport_names()])
        try:
            self.config().check()
        except ProxyError as error:
            raise usage.UsageError(str(error)) from None

    def config(self) -> ProxyConfig:
        """The proxy this command line describes."""
        return ProxyConfig(
            from_transport=self["from"],
            names=tuple(self["names"]),
            to_transport=self["to"],
            key=self["as"],
            pubsub=bool(self["pubsub"]),
            port=self["port"] or 0,
            listen=self["listen"],
            interface=self["bind"],
            grape=self["grape"],
            announce_interval=self["announce-interval"],
            tls=self.get("tls"),
            to_security=self.get("to-security") or {},
            timeout=self["timeout"],
            retry=self["retry"],
            max_keys=self["max-keys"],
            metrics=self["metrics"],
        )


def makeService(options: Options) -> IService:
    """Build the proxy and bind its port now, so that a taken port is a one-line error
    before twistd daemonizes."""
    from twisted.internet import reactor

    from grenache.speedups import reactor_poll

    reactor_poll.install_under_twistd(options, reactor)
    return twistd_service(
        "grenache-proxy",
        lambda: ProxyService(options.config(), reactor),
        (ProxyError, UnknownTransport),
    )
