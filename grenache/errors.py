"""One exception hierarchy for the whole package.

Every error knows the string that Node.js Grenache puts on the wire for it (``wire``), so a
Python grape or peer can answer exactly as a Node one would, and a Python client can map what a
Node grape or peer sends back to a typed exception.
"""

from __future__ import annotations


class GrenacheError(Exception):
    """Base class. ``wire`` is the error string as it travels between Grenache processes."""

    wire: str = "ERR_GRENACHE"

    def __init__(self, message: str | None = None) -> None:
        super().__init__(message if message is not None else self.wire)

    @property
    def message(self) -> str:
        """The text sent on the wire for this error (Node's ``err.message``)."""
        return str(self.args[0])


# --- DHT (KRPC, BEP 5, BEP 44) ------------------------------------------------------------


class DHTError(GrenacheError):
    """A DHT operation failed."""

    wire = "ERR_DHT"


class KRPCError(DHTError):
    """A remote node answered a query with a KRPC error ``[code, message]``.

    Node joins the two with a space (``"302 sequence number less than current"``), and Grape
    copies a numeric code into the HTTP status, so both are kept.
    """

    def __init__(self, code: int, text: str) -> None:
        self.code = code
        self.text = text
        super().__init__(f"{code} {text}")


class KRPCTimeout(DHTError):
    """A remote node did not answer a query within the KRPC timeout (2 s as in Node)."""

    wire = "ETIMEDOUT"


class KRPCUnexpectedNode(DHTError):
    """A reply came from a node id other than the one the query was sent to."""

    wire = "Unexpected node id"


class KRPCClosed(DHTError):
    """The DHT socket was closed while the query was in flight."""

    wire = "ERR_DHT_CLOSED"


class NoNodesToQuery(DHTError):
    """An announce or put found no node to send to (Node's exact message)."""

    wire = "No nodes to query"


class AllQueriesFailed(DHTError):
    """Every announce or put query failed with an error that is not a 3xx KRPC error."""

    wire = "All queries failed"


class InvalidPut(DHTError):
    """A put's arguments were refused before anything was sent (Node's validation messages)."""


# --- Grape API ----------------------------------------------------------------------------


class GrapeAPIError(GrenacheError):
    """An error a grape's API answers with (HTTP 200 and a JSON string, as Node does)."""


class GrapeLookupInvalid(GrapeAPIError):
    """``/lookup`` data is not a non-empty string."""

    wire = "ERR_GRAPE_LOOKUP"


class GrapeAnnounceInvalid(GrapeAPIError):
    """``/announce`` data is not an array."""

    wire = "ERR_GRAPE_ANNOUNCE"


class GrapeServicePortInvalid(GrapeAPIError):
    """``/announce`` port is not an integer in 0..65535."""

    wire = "ERR_GRAPE_SERVICE_PORT"


class GrapeHashFormat(GrapeAPIError):
    """``/get`` hash is not a 40-character hex string."""

    wire = "ERR_GRAPE_HASH_FORMAT"


class GrapeRequestNotFound(GrapeAPIError):
    """Unknown API path or WebSocket request type."""

    wire = "ERR_REQ_NOTFOUND"


class GrapePayloadInvalid(GrapeAPIError):
    """The API body is not JSON (HTTP 500, plain text, as Node)."""

    wire = "ERR_GRAPE_PAYLOAD_INVALID"


class GrapePayloadSize(GrapeAPIError):
    """The API body is larger than the configured limit (HTTP 413, plain text, as Node)."""

    wire = "ERR_GRAPE_PAYLOAD_SIZE"


class GrapeDataInvalid(GrapeAPIError):
    """``data`` has the wrong shape for the operation (Node answers 500 with an exception text)."""

    wire = "ERR_GRAPE_DATA_INVALID"


# --- Link, peers and transports -------------------------------------------------------------


class LinkError(GrenacheError):
    """The link could not complete a grape request."""

    wire = "ERR_GRAPE"


class LookupEmpty(LinkError):
    """A lookup found no peer for the name (the Node link's ``ERR_GRAPE_LOOKUP_EMPTY``)."""

    wire = "ERR_GRAPE_LOOKUP_EMPTY"


class GrapeUnreachable(LinkError):
    """The grape's API could not be reached."""

    wire = "ERR_GRAPE_UNREACHABLE"


class RequestTimeout(GrenacheError):
    """A request got no reply within its timeout."""

    wire = "ERR_TIMEOUT"


class TransportClosed(GrenacheError):
    """The connection carrying a request closed before the reply arrived."""

    wire = "ERR_TRANSPORT_CLOSE"


class RequestParseError(GrenacheError):
    """A peer could not parse the request it was sent."""

    wire = "ERR_REQUEST_PARSE"


class HandlerTimeout(GrenacheError):
    """The server's handler did not answer within the server's handler deadline.

    The server sends this string as the reply's error and discards the handler's late
    outcome (cancelling it when it is a Deferred or a coroutine). A Python client sees a
    :class:`RemoteError` with this message, a Node client an ``err.message`` equal to it.
    """

    wire = "ERR_HANDLER_TIMEOUT"


class RemoteError(GrenacheError):
    """The remote handler answered with an error; ``message`` is its string as sent.

    ``result`` is the result the reply carried beside the error (Node's
    ``handler.reply(err, result)``; :class:`grenache.peer.Reply` on this side), ``None`` when
    it carried none.
    """

    def __init__(self, message: str | None = None, result: object = None) -> None:
        super().__init__(message)
        self.result = result


class DestinationUnreachable(GrenacheError):
    """No connection could be made to the chosen destination (refused, reset, no route)."""

    wire = "ERR_REQUEST_GENERIC"


class RequestTooLarge(GrenacheError):
    """A request or reply body exceeded the configured limit."""

    wire = "ERR_REQUEST_TOO_LARGE"


class GrapeReplyError(LinkError):
    """A grape answered a link request with an error string instead of the operation's result.

    Two shapes reach the link (docs/protocol.rst, *Link*): a non-2xx HTTP reply, whose body
    (JSON-decoded when it parses, raw text otherwise) is the message, e.g. status 302 and
    ``"302 sequence number less than current"``; and a 2xx reply whose JSON result has the wrong
    type for the operation, e.g. ``"No nodes to query"`` or ``"ERR_GRAPE_SERVICE_PORT"`` where an
    announce count was expected. ``message`` (and ``wire``) is the grape's string as sent;
    ``status`` is the HTTP status, or ``None`` when the reply came over the WebSocket API.
    """

    wire = "ERR_GRAPE_REPLY"

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.wire = message
        self.status = status


class LinkStopped(LinkError):
    """The link was stopped while the request was waiting for its reply."""

    wire = "ERR_LINK_STOPPED"


class TLSHandshakeError(DestinationUnreachable):
    """The TLS handshake with the destination failed (untrusted or refused certificate).

    A kind of :class:`DestinationUnreachable`: the request never reached a handler.
    """


class WrongProtocol(DestinationUnreachable):
    """The destination answered, but speaks another protocol than the one asked for.

    For example an HTTP client at a WebSocket service, or a ``http://`` grape URL that points at
    a grape's WebSocket API. ``message`` says what was expected and what answered, so that the
    user can fix the transport or URL. A kind of :class:`DestinationUnreachable`: the request
    never reached a handler.
    """


class GrapeWrongAPI(GrapeUnreachable, WrongProtocol):
    """The grape URL points at the grape's other API: an ``http://`` URL at its WebSocket API,
    or a ``ws://`` URL at its HTTP API. ``message`` names the URL to use instead.

    A :class:`GrapeUnreachable` (the link got no grape answer) and a :class:`WrongProtocol`;
    never retried, since every attempt would meet the same port.
    """

    wire = "ERR_GRAPE_WRONG_API"
