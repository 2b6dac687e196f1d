"""The ``grenache`` console script: the verb table, the top-level options, and running one
verb on the reactor (a failure is one line on stderr and exit status 1, a bad command line
exit status 2)."""

from __future__ import annotations

import getopt
import sys
from collections.abc import Callable, Sequence
from typing import Any, NoReturn

from twisted.internet.defer import ensureDeferred
from twisted.python import usage

from grenache.announced_service import ListenError
from grenache.cli import grape_verbs, proxy_verbs, pubsub_verbs, rpc_verbs
from grenache.cli.options import PROG, GnuOptions, option_error
from grenache.cli.session import CommandError, Reported, Session, one_line
from grenache.handlers import HandlerError
from grenache.transports import UnknownTransport

__all__ = ["ACTIONS", "VERBS", "Options", "main", "run"]

VERBS: list[tuple[str, type[usage.Options], str]] = [
    ("lookup", grape_verbs.LookupOptions, "Print the peers announced as each NAME."),
    ("announce", grape_verbs.AnnounceOptions, "Announce NAME at PORT (or stdin's lines) once."),
    ("put", grape_verbs.PutOptions, "Store a value in the DHT (mutable with --key)."),
    ("get", grape_verbs.GetOptions, "Print the item stored under HASH."),
    ("keygen", grape_verbs.KeygenOptions, "Write an ed25519 key file for mutable puts."),
    ("request", rpc_verbs.RequestOptions, "Send a JSON request to one peer of NAME."),
    ("map", rpc_verbs.MapOptions, "Send a JSON request to every peer of NAME."),
    ("serve", rpc_verbs.ServeOptions, "Run a handler as an announced service."),
    ("pub", pubsub_verbs.PubOptions, "Publish each line of stdin as NAME."),
    ("sub", pubsub_verbs.SubOptions, "Print each message published as NAME."),
    ("proxy", proxy_verbs.ProxyOptions, "Serve services on one transport through another."),
]
"""Each verb: its name, its options class, its one-line description."""

ACTIONS: dict[str, Callable[[Session], Any]] = {
    "lookup": grape_verbs.lookup,
    "announce": grape_verbs.announce,
    "put": grape_verbs.put,
    "get": grape_verbs.get,
    "keygen": grape_verbs.keygen,
    "request": rpc_verbs.request,
    "map": rpc_verbs.map_,
    "serve": rpc_verbs.serve,
    "pub": pubsub_verbs.pub,
    "sub": pubsub_verbs.sub,
    "proxy": proxy_verbs.proxy,
}
"""Each verb's coroutine, run with the verb's :class:`~grenache.cli.session.Session`."""


class Options(usage.Options):
    """The ``grenache`` command line: a verb and its options."""

    longdesc = (
        "Talk to a Grenache network: look services up, announce them, store and fetch DHT "
        "values, call services, run a handler as a service, publish and subscribe, proxy between "
        "transports. Output is "
        "JSON on stdout; errors are one line on stderr with exit status 1 (2 for a bad "
        "command line)."
    )
    examples = (
        "Examples:\n"
        "  grenache lookup fibonacci_worker --grape http://127.0.0.1:30001\n"
        "  grenache request fibonacci_worker '{\"length\": 10}' --timeout 5\n"
        "  grenache get $(grenache put 'hello world' | jq -r .)\n"
        "As grenache-cli (-g HOST -p PORT name the grape; lines NAME,PORT on stdin):\n"
        "  grenache announce -g 127.0.0.1 -p 30001 < services.txt\n"
        '  curl -d \'["1","fibonacci_worker",{"length":3}]\' '
        "http://$(grenache lookup -r fibonacci_worker)/\n"
        "  grenache put -m -s config 'config v2'     (signed with ~/.grenache/key.json or "
        "~/.grenache-cli/key)\n"
        "  grenache get -s config -i 03ebddfbef4d04f0ba8d7927a2ca8fed62f12ee2\n"
        "Run grenache VERB --help for a verb's options.\n"
    )
    subCommands = [(name, None, options, doc) for name, options, doc in VERBS]

    opt_version = GnuOptions.opt_version

    def parseOptions(self, options: Sequence[str] | None = None) -> None:
        """Parse the command line; an unknown option before the verb is a usage error naming
        it, as the verbs report theirs."""
        argv = list(sys.argv[1:] if options is None else options)
        # Options before the verb: name an unknown one as the verbs do.
        try:
            getopt.getopt(argv, self.shortOpt, self.longOpt)
        except getopt.GetoptError as error:
            raise option_error(error) from None
        super().parseOptions(argv)

    def getSynopsis(self) -> str:
        """``Usage: grenache VERB ...``, or only ``Usage: grenache`` before a verb's synopsis."""
        if getattr(self, "subCommand", None):
            return f"Usage: {PROG}"
        return f"Usage: {PROG} VERB [options] [arguments]"

    def getUsage(self, width: int | None = None) -> str:
        """The usage text followed by the examples, unless it is a verb's (which has its own)."""
        text = super().getUsage(width)
        if hasattr(self, "subOptions"):
            return text
        return text + "\n" + self.examples

    def postOptions(self) -> None:
        """A usage error listing the verbs when none was given."""
        if getattr(self, "subCommand", None) is None:
            raise usage.UsageError(f"no verb given (one of {', '.join(n for n, _, _ in VERBS)})")


async def run(reactor: Any, options: Options) -> None:
    """Run the parsed command on ``reactor``; a failure is one line on stderr and
    ``SystemExit(1)``."""
    verb = options.subCommand
    assert verb is not None
    session = Session(verb, options.subOptions, reactor)
    try:
        await ACTIONS[verb](session)
    except (SystemExit, KeyboardInterrupt):
        raise
    except Reported:
        await session.close()
        raise SystemExit(1) from None
    except Exception as error:
        message = one_line(session.describe(_unwrap(error)))
        sys.stderr.write(f"{PROG} {verb}: {message}\n")
        sys.stderr.flush()
        await session.close()
        raise SystemExit(1) from None
    await session.close()


def _unwrap(error: BaseException) -> BaseException:
    if isinstance(error, HandlerError | ListenError | UnknownTransport):
        return CommandError(str(error))
    return error


def _install_reactor(options: Options) -> None:
    """Install the reactor ``grenache serve --reactor`` names, before anything imports the
    global one (as ``twistd -r`` does)."""
    name = options.subOptions.get("reactor") if options.subCommand == "serve" else None
    if name:
        from twisted.application.reactors import installReactor

        installReactor(name)


def main(argv: Sequence[str] | None = None) -> NoReturn:
    """The ``grenache`` console script."""
    options = Options()
    try:
        options.parseOptions(sys.argv[1:] if argv is None else list(argv))
    except usage.UsageError as error:
        verb = getattr(options, "subCommand", None)
        prog = f"{PROG} {verb}" if verb else PROG
        sys.stderr.write(f"{prog}: {one_line(str(error))} (see {prog} --help)\n")
        sys.exit(2)
    _install_reactor(options)
    from twisted.internet.task import react

    react(_session, (options,))
    raise AssertionError("react() returned")  # pragma: no cover


def _session(reactor: Any, options: Options) -> Any:
    """The command's run on the reactor this process owns, with its lean poll loop where the
    reactor allows (:mod:`grenache.speedups.reactor_poll`)."""
    from grenache.speedups import reactor_poll

    reactor_poll.install(reactor)
    return ensureDeferred(run(reactor, options))
