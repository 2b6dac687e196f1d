"""The Grenache framing of RPC over HTTP: request and reply bodies, ``grc-compress``, the
``_gr`` header, what a stream's head carries, and how replies map to errors.

Everything here is pure (bytes in, values or bytes out); the server and client of
:mod:`grenache.transports.http` use it. The wire formats are in docs/protocol.rst,
*RPC over HTTP* and *HTTP streaming*.
"""

from __future__ import annotations

import re
import zlib
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

import attrs
from twisted.logger import Logger
from twisted.python.failure import Failure

from grenache import errors
from grenache.codec import json_dumps, json_loads
from grenache.http.messages import HTTPResponse
from grenache.peer import Reply, error_message

__all__ = [
    "DEFAULT_MAX_BODY_SIZE",
    "DEFAULT_MAX_REPLY_SIZE",
    "BodyTooLarge",
    "StreamMeta",
    "gunzip",
    "gzip",
    "header_json",
    "node_meta",
    "parse_reply",
    "rpc_reply",
    "stream_head",
    "stream_meta",
]

log = Logger()

DEFAULT_MAX_BODY_SIZE = 8 * 1024 * 1024
"""Server limit on a request body, before and after gunzip. Node has none; 8 MiB keeps a
misbehaving client from holding much memory while leaving room for large RPC payloads."""

DEFAULT_MAX_REPLY_SIZE = 64 * 1024 * 1024
"""Client limit on a reply body, before and after gunzip (replies are often the big side)."""

GR_ERROR = HTTPResponse(500, b'[null, "ERR_HEADER_PARSE_GR", null]')
PARSE_ERROR = HTTPResponse(400, b'[null,"ERR_REQUEST_PARSE",null]')
TOO_LARGE = HTTPResponse(413, b'[null,"ERR_REQUEST_TOO_LARGE",null]')


class BodyTooLarge(ValueError):
    """A body (after gunzip) exceeded its limit."""


def gzip(data: bytes) -> bytes:
    """Gzip ``data`` as Node's ``zlib.gzip`` does (default level, zlib's gzip header)."""
    c = zlib.compressobj(zlib.Z_DEFAULT_COMPRESSION, zlib.DEFLATED, 31)
    return c.compress(data) + c.flush()


def gunzip(data: bytes, limit: int | None = None) -> bytes:
    """Inflate a gzip stream (several members allowed, as Node's ``zlib.gunzip``).

    Raises ``zlib.error`` or ``ValueError`` when ``data`` is not complete gzip, and
    :class:`BodyTooLarge` as soon as the output would exceed ``limit`` bytes (so a small
    compressed body cannot expand without bound).
    """
    out: list[bytes] = []
    total = 0
    while True:
        d = zlib.decompressobj(31)
        if limit is None:
            chunk = d.decompress(data)
        else:
            chunk = d.decompress(data, limit - total + 1)
            if len(chunk) > limit - total or d.unconsumed_tail:
                raise BodyTooLarge(f"body inflates to more than {limit} bytes")
        total += len(chunk)
        out.append(chunk)
        if not d.eof:
            raise ValueError("truncated gzip stream")
        data = d.unused_data
        if not data:
            break
    return b"".join(out)


def truthy(value: Any) -> bool:
    """JavaScript truthiness of a JSON value (``[]`` and ``{}`` are truthy, ``0``/``""`` not)."""
    if value is None or value is False:
        return False
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return value == value and value != 0
    if isinstance(value, str):
        return value != ""
    return True


def header_json_value(value: bytes) -> Any:
    """A header holding JSON, read as Node reads it (header bytes are latin-1 characters).

    Raises ``ValueError`` when it is not JSON, JSON nested too deep for the decoder included.
    """
    try:
        return json_loads(value.decode("latin-1"))
    except RecursionError:
        raise ValueError("JSON nested too deep") from None


@attrs.frozen
class StreamMeta:
    """What Node's ``'stream'`` event calls ``meta`` (docs/protocol.rst, *HTTP streaming*).

    ``info_headers`` is the ``_gr`` header's JSON (``[rid, key]`` from a stream client;
    ``None`` without the header); ``action`` is the ``_a`` header (``None`` if absent or
    empty); ``args`` the ``_ar`` header's JSON (``{}`` if absent or not JSON); ``is_stream``
    whether ``transfer-encoding`` is exactly ``chunked`` (Node's test); ``compress`` whether
    ``grc-compress`` says gzip. Over TLS, ``peer_certificate`` and ``peer_certificate_der``
    are the client certificate as in :class:`~grenache.peer.Request`.
    """

    info_headers: Any = None
    action: str | None = None
    args: Any = attrs.Factory(dict)
    is_stream: bool = False
    compress: bool = False
    peer_certificate: str | None = None
    peer_certificate_der: bytes | None = None

    @property
    def rid(self) -> Any:
        """``info_headers[0]`` (the stream's request id), or ``None``."""
        info = self.info_headers
        return info[0] if isinstance(info, list) and info else None

    @property
    def key(self) -> Any:
        """``info_headers[1]`` (the service name the client looked up), or ``None``."""
        info = self.info_headers
        return info[1] if isinstance(info, list) and len(info) > 1 else None


def stream_meta(
    headers: tuple[tuple[bytes, bytes], ...], certificate: tuple[str, bytes] | None = None
) -> StreamMeta:
    """Node's ``meta`` for a request with these headers; ``ValueError`` if ``_gr`` is not JSON."""
    meta, gr_ok = stream_meta_checked(headers, certificate)
    if not gr_ok:
        raise ValueError("the _gr header is not JSON")
    return meta


def stream_meta_checked(
    headers: tuple[tuple[bytes, bytes], ...], certificate: tuple[str, bytes] | None
) -> tuple[StreamMeta, bool]:
    """:func:`stream_meta`, and whether ``_gr`` (if any) was JSON (``info_headers`` is
    ``None`` when it was not)."""
    gr_ok = True
    info: Any = None
    action: str | None = None
    args: Any = {}
    compress = False
    encodings: list[bytes] = []
    seen_gr = seen_a = seen_ar = False
    for name, value in headers:
        if name == b"_gr" and not seen_gr:
            seen_gr = True
            try:
                info = header_json_value(value)
            except ValueError:
                gr_ok = False
        elif name == b"_a" and not seen_a:
            seen_a = True
            action = value.decode("latin-1") or None
        elif name == b"_ar" and not seen_ar:
            seen_ar = True
            try:
                args = header_json_value(value)
            except ValueError:
                args = {}
        elif name == b"grc-compress":
            compress = compress or b"gzip" in value
        elif name == b"transfer-encoding":
            encodings.append(value)
    meta = StreamMeta(
        info,
        action,
        args,
        b", ".join(encodings) == b"chunked",
        compress,
        certificate[0] if certificate is not None else None,
        certificate[1] if certificate is not None else None,
    )
    return meta, gr_ok


_NO_ARGS: Mapping[str, Any] = MappingProxyType({})
#: Node's meta of the common request (no _gr, _a or _ar header, not chunked), shared read-only.
PLAIN_META: Mapping[str, Any] = MappingProxyType(
    {"isStream": False, "compress": False, "action": None, "args": _NO_ARGS}
)
#: The same for a request whose body is gzipped (``grc-compress: gzip``).
GZIP_META: Mapping[str, Any] = MappingProxyType(
    {"isStream": False, "compress": True, "action": None, "args": _NO_ARGS}
)
META_HEADERS = frozenset({b"_a", b"_ar", b"transfer-encoding"})
"""Headers besides ``_gr`` and ``grc-compress`` that change a request's ``meta``."""


def node_meta(headers: tuple[tuple[bytes, bytes], ...]) -> dict[str, Any]:
    """Node's ``meta`` for a buffered request with these headers, under Node's keys.

    ``isStream`` (``transfer-encoding`` is exactly ``chunked``), ``compress``
    (``grc-compress`` holds ``gzip``), ``action`` (the ``_a`` header, ``None`` if absent or
    empty), ``args`` (the ``_ar`` header's JSON, ``{}`` when absent or not JSON), and
    ``infoHeaders`` (the ``_gr`` header's JSON) only when ``_gr`` is there. Node's ``cert`` is
    :class:`~grenache.peer.Request`'s ``peer_certificate`` instead. Requests without any of
    those headers share :data:`PLAIN_META` or :data:`GZIP_META`.
    """
    meta, _ = stream_meta_checked(headers, None)
    out: dict[str, Any] = {
        "isStream": meta.is_stream,
        "compress": meta.compress,
        "action": meta.action,
        "args": meta.args,
    }
    for name, _value in headers:
        if name == b"_gr":
            out["infoHeaders"] = meta.info_headers
            break
    return out


_TOKEN = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+\Z")
_BEYOND_LATIN1 = re.compile("[^\x00-\xff]")
_RESERVED = frozenset({b"transfer-encoding", b"content-length"})


def _escape_beyond_latin1(match: re.Match[str]) -> str:
    code = ord(match.group())
    if code < 0x10000:
        return f"\\u{code:04x}"
    code -= 0x10000
    return f"\\u{0xD800 + (code >> 10):04x}\\u{0xDC00 + (code & 0x3FF):04x}"


def header_json(value: Any) -> bytes:
    """``JSON.stringify(value)`` as Node puts it in a header (latin-1 bytes).

    Node cannot send characters beyond latin-1 in a header (it throws); they are sent here as
    JSON ``\\u`` escapes, which every JSON parser reads back as the same string.
    """
    text = json_dumps(value).decode("utf-8")
    return _BEYOND_LATIN1.sub(_escape_beyond_latin1, text).encode("latin-1")


def stream_head(dest: str, rid: str, key: str, headers: Mapping[str, Any] | None = None) -> bytes:
    """The request head Node's ``peer.stream`` sends (docs/protocol.rst, *HTTP streaming*).

    ``POST /`` with ``_gr: [rid, key]``, ``connection: close``, ``transfer-encoding:
    chunked``, then ``headers`` (string values as is, others as JSON; a name given again in
    any case replaces the earlier line in place, as Node's ``setHeader``), then ``Host``.
    Names must be HTTP tokens; ``transfer-encoding`` and ``content-length`` cannot be
    replaced (the body is chunked); values must be latin-1 without CR, LF or NUL.
    """
    lines: list[list[bytes]] = [
        [b"_gr", header_json([rid, key])],
        [b"connection", b"close"],
        [b"transfer-encoding", b"chunked"],
    ]
    host = True
    for name, value in (headers or {}).items():
        if not isinstance(name, str):
            raise TypeError(f"header names must be strings, not {name!r}")
        raw_name = name.encode("latin-1", "replace")
        if not _TOKEN.match(raw_name):
            raise ValueError(f"invalid header name {name!r}")
        lower = raw_name.lower()
        if lower in _RESERVED:
            raise ValueError(f"the {name} header of a stream cannot be replaced")
        if isinstance(value, str):
            try:
                raw_value = value.encode("latin-1")
            except UnicodeEncodeError:
                raise ValueError(f"header {name!r} holds characters beyond latin-1") from None
        else:
            raw_value = header_json(value)
        if b"\r" in raw_value or b"\n" in raw_value or b"\0" in raw_value:
            raise ValueError(f"header {name!r} holds CR, LF or NUL")
        if lower == b"host":
            host = False
        for line in lines:
            if line[0].lower() == lower:
                line[0], line[1] = raw_name, raw_value
                break
        else:
            lines.append([raw_name, raw_value])
    if host:
        lines.append([b"Host", dest.encode("latin-1")])
    parts = [b"POST / HTTP/1.1\r\n"]
    for raw_name, raw_value in lines:
        parts += (raw_name, b": ", raw_value, b"\r\n")
    parts.append(b"\r\n")
    return b"".join(parts)


# --- replies ---------------------------------------------------------------------------------


def rpc_reply(rid: Any, err: str | None, result: Any, compress: bool) -> HTTPResponse:
    """The HTTP response carrying ``[rid, err, result]`` (gzipped with ``compress``)."""
    try:
        body = json_dumps([rid, err, result])
    except (TypeError, ValueError) as e:
        body = json_dumps([rid, error_message(e), None])
    if compress:
        body = gzip(body)
    return HTTPResponse(200, body)


def reply_result(result: Any, rid: Any, compress: bool) -> HTTPResponse:
    """The reply to a handler's result; a :class:`~grenache.peer.Reply` sends its error
    and result together (an empty error is success, as Node's ``err ? err.message : null``)."""
    if isinstance(result, Reply):
        error: Any = result.error
        if isinstance(error, BaseException):
            error = error_message(error)
        return rpc_reply(rid, error or None, result.result, compress)
    return rpc_reply(rid, None, result, compress)


def reply_failure(failure: Failure, rid: Any, compress: bool) -> HTTPResponse:
    """The HTTP response for a handler that failed: its error message as the reply's error
    (docs/protocol.rst, *RPC over HTTP*); a failure that is not a
    :class:`~grenache.errors.GrenacheError` is logged at debug level.
    """
    if not failure.check(errors.GrenacheError):
        log.debug("RPC handler failed: {error}", error=error_message(failure))
    return rpc_reply(rid, error_message(failure), None, compress)


def parse_reply(
    status: int,
    body: bytes,
    *,
    compress: bool,
    rid: Any,
    limit: int | None = DEFAULT_MAX_REPLY_SIZE,
) -> Any:
    """The result of a reply, or raise the error it means (docs/protocol.rst, *RPC over HTTP*).

    - status not 2xx: ``ERR_REQUEST_PARSE`` and ``ERR_REQUEST_TOO_LARGE`` bodies (this
      project's servers) become :class:`~grenache.errors.RequestParseError` and
      :class:`~grenache.errors.RequestTooLarge`, anything else
      ``RemoteError("ERR_REQUEST_GENERIC: <body text>")``, as Node;
    - gunzip failure (when compressed): ``RemoteError("ERR_REPLY_ENCODING_COMPRESSION")``;
    - not JSON, a falsy value or not an array: ``RemoteError("ERR_REPLY_EMPTY")``;
    - a reply for another rid: ``RemoteError("ERR_REPLY_RID_MISMATCH")`` (Node drops it and
      waits forever);
    - ``[rid, err, result]`` with a truthy ``err``: ``RemoteError(err)``, its ``result``
      attribute the reply's result (Node's ``handler.reply(err, result)`` sends both).
    """
    if not 200 <= status < 300:
        text = body.decode("utf-8", "replace")
        try:
            data = json_loads(body)
        except (ValueError, RecursionError):
            data = None
        if isinstance(data, list) and len(data) > 1:
            if data[1] == errors.RequestParseError.wire:
                raise errors.RequestParseError()
            if data[1] == errors.RequestTooLarge.wire:
                raise errors.RequestTooLarge()
        raise errors.RemoteError(f"ERR_REQUEST_GENERIC: {text}")
    if compress:
        try:
            body = gunzip(body, limit)
        except BodyTooLarge:
            raise errors.RequestTooLarge("ERR_REPLY_TOO_LARGE") from None
        except (zlib.error, ValueError):
            raise errors.RemoteError("ERR_REPLY_ENCODING_COMPRESSION") from None
    try:
        data = json_loads(body)
    except (ValueError, RecursionError):
        raise errors.RemoteError("ERR_REPLY_EMPTY") from None
    if not truthy(data) or not isinstance(data, list):
        raise errors.RemoteError("ERR_REPLY_EMPTY")
    n = len(data)
    reply_rid = data[0] if n > 0 else None
    err = data[1] if n > 1 else None
    if reply_rid != rid:
        raise errors.RemoteError("ERR_REPLY_RID_MISMATCH")
    result = data[2] if n > 2 else None
    if truthy(err):
        # Node's handler.reply(err, result) sends both; the result rides on the error.
        raise errors.RemoteError(err if isinstance(err, str) else json_dumps(err).decode(), result)
    return result
