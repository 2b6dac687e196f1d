"""What every verb's command line shares: value parsers, GNU-style option order, named
unknown options, ``--grape``/``--timeout`` (with grenache-cli's ``-g HOST``, ``-p PORT`` and
``-t``), the ``--transport`` check, the TLS flags and the CURVE flags of the zmq transport."""

from __future__ import annotations

import getopt
import sys
from collections.abc import Sequence
from typing import Any, NoReturn
from urllib.parse import urlsplit

from twisted.python import usage

from grenache.codec import json_loads
from grenache.curve_options import (
    CurveClientOptions,
    CurveServerOptions,
    curve_client,
    curve_server,
)
from grenache.endpoints import join_host_port
from grenache.link import DEFAULT_GRAPE
from grenache.tls_options import ClientTLSOptions, ServerTLSOptions
from grenache.transports import UnknownTransport, get_transport

__all__ = [
    "DEFAULT_TIMEOUT",
    "PROG",
    "ClientTLSOptions",
    "CurveClientOptions",
    "CurveServerOptions",
    "GnuOptions",
    "GrapePortOption",
    "GrapeTLSOption",
    "ServerTLSOptions",
    "Verb",
    "check_transport",
    "curve_client",
    "curve_server",
    "grape_url",
    "non_negative_int",
    "option_error",
    "parse_json",
    "port_number",
    "positive",
    "positive_int",
    "version",
]

PROG = "grenache"
DEFAULT_TIMEOUT = 10.0


def positive(value: str) -> float:
    """Parse an option value that must be a number above 0 (``--timeout``); ValueError
    otherwise, which ``usage.Options`` reports as a usage error naming the option."""
    number = float(value)
    if not number > 0:
        raise ValueError(f"{value} is not a positive number")
    return number


def positive_int(value: str) -> int:
    """Parse an option value that must be an integer of at least 1 (a count, a limit, a
    number of attempts); ValueError otherwise."""
    number = int(value)
    if number <= 0:
        raise ValueError(f"{value} is not a positive integer")
    return number


def non_negative_int(value: str) -> int:
    """Parse an option value that must be an integer of at least 0; ValueError otherwise."""
    number = int(value)
    if number < 0:
        raise ValueError(f"{value} must not be negative")
    return number


def port_number(value: str) -> int:
    """Parse a TCP port option: an integer from 0 (any free port, where a verb listens) to
    65535; ValueError otherwise."""
    port = int(value)
    if not 0 <= port <= 65535:
        raise ValueError(f"{value} is not a port number (0-65535)")
    return port


def version() -> str:
    """This package's version (:data:`grenache.__version__`, the one version source), as
    ``--version`` prints it: right in an editable install too, where installed metadata goes
    stale after a version bump."""
    from grenache import __version__

    return __version__


def option_error(error: getopt.GetoptError) -> usage.UsageError:
    """The usage error for what ``getopt`` refused, naming the option."""
    option = f"-{error.opt}" if len(error.opt) == 1 else f"--{error.opt}"
    message = error.msg
    if message.endswith("not recognized"):
        hint = ""
        if len(error.opt) == 1 and error.opt.isdigit():
            hint = " (put -- before an argument that starts with -)"
        return usage.UsageError(f"unknown option {option}{hint}")
    if message.endswith("requires argument"):
        return usage.UsageError(f"option {option} needs a value")
    if message.endswith("must not have an argument"):
        return usage.UsageError(f"option {option} takes no value")
    if message.endswith("not a unique prefix"):
        return usage.UsageError(f"option {option} is ambiguous (spell it out)")
    return usage.UsageError(message)


def _permute(argv: Sequence[str], short: str, long: Sequence[str]) -> list[str]:
    """``argv`` with its options first, so that options may follow the arguments (GNU style:
    ``grenache request NAME JSON --timeout 5``); ``--`` ends the options. An option the verb
    does not have is a usage error naming it."""
    try:
        opts, args = getopt.gnu_getopt(list(argv), short, list(long))
    except getopt.GetoptError as error:
        raise option_error(error) from None
    flat: list[str] = []
    for name, value in opts:
        if name.startswith("--"):
            flat.append(f"{name}={value}" if f"{name[2:]}=" in long else name)
        elif value == "" and f"{name[1]}:" in short:
            flat.extend([name, value])  # an empty value, kept as one (-d '')
        else:
            flat.append(name + value)
    return [*flat, "--", *args]


class GnuOptions(usage.Options):
    """Options that may come after the positional arguments."""

    examples = ""

    def opt_version(self) -> NoReturn:
        """Print the version and exit."""
        print(f"{PROG} {version()}")
        sys.exit(0)

    def parseOptions(self, options: Sequence[str] | None = None) -> None:
        """Parse ``options`` (default ``sys.argv[1:]``) with the options moved before the
        arguments, so that they may follow them; an unknown option is a usage error naming it."""
        argv = list(sys.argv[1:] if options is None else options)
        if "--_shell-completion" not in argv:
            argv = _permute(argv, self.shortOpt, self.longOpt)
        super().parseOptions(argv)

    def getUsage(self, width: int | None = None) -> str:
        """The usage text followed by the verb's :attr:`examples`, when it has any."""
        text = super().getUsage(width)
        return text + ("\n" + self.examples if self.examples else "")


def parse_json(text: str, what: str = "JSON") -> Any:
    """``text`` (``-``: stdin) as JSON; a usage error quoting it otherwise."""
    if text == "-":
        text = sys.stdin.read()
    try:
        return json_loads(text)
    except ValueError as error:
        raise usage.UsageError(f"{what} {text!r} is not JSON ({error})") from None


def check_transport(name: str, *, pubsub: bool = False) -> None:
    """A usage error unless ``name`` is a transport of the registry (with pub/sub)."""
    try:
        get_transport(name, pubsub=pubsub)
    except UnknownTransport as error:
        raise usage.UsageError(str(error)) from None


def grape_url(grape: str, port: int | None = None, tls: bool = False) -> str:
    """The grape API URL that ``--grape``, ``--port`` and ``--tls`` name.

    ``grape`` is a URL (``http://127.0.0.1:30001``, ``ws://[::1]:30002``) or, as grenache-cli's
    ``-g`` takes it, a host name or address alone (``-g 10.0.0.5``), which means
    ``http://HOST`` on the port of the default URL (30001). ``port`` replaces the URL's port;
    ``tls`` makes ``http`` ``https`` (and ``ws`` ``wss``), as grenache-cli's ``-t`` does.
    A usage error names what is wrong.
    """
    if "://" in grape:
        try:
            parts = urlsplit(grape)
            host, old_port = parts.hostname, parts.port
        except ValueError as error:
            raise usage.UsageError(f"--grape {grape!r} is not a URL ({error})") from None
        scheme = parts.scheme.lower()
        if not host:
            raise usage.UsageError(f"--grape {grape!r} has no host")
        if port is None and not tls:
            return grape
        if port is None:
            port = old_port
        if tls:
            scheme = {"http": "https", "ws": "wss"}.get(scheme, scheme)
        netloc = host if port is None else join_host_port(host, port)
        if ":" in host and port is None:
            netloc = f"[{host}]"
        return parts._replace(scheme=scheme, netloc=netloc).geturl()
    host = grape.strip()
    if not host or any(c in host for c in "/?#@ "):
        raise usage.UsageError(f"--grape {grape!r} is neither a URL nor a host name")
    default_port = urlsplit(DEFAULT_GRAPE).port or 30001
    try:
        address = join_host_port(host, default_port if port is None else port)
    except ValueError:
        raise usage.UsageError(f"--grape {grape!r} is not an IPv6 address") from None
    return f"{'https' if tls else 'http'}://{address}"


class GrapePortOption(usage.Options):
    """``-p/--port``: the grape's port, as grenache-cli's verbs take it beside ``-g``."""

    def opt_port(self, value: str) -> None:
        """The grape's port: replaces the port of --grape (e.g. -g 10.0.0.5 -p 30002)."""
        try:
            number = port_number(value)
        except ValueError as error:
            raise usage.UsageError(str(error)) from None
        if number == 0:
            raise usage.UsageError("--port 0 is not a grape's port")
        self["grape_port"] = number

    opt_p = opt_port


class GrapeTLSOption(usage.Options):
    """``-t/--tls``: the grape's HTTP API over TLS (``https://``), as grenache-cli's ``-t``."""

    def opt_tls(self) -> None:
        """Talk to the grape over TLS: https:// (wss:// for a ws:// --grape)."""
        self["grape_tls"] = True

    opt_t = opt_tls


class Verb(GnuOptions):
    """Options every verb has."""

    #: Positional argument names, for error messages.
    arguments: tuple[str, ...] = ()

    optParameters: list[list[Any]] = [
        [
            "grape",
            "g",
            DEFAULT_GRAPE,
            "URL of the grape's API (http:// or ws://), or its host alone (as grenache-cli's -g).",
        ],
        [
            "timeout",
            None,
            DEFAULT_TIMEOUT,
            "Seconds to wait for each reply (from the grape or a service).",
            positive,
        ],
    ]
    compData = usage.Completions(
        optActions={"grape": usage.CompleteList([DEFAULT_GRAPE], descr="grape URL")}
    )

    def parseOptions(self, options: Sequence[str] | None = None) -> None:
        """Parse, then make ``--grape`` the URL it names with ``-p`` and ``-t`` applied
        (:func:`grape_url`)."""
        super().parseOptions(options)
        if "--_shell-completion" not in (options or ()):
            self["grape"] = grape_url(
                str(self["grape"]), self.get("grape_port"), bool(self.get("grape_tls"))
            )

    def _arguments(self, args: Sequence[str], optional: int = 0) -> list[str]:
        expected = self.arguments
        if not len(expected) - optional <= len(args) <= len(expected):
            wanted = " ".join(expected)
            raise usage.UsageError(f"expected {wanted}, got {len(args)} argument(s)")
        return list(args)
