"""The grape's HTTP API, answering exactly as grenache-grape 1.0.0 does.

The wire format is in docs/protocol.rst, *Grape HTTP API*.

Every request is ``{"rid": ..., "data": ...}`` in the body; the operation is the request target
minus its leading ``/``, used verbatim (so ``/lookup?x=1`` and ``/LOOKUP`` are unknown
operations, as in Node). The method and the headers are ignored. The mapping to the wire:

=========================================  ======  ==========================================
case                                       status  body
=========================================  ======  ==========================================
result                                     200     ``JSON.stringify(result)``
no result (get found nothing)              200     empty
body not UTF-8 JSON (empty body too)       500     ``ERR_GRAPE_PAYLOAD_INVALID`` (plain text)
body over ``max_body_size``                413     ``ERR_GRAPE_PAYLOAD_SIZE`` (plain text)
KRPC error with a 3xx code (301, 302)      code    the message as a JSON string
``GrapeDataInvalid`` (bad ``data`` shape)  500     the message (plain text)
any other ``GrenacheError``                200     the message as a JSON string
anything else (a bug)                      500     ``ERR_GRAPE_GENERIC`` (plain text, logged)
=========================================  ======  ==========================================

No ``Content-Type`` is sent, as Node sends none. Everything about operations lives in the
``dispatch`` callable; this module only parses the envelope and maps outcomes to HTTP, so
unknown operations are dispatched too (the dispatcher answers ``GrapeRequestNotFound``).

Deliberate differences from Node 1.0.0:

- A body that is JSON but not an object (``null``, a number, a string, an array) is answered
  500 ``ERR_GRAPE_PAYLOAD_INVALID: body must be a JSON object``. Node reads ``msg.data`` from
  whatever was parsed: for ``null`` it answers 500 with a JavaScript TypeError text
  (``Cannot read properties of null (reading 'data')``); for the other values ``data`` is
  ``undefined`` and the operation runs on it.
- JSON nested deeper than Python's recursion limit (about 1000 levels, which fits in the
  8 KiB default) is treated as not JSON; Node's ``JSON.parse`` would accept it.
- Malformed HTTP, oversized headers, idle connections, slow headers and bodies (408) and
  clients that do not read (dropped) are handled by :mod:`grenache.http.server` where Node
  has its own defaults.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from grenache.codec import json_dumps, json_loads
from grenache.errors import GrapeDataInvalid, GrenacheError, KRPCError
from grenache.http.messages import HTTPRequest, HTTPResponse
from grenache.http.server import HTTPServerFactory

__all__ = ["Dispatch", "GrapeHTTPAPI", "grape_http_factory"]

log = Logger()

Dispatch = Callable[[str, Any], Any]
"""``dispatch(operation, data)``: a JSON-able result (``None`` for an empty body), or a Deferred
(or coroutine) of one. A result answered at once is answered at once: no Deferred at all."""

PAYLOAD_INVALID = HTTPResponse(500, b"ERR_GRAPE_PAYLOAD_INVALID")
PAYLOAD_NOT_OBJECT = HTTPResponse(500, b"ERR_GRAPE_PAYLOAD_INVALID: body must be a JSON object")
PAYLOAD_SIZE = HTTPResponse(413, b"ERR_GRAPE_PAYLOAD_SIZE")
GENERIC = HTTPResponse(500, b"ERR_GRAPE_GENERIC")
_EMPTY = HTTPResponse(200, b"")
_PLAIN_RESULTS = frozenset({list, dict, str, int, float, bool, type(None)})


def _plain(text: str) -> bytes:
    """Text as Node writes a string body: UTF-8, each lone surrogate as U+FFFD."""
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError:
        return _well_formed(text).encode("utf-8")


def _well_formed(text: str) -> str:
    """``text`` with surrogate pairs joined and lone surrogates replaced, as JS would encode it."""
    return text.encode("utf-16-le", "surrogatepass").decode("utf-16-le", "replace")


class GrapeHTTPAPI:
    """The request handler: envelope in, dispatch, outcome mapped to an :class:`HTTPResponse`."""

    def __init__(self, dispatch: Dispatch) -> None:
        self._dispatch = dispatch
        # The last lookup answer and its response: most lookups repeat the previous answer
        # (one service, many callers; every caller of a shared DHT walk), and a list of
        # strings equal to it has the same JSON, so the response is reused.
        self._last_lookup: tuple[list[str], HTTPResponse] | None = None

    def __call__(self, request: HTTPRequest) -> HTTPResponse | Deferred[HTTPResponse]:
        """Answer one API request (see the module docstring for the mapping)."""
        try:
            message = json_loads(request.body)
        except (ValueError, RecursionError):
            return PAYLOAD_INVALID
        if not isinstance(message, dict):
            return PAYLOAD_NOT_OBJECT
        path = request.path
        operation = path[1:] if path.startswith("/") else path
        try:
            d = self._dispatch(operation, message.get("data"))
        except Exception:
            return _failure(Failure(), operation)
        if type(d) in _PLAIN_RESULTS:  # skips the ABC check below for the usual results
            return self._result(d, operation)
        if not isinstance(d, Deferred):
            if not isinstance(d, Coroutine):
                return self._result(d, operation)
            d = Deferred.fromCoroutine(d)
        # One callback pair: this is the hot path of every API request that waits.
        return d.addCallbacks(
            self._result, _failure, callbackArgs=(operation,), errbackArgs=(operation,)
        )

    def _result(self, result: Any, operation: str) -> HTTPResponse:
        if operation == "lookup":
            last = self._last_lookup
            # Only a list of strings is kept, and only a list of strings equals one.
            if last is not None and last[0] == result:
                return last[1]
            response = _result(result, operation)
            if type(result) is list and all(type(peer) is str for peer in result):
                self._last_lookup = (list(result), response)
            return response
        return _result(result, operation)


def _result(result: Any, operation: str) -> HTTPResponse:
    if result is None:
        return _EMPTY
    try:
        return HTTPResponse(200, json_dumps(result))
    except Exception:
        log.failure(
            "Grape API operation {operation!r} returned {result!r}",
            operation=operation,
            result=result,
        )
        return GENERIC


def _failure(failure: Failure, operation: str) -> HTTPResponse:
    error = failure.value
    if isinstance(error, KRPCError) and isinstance(error.code, int) and 300 <= error.code <= 399:
        return HTTPResponse(error.code, json_dumps(error.message))
    if isinstance(error, GrapeDataInvalid):
        return HTTPResponse(500, _plain(error.message))
    if isinstance(error, GrenacheError):
        try:
            return HTTPResponse(200, json_dumps(error.message))
        except ValueError:  # lone surrogates, which the codec cannot write as UTF-8
            return HTTPResponse(200, json_dumps(_well_formed(error.message)))
    log.failure("Grape API operation {operation!r} failed", failure, operation=operation)
    return GENERIC


def grape_http_factory(
    dispatch: Dispatch, clock: IReactorTime, max_body_size: int | None = 8192, **limits: Any
) -> HTTPServerFactory:
    """An :class:`HTTPServerFactory` serving the grape API through ``dispatch``.

    ``max_body_size`` is the grape's ``check_maxPayloadSize`` (``None``: no limit). ``limits``
    are the factory's other keywords (``header_timeout``, ``min_body_rate``, ``body_grace``,
    ``output_timeout``, ``max_pipeline``, ``idle_timeout``, ``max_header_size``), with the
    factory's defaults when not given: a client that does not read, or sends its request
    slowly, cannot hold the grape's memory or connections (docs/protocol.rst,
    *Grape HTTP API*).
    """
    return HTTPServerFactory(
        GrapeHTTPAPI(dispatch),
        clock,
        max_body_size=max_body_size,
        too_large=PAYLOAD_SIZE,
        **limits,
    )
