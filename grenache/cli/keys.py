"""Key files for mutable puts: ``grenache keygen`` writes them, ``grenache put --key`` reads
them.

A key file is JSON, ``{"publicKey": "<64 hex>", "secretKey": "<64 hex>"}`` where
``secretKey`` is the 32-byte ed25519 seed of RFC 8032, written with mode 0600. A 128-hex
``secretKey`` (seed followed by public key, as libsodium and tweetnacl write it) is read too.
The 64-byte *expanded* keys of grenache-cli (``~/.grenache-cli/key``) are a different thing and
cannot be used.

Without a file name, ``grenache keygen`` writes :data:`DEFAULT_KEY_FILE`,
``~/.grenache/key.json``: in the user's home directory, never the working directory, in a
directory created with mode 0700.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from grenache.cli.session import CommandError
from grenache.dht import bep44

__all__ = ["DEFAULT_KEY_FILE", "default_key_file", "read_key_file", "write_key_file"]

DEFAULT_KEY_FILE = "~/.grenache/key.json"
"""Where ``grenache keygen`` writes without a file name (``~`` is the user's home)."""


def default_key_file() -> Path:
    """:data:`DEFAULT_KEY_FILE` in this user's home; CommandError when there is no home."""
    path = Path(DEFAULT_KEY_FILE).expanduser()
    if not path.is_absolute():  # no $HOME and no password entry: never the working directory
        raise CommandError("cannot find your home directory (set HOME or give a FILE)")
    return path


def write_key_file(path: str | os.PathLike[str], *, force: bool = False) -> bytes:
    """Create a fresh ed25519 key at ``path`` (mode 0600); return its 32-byte seed.

    The parent directory is created (mode 0700) when missing. An existing file is replaced
    only with ``force``, atomically.
    """
    target = Path(path).expanduser()
    if target.exists() and not force:
        raise CommandError(f"{target} already exists (use --force to replace it)")
    try:
        target.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as error:
        raise CommandError(f"cannot create {target.parent}: {error.strerror}") from None
    seed = bep44.generate_private_key()
    document = {"publicKey": bep44.public_key_of(seed).hex(), "secretKey": seed.hex()}
    text = json.dumps(document, indent=2) + "\n"
    temporary = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    try:
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as stream:
            stream.write(text)
        if not force and target.exists():
            raise CommandError(f"{target} already exists (use --force to replace it)")
        os.replace(temporary, target)
    except OSError as error:
        raise CommandError(f"cannot write {target}: {error.strerror}") from None
    finally:
        temporary.unlink(missing_ok=True)
    return seed


def read_key_file(path: str | os.PathLike[str]) -> bytes:
    """The 32-byte ed25519 seed in the key file at ``path`` (see the module docstring)."""
    source = Path(path).expanduser()
    try:
        document = json.loads(source.read_text("utf-8"))
    except OSError as error:
        raise CommandError(f"cannot read key file {source}: {error.strerror}") from None
    except ValueError:
        raise CommandError(f"key file {source} is not JSON") from None
    secret = document.get("secretKey") if isinstance(document, dict) else None
    public = document.get("publicKey") if isinstance(document, dict) else None
    try:
        raw = bytes.fromhex(secret) if isinstance(secret, str) else b""
    except ValueError:
        raw = b""
    if len(raw) not in (32, 64):
        raise CommandError(
            f"key file {source} has no secretKey of 64 hex digits "
            '(expected {"publicKey": hex, "secretKey": hex}, as grenache keygen writes)'
        )
    seed = raw[:32]
    derived = bep44.public_key_of(seed)
    if len(raw) == 64 and raw[32:] != derived:
        raise CommandError(f"key file {source}: the secretKey's second half is not its public key")
    if public is not None and (not isinstance(public, str) or public.lower() != derived.hex()):
        raise CommandError(f"key file {source}: publicKey does not belong to secretKey")
    return seed
