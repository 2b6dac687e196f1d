"""The ``proxy`` verb: run a transport proxy, exactly as ``twistd grenache-proxy`` does."""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred
from twisted.python import usage

from grenache.cli.options import GnuOptions
from grenache.cli.session import Session, emit
from grenache.logs import FORMATS, begin_logging
from grenache.proxy import ProxyService
from grenache.proxy_tap import Options as ProxyTapOptions

__all__ = ["ProxyOptions", "proxy"]


def _log_format(name: str) -> str:
    if name not in FORMATS:
        raise ValueError(f"unknown log format {name!r} (one of {', '.join(FORMATS)})")
    return name


class ProxyOptions(GnuOptions, ProxyTapOptions):
    """``grenache proxy``: the options of ``twistd grenache-proxy``, names as arguments."""

    synopsis = "[NAME...] --from TRANSPORT [--to TRANSPORT] [--as KEY] [--pubsub] [options]"
    longdesc = (
        "Run a transport proxy, exactly as twistd -n grenache-proxy does. With NAME (static "
        "mode): serve the key FROM:NAME (or --as KEY) over --from and forward each request "
        "to NAME's services over --to; replies and errors come back as the services sent "
        "them. Without NAME (control mode, compatible with grenache-nodejs-proxy): announce "
        'rpc_proxy; a request to it with payload "ws:NAME" (or "http:NAME") starts serving '
        "that key at the proxy's port, forwarded to NAME over that transport, and "
        '"stop ws:NAME" stops it. With --pubsub and one NAME: subscribe to NAME over --to '
        "and publish each message over --from as FROM:NAME. Prints one JSON line once "
        "listening and announced; logs go to stderr."
    )
    examples = (
        "Examples:\n"
        "  grenache proxy fibonacci_worker --from ws --to http --port 1340\n"
        '  => {"mode":"static","keys":["ws:fibonacci_worker"],"port":1340,...}\n'
        "  grenache proxy --from http --port 1341                          (control mode)\n"
        '  grenache request rpc_proxy \'"ws:coffee"\'   => "Started proxying ws:coffee"\n'
        "  grenache request ws:coffee '\"Hello\"'       (answered by coffee, over WebSocket)\n"
        "  grenache proxy ticker --pubsub --from ws --to ws --port 1342\n"
    )

    optParameters: list[list[Any]] = [
        [
            "log-format",
            None,
            "text",
            "Logs on stderr as text or json (one JSON object per line, with the event's fields).",
            _log_format,
        ],
    ]

    def getUsage(self, width: int | None = None) -> str:
        """The usage text followed by this verb's examples (not ``twistd grenache-proxy``'s)."""
        return usage.Options.getUsage(self, width) + "\n" + self.examples

    def parseArgs(self, *names: str) -> None:
        """Each argument is a name to proxy, as ``--name`` gives one."""
        self["names"].extend(names)


async def proxy(session: Session) -> None:
    """Run the proxy until interrupted, after printing one JSON line."""
    options = session.options
    config = options.config()
    service = ProxyService(config, session.reactor)
    port = await service.listen()
    begin_logging(options["log-format"])
    service.startService()
    assert service.started is not None
    announced = await service.started
    session.reactor.addSystemEventTrigger("before", "shutdown", service.stopService)
    ready: dict[str, Any] = {
        "mode": config.mode,
        "keys": list(announced or {}),
        "port": port,
        "from": config.from_transport,
        "to": config.to_transport,
        "grape": config.grape,
        "announced": announced,
    }
    if service.metrics_port is not None:
        ready["metrics"] = service.metrics_port
    emit(ready)
    await Deferred()  # until SIGINT or SIGTERM stops the reactor
