"""The verbs that talk to the grape only: ``lookup``, ``announce``, ``put``, ``get``, and
``keygen`` (a key file for mutable puts)."""

from __future__ import annotations

import random
import re
import sys
import time
from pathlib import Path
from typing import Any

import attrs
from twisted.internet.defer import Deferred, DeferredLock, ensureDeferred, succeed
from twisted.python import usage

from grenache import errors
from grenache.cli.keys import (
    DEFAULT_KEY_FILE,
    GRENACHE_CLI_KEY_FILE,
    default_key_file,
    default_signing_key_file,
    read_signing_key,
    write_curve_key_file,
    write_key_file,
)
from grenache.cli.options import (
    GrapePortOption,
    GrapeTLSOption,
    Verb,
    non_negative_int,
    port_number,
)
from grenache.cli.session import (
    CommandError,
    Reported,
    Session,
    emit,
    emit_text,
    stdin_lines,
    warn,
)
from grenache.codec import json_loads
from grenache.dht import bep44

__all__ = [
    "AnnounceOptions",
    "GetOptions",
    "KeygenOptions",
    "LookupOptions",
    "PutOptions",
    "announce",
    "get",
    "keygen",
    "lookup",
    "parse_announce_line",
    "put",
]

_HASH = re.compile(r"[0-9a-fA-F]{40}\Z")


class LookupOptions(Verb, GrapePortOption, GrapeTLSOption):
    """``grenache lookup NAME...``: the names to look up and how to print their addresses."""

    synopsis = "NAME [NAME...] [-a | -f | -l | -r] [options]"
    longdesc = (
        "Print the peers (ip:port) announced as each NAME: as a JSON list (the default, or "
        "-a/--all), or one address as plain text for shell scripts: -f/--first, -l/--last or "
        "-r/--random (as grenache-cli's grenache-lookup). One line per NAME; a NAME nobody "
        "announces is one line on stderr, the others are still looked up, and the exit "
        "status is then 1."
    )
    examples = (
        "Examples:\n"
        "  grenache lookup fibonacci_worker\n"
        '  => ["127.0.0.1:1337","127.0.0.1:1338"]\n'
        "  grenache lookup -r fibonacci_worker\n"
        "  => 127.0.0.1:1338\n"
        "  grenache lookup -f fibonacci_worker rates -g 10.0.0.5 -p 30002\n"
        "  => 127.0.0.1:1337\n"
        "     10.0.0.7:2001\n"
    )
    arguments = ("NAME",)
    optFlags: list[list[Any]] = [
        ["all", "a", "Print every peer, as a JSON list (the default)."],
        ["first", "f", "Print the first peer, as plain text."],
        ["last", "l", "Print the last peer, as plain text."],
        ["random", "r", "Print one peer chosen at random, as plain text."],
    ]

    def parseArgs(self, *names: str) -> None:
        if not names:
            raise usage.UsageError("expected NAME [NAME...], got 0 argument(s)")
        self["names"] = list(names)
        self["name"] = names[0] if len(names) == 1 else None

    def postOptions(self) -> None:
        picked = [f"--{o}" for o in ("all", "first", "last", "random") if self[o]]
        if len(picked) > 1:
            raise usage.UsageError(f"give one of {', '.join(picked)}")
        self["pick"] = picked[0][2:] if picked else "all"


class AnnounceOptions(Verb, GrapePortOption, GrapeTLSOption):
    """``grenache announce NAME PORT``: one announce, or one per line of stdin."""

    synopsis = "NAME PORT | [NAME,PORT...] [-d DELIMITER] [-j] [options]"
    longdesc = (
        "Announce NAME at PORT once, through the grape (which records the address it sees); "
        "print the number of DHT nodes that stored it. A service re-announces itself; see "
        "grenache serve. Without NAME PORT, announce each NAME,PORT argument, or else each "
        "line of stdin until its end (a pipe, a file or a FIFO), as grenache-cli's "
        "grenache-announce: blank lines and lines starting with # or ; are skipped, "
        '-d/--delimiter changes the comma, -j/--json reads lines of {"data": [NAME, PORT]}. '
        'Each announced line prints {"name", "port", "announced"}; a bad line or a '
        "failed announce is one line on stderr naming its line number, the next lines go on, "
        "and the exit status is then 1 (also when nothing was announced)."
    )
    examples = (
        "Examples:\n"
        "  grenache announce fibonacci_worker 1337\n"
        "  => 1\n"
        "  grenache announce fibonacci_worker,1337 rates,2001\n"
        "  grenache announce < services.txt          (lines like: fibonacci_worker,1337)\n"
        "  grenache announce -d / -g 10.0.0.5 -p 30002 < services.txt\n"
        "  mkfifo announce.fifo; grenache announce -j < announce.fifo &\n"
        '  echo \'{"data": ["rates", 2001]}\' > announce.fifo\n'
    )
    arguments = ("NAME", "PORT")
    optParameters: list[list[Any]] = [
        ["delimiter", "d", ",", "What separates NAME and PORT in a line (default ,)."]
    ]
    optFlags: list[list[Any]] = [["json", "j", 'Lines are JSON: {"data": [NAME, PORT]}.']]

    def parseArgs(self, *args: str) -> None:
        self["args"] = args

    def postOptions(self) -> None:
        args = self["args"]
        if not self["delimiter"]:
            raise usage.UsageError("--delimiter must not be empty")
        self["lines"] = None
        if len(args) == 2 and not self["json"] and self["delimiter"] not in args[0]:
            name, port = args
            try:
                self["port"] = port_number(port)
            except ValueError as error:
                raise usage.UsageError(str(error)) from None
            self["name"] = name
            return
        self["name"] = None
        if not args:
            return  # lines from stdin
        lines = []
        for number, text in enumerate(args, 1):
            try:
                entry = parse_announce_line(text, self["delimiter"], bool(self["json"]))
            except ValueError as error:
                raise usage.UsageError(f"argument {number}: {error}") from None
            if entry is None:
                raise usage.UsageError(f"argument {number} is empty or a comment")
            lines.append(entry)
        self["lines"] = lines


def parse_announce_line(text: str, delimiter: str = ",", json: bool = False) -> Any:
    """``(name, port)`` from one grenache-announce line, None for a blank line or a comment
    (first non-blank character ``#`` or ``;``); ValueError saying what is wrong otherwise."""
    line = text.strip()
    if not line or line[0] in "#;":
        return None
    if json:
        try:
            document = json_loads(line)
        except ValueError:
            raise ValueError(f"{line!r} is not JSON") from None
        data = document.get("data") if isinstance(document, dict) else None
        if not (isinstance(data, list) and len(data) == 2 and isinstance(data[0], str)):
            raise ValueError(f'{line!r} is not {{"data": [NAME, PORT]}}')
        name, port_value = data[0], data[1]
        port_text = str(port_value) if not isinstance(port_value, bool) else ""
    else:
        fields = line.split(delimiter)
        if len(fields) != 2:
            raise ValueError(f"{line!r} is not NAME{delimiter}PORT")
        name, port_text = fields[0].strip(), fields[1].strip()
    if not name:
        raise ValueError(f"{line!r} has an empty NAME")
    if not port_text.isdigit() or not 0 < int(port_text) <= 65535:
        raise ValueError(f"{line!r}: {port_text!r} is not a port number (1-65535)")
    return name, int(port_text)


class PutOptions(Verb, GrapePortOption, GrapeTLSOption):
    """``grenache put VALUE``: an immutable item, or a mutable one signed with a key file."""

    synopsis = "VALUE [-m | --key FILE] [-n N] [-s SALT] [-c N] [options]"
    longdesc = (
        "Store VALUE (a string of at most 1000 bytes; - reads stdin) in the DHT and print its "
        "key as a JSON string, checked against VALUE (or the public key and salt). Without "
        "--key or -m the item is immutable and its key is the SHA-1 of the bencoded value "
        "(BEP 44); with them it is mutable, signed with the key file (--key FILE, or with -m "
        f"{DEFAULT_KEY_FILE}, else grenache-cli's {GRENACHE_CLI_KEY_FILE}; both kinds of key "
        "file are read), keyed by the public key and salt, and replaced by puts with a higher "
        "-n/--number (the sequence number; default: the time in microseconds, as "
        "grenache-put; --seq is the same) and -c/--cas N (only if the stored seq is N)."
    )
    examples = (
        "Examples:\n"
        "  grenache put 'hello world'\n"
        '  => "6d33adc2b6b2c14c3036feefb7fedbca1a880527"\n'
        "  grenache put -m -s config 'config v2'\n"
        "  grenache put 'config v2' --key ~/.grenache/key.json --salt config -n 2 --cas 1\n"
        "  grenache put -m --key ~/.grenache-cli/key 'signed with grenache-cli's key'\n"
    )
    arguments = ("VALUE",)
    optParameters: list[list[Any]] = [
        ["key", "k", None, "Key file for a mutable put (grenache keygen's or grenache-cli's)."],
        [
            "number",
            "n",
            None,
            "Sequence number of a mutable put (default: the time in microseconds).",
            non_negative_int,
        ],
        ["salt", "s", None, "Salt of a mutable put (at most 64 bytes)."],
        ["cas", "c", None, "Only replace the stored item if its seq is this.", non_negative_int],
    ]
    optFlags: list[list[Any]] = [
        ["mutable", "m", "A mutable put (with --key, or the default key file)."],
    ]
    compData = usage.Completions(optActions={"key": usage.CompleteFiles("*")})

    def opt_seq(self, value: str) -> None:
        """Same as --number."""
        try:
            self["number"] = non_negative_int(value)
        except ValueError as error:
            raise usage.UsageError(f"--seq: {error}") from None

    def parseArgs(self, *args: str) -> None:
        (value,) = self._arguments(args)
        self["value"] = sys.stdin.read().rstrip("\n") if value == "-" else value

    def postOptions(self) -> None:
        self["mutable"] = bool(self["mutable"] or self["key"] is not None)
        if not self["mutable"]:
            given = [f"--{o}" for o in ("number", "salt", "cas") if self[o] is not None]
            if given:
                raise usage.UsageError(f"{', '.join(given)} need --key or -m (a mutable put)")
        salt = self["salt"]
        if salt is not None and len(salt.encode("utf-8")) > bep44.MAX_SALT_SIZE:
            raise usage.UsageError(f"--salt is longer than {bep44.MAX_SALT_SIZE} bytes")
        if bep44.too_large(self["value"]):
            raise usage.UsageError(f"VALUE is longer than {bep44.MAX_VALUE_SIZE} bytes")


class GetOptions(Verb, GrapePortOption, GrapeTLSOption):
    """``grenache get HASH``: the item to fetch and which of its fields to print."""

    synopsis = "HASH [-s SALT] [-v | -r | -i | -w] [options]"
    longdesc = (
        "Print the item stored under HASH (40 hex digits, as put prints it) as a JSON object: "
        "v (the value), id (the node that answered), token (its write token, when a remote "
        "node answered), and for a mutable item k, sig and seq. The item is checked against "
        "HASH (the SHA-1 of the value, or of the public key and salt) and a mutable item's "
        "signature is verified before anything is printed, as grenache-cli's grenache-get "
        "does. -r/--raw prints that JSON object (the default), -v/--value the value as a "
        "JSON string, -i/--id the answering node's id and -w/--write its write token, as "
        "plain text."
    )
    examples = (
        "Examples:\n"
        "  grenache get 6d33adc2b6b2c14c3036feefb7fedbca1a880527\n"
        '  => {"v":"hello world","id":"84844b6bf57e032f29b8bc37e3c9d364d50343bd"}\n'
        "  grenache get 03ebddfbef4d04f0ba8d7927a2ca8fed62f12ee2 -s config\n"
        "  grenache get --value $(grenache put 'hello world' | jq -r .)\n"
        "  grenache get -i 6d33adc2b6b2c14c3036feefb7fedbca1a880527 -g 10.0.0.5 -p 30002\n"
        "  => 84844b6bf57e032f29b8bc37e3c9d364d50343bd\n"
    )
    arguments = ("HASH",)
    optParameters: list[list[Any]] = [["salt", "s", None, "Salt the mutable item was put with."]]
    optFlags: list[list[Any]] = [
        ["value", "v", "Print only the value, as a JSON string."],
        ["raw", "r", "Print the whole item as a JSON object (the default)."],
        ["id", "i", "Print the id of the node that answered, as plain text."],
        ["write", "w", "Print the node's write token, as plain text."],
    ]

    def parseArgs(self, *args: str) -> None:
        (key,) = self._arguments(args)
        key = key.strip().strip('"')
        if not _HASH.match(key):
            raise usage.UsageError(f"HASH {key!r} is not 40 hex digits")
        self["hash"] = key.lower()

    def postOptions(self) -> None:
        picked = [f"--{o}" for o in ("value", "raw", "id", "write") if self[o]]
        if len(picked) > 1:
            raise usage.UsageError(f"give one of {', '.join(picked)}")
        self["show"] = picked[0][2:] if picked else "raw"


class KeygenOptions(Verb):
    """``grenache keygen [FILE]``: where to write a new ed25519 (or, with ``--curve``, CURVE)
    key."""

    synopsis = "[FILE] [--force]"
    longdesc = (
        f"Write a new ed25519 key to FILE (default {DEFAULT_KEY_FILE}, in a directory created "
        "with mode 0700) with mode 0600, as JSON "
        '{"publicKey": hex, "secretKey": hex} (the secret is the 32-byte RFC 8032 seed), and '
        "print the file name and public key. grenache put --key FILE signs with it."
    )
    examples = (
        "Examples:\n"
        "  grenache keygen\n"
        '  => {"file":"/home/me/.grenache/key.json","publicKey":"77ff84905a91936367c0..."}\n'
        "  grenache keygen ./service.key.json --force\n"
        "  grenache keygen --curve server.curve.json   (a CURVE key pair for --transport zmq)\n"
        '  => {"file":"/home/me/server.curve.json","public":"rq:rM>}U?@Lns47E1%k..."}\n'
    )
    arguments = ("FILE",)
    optFlags: list[list[Any]] = [
        ["force", "f", "Replace FILE if it exists."],
        [
            "curve",
            None,
            'Write a CURVE key pair for the zmq transport instead ({"public": Z85, "secret": '
            "Z85}, default ~/.grenache/curve.json), and print its public key.",
        ],
    ]

    def parseArgs(self, *args: str) -> None:
        args = tuple(self._arguments(args, optional=1))
        self["file"] = args[0] if args else DEFAULT_KEY_FILE


# --- running ---------------------------------------------------------------------------------


async def lookup(session: Session) -> None:
    """``grenache lookup NAME...``: print the peers announced under each name (all of them as JSON,
    or the first, the last or a random one). A name nobody announced is an error; with several
    names, a warning and exit status 1 once the others are printed.
    """
    options = session.options
    link = session.link().link
    pick = options["pick"]
    failed = False
    for name in options["names"]:
        try:
            peers = await link.lookup(name, cache=False)
        except errors.LookupEmpty as error:
            if len(options["names"]) == 1:
                raise
            warn(session.verb, session.describe(error, name))
            failed = True
            continue
        if pick == "all":
            emit(peers)
        elif pick == "first":
            emit_text(peers[0])
        elif pick == "last":
            emit_text(peers[-1])
        else:
            emit_text(random.choice(peers))
    if failed:
        raise Reported()


async def announce(session: Session) -> None:
    """``grenache announce NAME PORT`` (print how many DHT nodes stored it), or one announce per
    ``NAME,PORT`` argument or stdin line, one at a time, each printed as JSON; a line that
    cannot be parsed or announced is a warning and exit status 1, after the rest.
    """
    options = session.options
    link = session.link().link
    if options["name"] is not None:
        emit(await link.announce(options["name"], options["port"]))
        return
    lock = DeferredLock()
    outcomes: list[Deferred[bool]] = []

    async def one(where: str, entry: tuple[str, int]) -> bool:
        name, port = entry
        try:
            count = await link.announce(name, port)
        except Exception as error:
            warn(
                session.verb,
                f"{where}: cannot announce {name!r} at {port}: " + session.describe(error, name),
            )
            return False
        if count <= 0:
            warn(session.verb, f"{where}: {name!r} at {port} was stored by no DHT node")
            return False
        emit({"name": name, "port": port, "announced": count})
        return True

    def queue(where: str, entry: tuple[str, int]) -> None:
        outcomes.append(lock.run(lambda: ensureDeferred(one(where, entry))))

    if options["lines"] is not None:
        for number, entry in enumerate(options["lines"], 1):
            queue(f"argument {number}", entry)
    else:
        bad = 0
        count = 0

        def receive(raw: bytes) -> None:
            nonlocal bad, count
            count += 1
            where = f"line {count}"
            try:
                text = raw.decode("utf-8")
                entry = parse_announce_line(text, options["delimiter"], bool(options["json"]))
            except ValueError as error:  # UnicodeDecodeError included
                reason = "is not UTF-8" if isinstance(error, UnicodeDecodeError) else str(error)
                warn(session.verb, f"{where}: {reason}")
                bad += 1
                return
            if entry is not None:
                queue(where, entry)

        await stdin_lines(session.reactor, receive)
        if bad:
            outcomes.append(succeed(False))
    results = [await outcome for outcome in outcomes]
    if not results:
        raise CommandError("no NAME,PORT line to announce on stdin")
    if not all(results):
        raise Reported()


async def put(session: Session) -> None:
    """``grenache put VALUE``: store a BEP 44 item through the grape and print its key, immutable
    or (``--mutable``) signed with the key file, checking that the grape answered the key the
    item must have.
    """
    options = session.options
    link = session.link().link
    value = options["value"]
    if not options["mutable"]:
        key = await link.put(value)
        expected = bep44.immutable_key(value.encode("utf-8")).hex()
    else:
        path = options["key"] or default_signing_key_file()
        signer = read_signing_key(path)
        seq = options["number"]
        if seq is None:
            seq = int(time.time() * 1_000_000)
        salt = options["salt"]
        salt_bytes = salt.encode("utf-8") if salt else None
        message = bep44.signature_buffer(value.encode("utf-8"), seq, salt_bytes)
        key = await link.put(
            value,
            k=signer.public_key.hex(),
            sig=signer.sign(message).hex(),
            seq=seq,
            salt=salt,
            cas=options["cas"],
        )
        expected = bep44.mutable_key(signer.public_key, salt_bytes).hex()
    if key.lower() != expected:
        raise CommandError(f"the grape answered the key {key}, not {expected} as it should")
    emit(key)


def _check_item(item: Any, key: str, salt: str | None) -> None:
    """Raise CommandError unless ``item`` is what ``key`` (and ``salt``) name."""
    value = item.v.encode("utf-8")
    if item.k is None:
        if bep44.immutable_key(value).hex() != key:
            raise CommandError(f"the item the grape returned for {key} does not hash to it")
        return
    if salt and item.salt is not None and item.salt != salt:
        raise CommandError(f"the item the grape returned has the salt {item.salt!r}, not {salt!r}")
    salt_bytes = (salt or item.salt or "").encode("utf-8") or None
    try:
        public = bytes.fromhex(item.k)
        signature = bytes.fromhex(item.sig or "")
    except ValueError:
        raise CommandError(f"the item the grape returned for {key} is malformed") from None
    if bep44.mutable_key(public, salt_bytes).hex() != key:
        hint = "" if salt else " (was it put with a --salt?)"
        raise CommandError(f"the item the grape returned is not keyed {key}{hint}")
    message = bep44.signature_buffer(value, item.seq or 0, salt_bytes)
    if not bep44.verify(signature, message, public):
        raise CommandError(f"the item the grape returned for {key} has a bad signature")


async def get(session: Session) -> None:
    """``grenache get HASH``: print the BEP 44 item stored under a key (or its value, id or write
    token), after checking that it hashes or is signed to that key.
    """
    options = session.options
    key = options["hash"]
    item = await session.link().link.get(key, salt=options["salt"])
    if item is None:
        salted = f" with salt {options['salt']!r}" if options["salt"] else ""
        raise CommandError(f"nothing is stored under {key}{salted}")
    _check_item(item, key, options["salt"])
    show = options["show"]
    if show == "value":
        emit(item.v)
    elif show == "id":
        emit_text(item.id)
    elif show == "write":
        if item.token is None:
            raise CommandError(
                "the grape sent no write token (it answered from its own store, not a remote node)"
            )
        emit_text(item.token)
    else:
        emit({k: v for k, v in attrs.asdict(item).items() if v is not None})


async def keygen(session: Session) -> None:
    """``grenache keygen [FILE]``: write a new ed25519 key file for mutable puts (or, with
    ``--curve``, a CURVE key pair for ZeroMQ) and print where, with its public key.
    """
    given = session.options["file"]
    if session.options["curve"]:
        path_or_default = None if given == DEFAULT_KEY_FILE else given
        force = bool(session.options["force"])
        target, keypair = write_curve_key_file(path_or_default, force=force)
        emit({"file": str(target.resolve()), "public": keypair.public.decode("ascii")})
        return
    path = default_key_file() if given == DEFAULT_KEY_FILE else Path(given).expanduser()
    seed = write_key_file(path, force=bool(session.options["force"]))
    emit({"file": str(path.resolve()), "publicKey": bep44.public_key_of(seed).hex()})
