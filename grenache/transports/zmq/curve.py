"""CURVE security for the ZeroMQ transports: keys, key files, the settings, the ZAP handler.

CURVE (libzmq's CurveZMQ, through pyzmq) encrypts every connection and authenticates the
server to its clients by its public key; with a whitelist, the server also authenticates its
clients by theirs. It plays the part TLS and certificate fingerprints play for the HTTP and
WebSocket transports (docs/zeromq.rst, *CURVE*):

- a server (:class:`CurveServer`) has a key pair, and optionally the set of client public keys
  it accepts; it runs a ZAP handler (:class:`ZapHandler`) in its ZeroMQ context, which admits
  or refuses each client and names it by its public key (Z85), which the RPC handler sees in
  :attr:`~grenache.peer.Request.peer_certificate`;
- a client (:class:`CurveClient`) knows the server's public key, and has its own key pair
  (a fresh one when none is given: enough for encryption, not for a whitelist).

Keys are Z85 text (40 characters for 32 bytes), as libzmq writes them. A key file is JSON
``{"public": "<Z85>", "secret": "<Z85>"}`` with mode 0600 (:func:`write_keypair_file`,
``grenache keygen --curve``). A client refused by the server's whitelist fails its requests
with :class:`CurveRefused`.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import attrs
import zmq
from twisted.logger import Logger
from txzmq import ZmqFactory
from zmq.utils import z85

from grenache.errors import DestinationUnreachable
from grenache.transports.zmq.frames import SocketOptions, ZmqSocket

__all__ = [
    "ZAP_DOMAIN",
    "CurveClient",
    "CurveKeyPair",
    "CurveRefused",
    "CurveServer",
    "ZapHandler",
    "generate_keypair",
    "parse_key",
    "read_client_keys",
    "read_keypair_file",
    "write_keypair_file",
]

log = Logger()

ZAP_DOMAIN = b"grenache"
"""The ZAP domain the servers' sockets name (a ZAP handler sees it in each request)."""

ZAP_ENDPOINT = "inproc://zeromq.zap.01"
"""Where libzmq asks a context's ZAP handler (RFC 27)."""


class CurveRefused(DestinationUnreachable):
    """The server refused this client's CURVE key (not on its whitelist), or the CURVE
    handshake failed (wrong server key, CURVE on one side only). A kind of
    :class:`~grenache.errors.DestinationUnreachable`: the request never reached a handler."""


def parse_key(text: str | bytes, what: str = "CURVE key") -> bytes:
    """A Z85 key (40 characters) as bytes of Z85 text; :class:`ValueError` otherwise."""
    raw = text.encode("ascii", "replace") if isinstance(text, str) else bytes(text)
    raw = raw.strip()
    if len(raw) != 40:
        raise ValueError(f"{what} must be 40 Z85 characters, not {len(raw)}: {raw[:48]!r}")
    try:
        decoded = z85.decode(raw)
    except (ValueError, KeyError, IndexError):
        raise ValueError(f"{what} is not Z85: {raw!r}") from None
    if len(decoded) != 32:
        raise ValueError(f"{what} is not a 32-byte Z85 key: {raw!r}")
    return raw


@attrs.frozen
class CurveKeyPair:
    """A CURVE key pair, both halves Z85 bytes (40 characters). ``repr`` hides the secret."""

    public: bytes = attrs.field(converter=lambda k: parse_key(k, "public key"))
    secret: bytes = attrs.field(converter=lambda k: parse_key(k, "secret key"), repr=False)

    def __attrs_post_init__(self) -> None:
        if zmq.curve_public(self.secret) != self.public:
            raise ValueError("the public key does not belong to the secret key")


def generate_keypair() -> CurveKeyPair:
    """A fresh key pair from libzmq."""
    public, secret = zmq.curve_keypair()
    return CurveKeyPair(public, secret)


def write_keypair_file(
    path: str | os.PathLike[str], keypair: CurveKeyPair | None = None, *, force: bool = False
) -> CurveKeyPair:
    """Write ``keypair`` (a fresh one by default) to ``path`` as JSON, mode 0600, and return
    it. The parent directory is created (mode 0700); an existing file is replaced only with
    ``force``. :class:`FileExistsError`/:class:`OSError` on failure."""
    keypair = keypair or generate_keypair()
    target = Path(path).expanduser()
    if target.exists() and not force:
        raise FileExistsError(f"{target} already exists")
    target.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    text = json.dumps(
        {"public": keypair.public.decode("ascii"), "secret": keypair.secret.decode("ascii")},
        indent=2,
    )
    temporary = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w") as stream:
            stream.write(text + "\n")
        os.replace(temporary, target)
    finally:
        if temporary.exists():
            temporary.unlink()
    return keypair


def read_keypair_file(path: str | os.PathLike[str]) -> CurveKeyPair:
    """The key pair in a key file; :class:`ValueError` saying what is wrong with it."""
    target = Path(path).expanduser()
    try:
        document = json.loads(target.read_text("utf-8"))
    except OSError as e:
        raise ValueError(f"cannot read CURVE key file {target}: {e.strerror}") from None
    except ValueError:
        raise ValueError(f"{target} is not JSON (expected a CURVE key file)") from None
    if not isinstance(document, dict) or not {"public", "secret"} <= document.keys():
        raise ValueError(f'{target}: a CURVE key file is {{"public": Z85, "secret": Z85}}')
    try:
        return CurveKeyPair(document["public"], document["secret"])
    except (ValueError, TypeError, AttributeError) as e:
        raise ValueError(f"{target}: {e}") from None


def read_client_keys(spec: str) -> frozenset[bytes]:
    """Client public keys from ``spec``: a file (a key file, whose ``public`` is taken; or one
    Z85 key per line, first word of the line, blank lines and lines starting with ``"# "``
    skipped: Z85 has ``#`` among its characters, not the space) or keys separated by
    commas."""
    path = Path(spec).expanduser()
    if path.is_file():
        text = path.read_text("utf-8")
        try:
            document = json.loads(text)
        except ValueError:
            document = None
        if isinstance(document, dict) and "public" in document:
            return frozenset([parse_key(document["public"], f"public key in {path}")])
        lines = [line for line in text.splitlines() if line.strip()]
        keys = [line.split()[0] for line in lines if not line.startswith("# ")]
        return frozenset(parse_key(k, f"client key in {path}") for k in keys)
    keys = [k.strip() for k in spec.split(",") if k.strip()]
    if not keys:
        raise ValueError(f"no client keys in {spec!r} (a file, or Z85 keys separated by commas)")
    return frozenset(parse_key(k, "client key") for k in keys)


@attrs.frozen
class CurveServer:
    """A server's (or publisher's) CURVE settings: its key pair and, optionally, the client
    public keys (Z85) it accepts (``None``: any client that knows the server key)."""

    keypair: CurveKeyPair
    allowed_clients: frozenset[bytes] | None = attrs.field(
        default=None,
        converter=lambda keys: None if keys is None else frozenset(parse_key(k) for k in keys),
    )

    def configure(self, socket: zmq.Socket[Any]) -> None:
        """Make ``socket`` a CURVE server (before it binds)."""
        socket.setsockopt(zmq.ZAP_DOMAIN, ZAP_DOMAIN)
        socket.setsockopt(zmq.CURVE_SERVER, 1)
        socket.setsockopt(zmq.CURVE_SECRETKEY, self.keypair.secret)
        socket.setsockopt(zmq.CURVE_PUBLICKEY, self.keypair.public)

    def allows(self, public_key: bytes) -> bool:
        """Whether the client with this Z85 public key may connect."""
        return self.allowed_clients is None or public_key in self.allowed_clients


@attrs.frozen
class CurveClient:
    """A client's (or subscriber's) CURVE settings: the server's public key and this
    client's key pair (a fresh one when ``None``, for servers without a whitelist)."""

    server_key: bytes = attrs.field(converter=lambda k: parse_key(k, "server key"))
    keypair: CurveKeyPair | None = None

    def configure(self, socket: zmq.Socket[Any]) -> None:
        """Make ``socket`` a CURVE client of the server (before it connects)."""
        keypair = self.keypair or _ephemeral()
        socket.setsockopt(zmq.CURVE_SERVERKEY, self.server_key)
        socket.setsockopt(zmq.CURVE_PUBLICKEY, keypair.public)
        socket.setsockopt(zmq.CURVE_SECRETKEY, keypair.secret)


_EPHEMERAL: list[CurveKeyPair] = []


def _ephemeral() -> CurveKeyPair:
    if not _EPHEMERAL:
        _EPHEMERAL.append(generate_keypair())
    return _EPHEMERAL[0]


class ZapHandler:
    """The ZAP handler (ZeroMQ RFC 27) of one ZeroMQ context, on the reactor, no thread.

    A ROUTER bound at ``inproc://zeromq.zap.01``; libzmq sends it each CURVE handshake and
    waits for the verdict, which ``settings`` (a :class:`CurveServer`) gives. A context has
    one ZAP handler, so each CURVE server (or publisher) has a ZeroMQ context of its own.
    Admitted clients get
    their Z85 public key as ZeroMQ user id (a message's ``User-Id`` property). ``refused``
    counts refusals.
    """

    def __init__(self, factory: ZmqFactory, settings: CurveServer) -> None:
        self.settings = settings
        self.refused = 0
        self.socket = ZmqSocket(factory, zmq.ROUTER, SocketOptions(), self._received)
        self.socket.bind(ZAP_ENDPOINT)

    def _received(self, frames: list[bytes]) -> None:
        # [routing id, b"", version, request id, domain, address, identity, mechanism, creds...]
        if len(frames) < 8 or frames[1] != b"":
            log.warn("malformed ZAP request ignored ({n} frames)", n=len(frames))
            return
        envelope, version, request_id = frames[:2], frames[2], frames[3]
        mechanism, credentials = frames[7], frames[8:]
        status, text, user = b"400", b"No access", b""
        if version != b"1.0":
            status, text = b"500", b"Version not supported"
        elif mechanism == b"CURVE" and credentials and len(credentials[0]) == 32:
            public = z85.encode(credentials[0])
            if self.settings.allows(public):
                status, text, user = b"200", b"OK", public
            else:
                self.refused += 1
                log.info(
                    "CURVE client {key} refused (not among the allowed client keys), from "
                    "{address}",
                    key=public.decode("ascii"),
                    address=frames[5].decode("ascii", "replace"),
                )
        self.socket.send([*envelope, b"1.0", request_id, status, text, user, b""])

    def close(self) -> None:
        """Stop answering (and unbind)."""
        self.socket.close()


def curve_error(dest: str, event: int, value: int) -> CurveRefused:
    """The error for a failed handshake (a monitor event) with ``dest``."""
    if event == zmq.EVENT_HANDSHAKE_FAILED_AUTH:
        why = f"the server refused this client's CURVE key (ZAP status {value})"
    elif event == zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL:
        why = "ZeroMQ handshake failed (CURVE on one side only, or a protocol error)"
    else:
        why = "ZeroMQ handshake failed (wrong server key, or CURVE on one side only)"
    return CurveRefused(f"{DestinationUnreachable.wire}: {dest}: {why}")


def is_handshake_failure(event: int) -> bool:
    """Whether a monitor event says a ZMTP/CURVE handshake failed."""
    return event in _HANDSHAKE_FAILURES


_HANDSHAKE_FAILURES = frozenset(
    (
        zmq.EVENT_HANDSHAKE_FAILED_AUTH,
        zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL,
        zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL,
    )
)


def keys_of(values: Iterable[str | bytes]) -> frozenset[bytes]:
    """Z85 keys from texts (each checked)."""
    return frozenset(parse_key(v) for v in values)
