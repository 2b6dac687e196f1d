"""The verbs that talk to the grape only: ``lookup``, ``announce``, ``put``, ``get``, and
``keygen`` (a key file for mutable puts)."""

from __future__ import annotations

import re
import sys
import time
from pathlib import Path
from typing import Any

import attrs
from twisted.python import usage

from grenache.cli.keys import DEFAULT_KEY_FILE, default_key_file, read_key_file, write_key_file
from grenache.cli.options import Verb, non_negative_int, port_number
from grenache.cli.session import CommandError, Session, emit
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
    "put",
]

_HASH = re.compile(r"[0-9a-fA-F]{40}\Z")


class LookupOptions(Verb):
    synopsis = "NAME [options]"
    longdesc = "Print the peers (ip:port) announced as NAME, as a JSON list."
    examples = 'Example:\n  grenache lookup fibonacci_worker\n  => ["127.0.0.1:1337"]\n'
    arguments = ("NAME",)

    def parseArgs(self, *args: str) -> None:
        (self["name"],) = self._arguments(args)


class AnnounceOptions(Verb):
    synopsis = "NAME PORT [options]"
    longdesc = (
        "Announce NAME at PORT once, through the grape (which records the address it sees); "
        "print the number of DHT nodes that stored it. A service re-announces itself; see "
        "grenache serve."
    )
    examples = "Example:\n  grenache announce fibonacci_worker 1337\n  => 1\n"
    arguments = ("NAME", "PORT")

    def parseArgs(self, *args: str) -> None:
        name, port = self._arguments(args)
        try:
            self["port"] = port_number(port)
        except ValueError as error:
            raise usage.UsageError(str(error)) from None
        self["name"] = name


class PutOptions(Verb):
    synopsis = "VALUE [--key FILE [--seq N] [--salt S] [--cas N]] [options]"
    longdesc = (
        "Store VALUE (a string of at most 1000 bytes; - reads stdin) in the DHT and print its "
        "key as a JSON string. Without --key the item is immutable and its key is the SHA-1 of "
        "the bencoded value (BEP 44); with --key it is mutable, signed with that key file (see "
        "grenache keygen), keyed by the public key and salt, and replaced by puts with a "
        "higher --seq (--cas: only if the stored seq is N)."
    )
    examples = (
        "Examples:\n"
        "  grenache put 'hello world'\n"
        '  => "6d33adc2b6b2c14c3036feefb7fedbca1a880527"\n'
        "  grenache put 'config v2' --key ~/.grenache/key.json --salt config --seq 2 --cas 1\n"
    )
    arguments = ("VALUE",)
    optParameters: list[list[Any]] = [
        ["key", "k", None, "Key file for a mutable put (from grenache keygen)."],
        [
            "seq",
            "s",
            None,
            "Sequence number of a mutable put (default: the time in microseconds).",
            non_negative_int,
        ],
        ["salt", None, None, "Salt of a mutable put (at most 64 bytes)."],
        ["cas", None, None, "Only replace the stored item if its seq is this.", int],
    ]
    compData = usage.Completions(optActions={"key": usage.CompleteFiles("*.json")})

    def parseArgs(self, *args: str) -> None:
        (value,) = self._arguments(args)
        self["value"] = sys.stdin.read().rstrip("\n") if value == "-" else value

    def postOptions(self) -> None:
        if self["key"] is None:
            given = [f"--{o}" for o in ("seq", "salt", "cas") if self[o] is not None]
            if given:
                raise usage.UsageError(f"{', '.join(given)} need --key (a mutable put)")
        salt = self["salt"]
        if salt is not None and len(salt.encode("utf-8")) > bep44.MAX_SALT_SIZE:
            raise usage.UsageError(f"--salt is longer than {bep44.MAX_SALT_SIZE} bytes")
        if bep44.too_large(self["value"]):
            raise usage.UsageError(f"VALUE is longer than {bep44.MAX_VALUE_SIZE} bytes")


class GetOptions(Verb):
    synopsis = "HASH [--salt S] [options]"
    longdesc = (
        "Print the item stored under HASH (40 hex digits, as put prints it) as a JSON object: "
        "v (the value), id (the node that answered), and for a mutable item k, sig and seq. "
        "The item is checked against HASH (and its signature) before it is printed."
    )
    examples = (
        "Examples:\n"
        "  grenache get 6d33adc2b6b2c14c3036feefb7fedbca1a880527\n"
        '  => {"v":"hello world","id":"84844b6bf57e032f29b8bc37e3c9d364d50343bd"}\n'
        "  grenache get 03ebddfbef4d04f0ba8d7927a2ca8fed62f12ee2 --salt config\n"
        "  grenache get --value $(grenache put 'hello world' | jq -r .)\n"
    )
    arguments = ("HASH",)
    optParameters: list[list[Any]] = [["salt", None, None, "Salt the mutable item was put with."]]
    optFlags: list[list[Any]] = [["value", "v", "Print only the value, as a JSON string."]]

    def parseArgs(self, *args: str) -> None:
        (key,) = self._arguments(args)
        key = key.strip().strip('"')
        if not _HASH.match(key):
            raise usage.UsageError(f"HASH {key!r} is not 40 hex digits")
        self["hash"] = key.lower()


class KeygenOptions(Verb):
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
    )
    arguments = ("FILE",)
    optFlags: list[list[Any]] = [["force", "f", "Replace FILE if it exists."]]

    def parseArgs(self, *args: str) -> None:
        args = tuple(self._arguments(args, optional=1))
        self["file"] = args[0] if args else DEFAULT_KEY_FILE


# --- running ---------------------------------------------------------------------------------


async def lookup(session: Session) -> None:
    link = session.link().link
    emit(await link.lookup(session.options["name"], cache=False))


async def announce(session: Session) -> None:
    options = session.options
    emit(await session.link().link.announce(options["name"], options["port"]))


async def put(session: Session) -> None:
    options = session.options
    link = session.link().link
    if options["key"] is None:
        emit(await link.put(options["value"]))
        return
    seed = read_key_file(options["key"])
    seq = options["seq"] if options["seq"] is not None else int(time.time() * 1_000_000)
    key = await link.put(
        options["value"],
        private_key=seed,
        seq=seq,
        salt=options["salt"],
        cas=options["cas"],
    )
    emit(key)


def _check_item(item: Any, key: str, salt: str | None) -> None:
    """Raise CommandError unless ``item`` is what ``key`` (and ``salt``) name."""
    value = item.v.encode("utf-8")
    if item.k is None:
        if bep44.immutable_key(value).hex() != key:
            raise CommandError(f"the item the grape returned for {key} does not hash to it")
        return
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
    options = session.options
    key = options["hash"]
    item = await session.link().link.get(key, salt=options["salt"])
    if item is None:
        salted = f" with salt {options['salt']!r}" if options["salt"] else ""
        raise CommandError(f"nothing is stored under {key}{salted}")
    _check_item(item, key, options["salt"])
    if options["value"]:
        emit(item.v)
    else:
        emit({k: v for k, v in attrs.asdict(item).items() if v is not None})


async def keygen(session: Session) -> None:
    given = session.options["file"]
    path = default_key_file() if given == DEFAULT_KEY_FILE else Path(given).expanduser()
    seed = write_key_file(path, force=bool(session.options["force"]))
    emit({"file": str(path.resolve()), "publicKey": bep44.public_key_of(seed).hex()})
