"""Key files for mutable puts: ``grenache keygen`` writes them, ``grenache put --key`` reads
them.

A key file is JSON, ``{"publicKey": "<64 hex>", "secretKey": "<64 hex>"}`` where
``secretKey`` is the 32-byte ed25519 seed of RFC 8032, written with mode 0600. A 128-hex
``secretKey`` (seed followed by public key, as libsodium and tweetnacl write it) is read too.

The key files of grenache-cli's ``grenache-keygen`` are read as well: ``~/.grenache-cli/key``
holds 128 hex digits, the 64-byte *expanded* secret key of orlp/ed25519 (the clamped scalar and
the nonce prefix, hashed from a seed that is not kept), and ``key.pub`` beside it the 64-hex
public key. Such a key has no seed to give the link, so the command signs with it itself
(:mod:`grenache.cli.expanded_key`) and hands the link the public key and signature.
:func:`read_signing_key` reads either kind; :func:`read_key_file` only the JSON kind.

Without a file name, ``grenache keygen`` writes :data:`DEFAULT_KEY_FILE`,
``~/.grenache/key.json``: in the user's home directory, never the working directory, in a
directory created with mode 0700.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import attrs

from grenache.cli.expanded_key import is_clamped, public_key_of_expanded, sign_expanded
from grenache.cli.session import CommandError
from grenache.dht import bep44

__all__ = [
    "DEFAULT_CURVE_KEY_FILE",
    "DEFAULT_KEY_FILE",
    "GRENACHE_CLI_KEY_FILE",
    "SigningKey",
    "default_key_file",
    "default_signing_key_file",
    "read_key_file",
    "read_signing_key",
    "write_curve_key_file",
    "write_key_file",
]

DEFAULT_KEY_FILE = "~/.grenache/key.json"
"""Where ``grenache keygen`` writes without a file name (``~`` is the user's home)."""

DEFAULT_CURVE_KEY_FILE = "~/.grenache/curve.json"
"""Where ``grenache keygen --curve`` writes without a file name."""

GRENACHE_CLI_KEY_FILE = "~/.grenache-cli/key"
"""Where grenache-cli's ``grenache-keygen`` writes its secret key (``key.pub`` beside it)."""


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


@attrs.frozen
class SigningKey:
    """An ed25519 key read from a key file: its public key, and how to sign with it."""

    public_key: bytes
    #: The 32-byte RFC 8032 seed, or None for an expanded key.
    seed: bytes | None
    #: The 64-byte expanded secret key (grenache-cli), or None for a seed.
    expanded: bytes | None = attrs.field(default=None, repr=False)

    def sign(self, message: bytes) -> bytes:
        """The 64-byte signature of ``message``."""
        if self.seed is not None:
            return bep44.sign(self.seed, message)
        assert self.expanded is not None
        return sign_expanded(self.expanded, self.public_key, message)


def _read_grenache_cli_key(source: Path, text: str) -> SigningKey:
    """A grenache-cli ``key`` file (128 hex digits) and the ``key.pub`` beside it."""
    try:
        raw = bytes.fromhex(text.strip())
    except ValueError:
        raw = b""
    if len(raw) != 64:
        raise CommandError(
            f"key file {source} is neither JSON (as grenache keygen writes) nor 128 hex digits "
            "(as grenache-cli's grenache-keygen writes)"
        )
    if bep44.public_key_of(raw[:32]) == raw[32:]:  # seed || public key, written as hex
        return SigningKey(public_key=raw[32:], seed=raw[:32])
    if not is_clamped(raw):
        raise CommandError(f"key file {source} is not an ed25519 secret key")
    public = public_key_of_expanded(raw)
    pub_file = source.with_name(source.name + ".pub")
    try:
        pub_text = pub_file.read_text("ascii").strip()
    except FileNotFoundError:
        pub_text = None
    except (OSError, ValueError) as error:
        raise CommandError(f"cannot read {pub_file}: {error}") from None
    if pub_text is not None and pub_text.lower() != public.hex():
        raise CommandError(f"{pub_file} is not the public key of {source}")
    return SigningKey(public_key=public, seed=None, expanded=raw)


def read_signing_key(path: str | os.PathLike[str]) -> SigningKey:
    """The key in the key file at ``path``: a JSON key file (see the module docstring) or a
    grenache-cli ``key`` file."""
    source = Path(path).expanduser()
    if source.name.endswith(".pub"):
        secret = source.with_name(source.name[: -len(".pub")])
        raise CommandError(f"{source} is a public key: give the secret key file ({secret})")
    try:
        text = source.read_text("utf-8")
    except OSError as error:
        raise CommandError(f"cannot read key file {source}: {error.strerror}") from None
    except ValueError:
        raise CommandError(f"key file {source} is neither JSON nor hex") from None
    if text.lstrip().startswith("{"):
        seed = read_key_file(source)
        return SigningKey(public_key=bep44.public_key_of(seed), seed=seed)
    return _read_grenache_cli_key(source, text)


def default_signing_key_file() -> Path:
    """The key ``grenache put --mutable`` signs with when no ``--key`` is given:
    :data:`DEFAULT_KEY_FILE` if it exists, else grenache-cli's :data:`GRENACHE_CLI_KEY_FILE`;
    CommandError when neither does."""
    ours = default_key_file()
    if ours.exists():
        return ours
    theirs = Path(GRENACHE_CLI_KEY_FILE).expanduser()
    if theirs.exists():
        return theirs
    raise CommandError(
        f"no key file: neither {ours} nor {theirs} exists (run grenache keygen, or give --key)"
    )


def write_curve_key_file(path: str | os.PathLike[str] | None, *, force: bool = False) -> Any:
    """Create a fresh CURVE key pair for the zmq transport at ``path`` (default
    :data:`DEFAULT_CURVE_KEY_FILE` in the home directory), JSON ``{"public": Z85, "secret":
    Z85}`` with mode 0600 (:func:`grenache.transports.zmq.curve.write_keypair_file`); return
    ``(path, keypair)``. CommandError when the file exists (without ``force``) or cannot be
    written."""
    from grenache.transports.zmq.curve import write_keypair_file

    if path is None:
        target = Path(DEFAULT_CURVE_KEY_FILE).expanduser()
        if not target.is_absolute():
            raise CommandError("cannot find your home directory (set HOME or give a FILE)")
    else:
        target = Path(path).expanduser()
    try:
        keypair = write_keypair_file(target, force=force)
    except FileExistsError:
        raise CommandError(f"{target} already exists (use --force to replace it)") from None
    except OSError as error:
        raise CommandError(f"cannot write {target}: {error.strerror}") from None
    return target, keypair
