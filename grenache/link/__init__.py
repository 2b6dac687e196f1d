"""The link: a client of a grape's API (grenache-nodejs-link 1.0.2; docs/protocol.rst, *Link*).

A :class:`Link` sends the four grape operations (``lookup``, ``announce``, ``put``, ``get``) to
one grape, over its HTTP API (an ``http://`` URL: ``POST {grape}/{type}`` with the body
``{"rid":"<uuid4>","data":...}``, exactly as the Node link sends it) or over this project's
grape WebSocket API (a ``ws://`` URL: frames ``[rid, type, data]`` answered by
``[rid, err, result]``, see :mod:`grenache.grape.api_ws`). Both sit behind one interface,
:class:`~grenache.link.client.GrapeClient`, chosen once from the URL; host names and IPv6
literals work in the URL (``http://grape.internal:30001``, ``ws://[::1]:30002``).

What it keeps from the Node link:

- one grape request per identical ``(type, data)`` in flight: concurrent callers share the
  reply (request coalescing);
- a bounded LRU cache of lookups, ``lookup_cache_ttl`` seconds from insertion (not refreshed
  by reads), ``lookup_cache_size`` entries;
- immediate retries (no back-off) up to ``retry`` attempts, 3 for lookup and announce, and a
  per-call ``timeout`` for each attempt (Node's ``opts``), ``request_timeout`` by default;
- ``get``'s object form passed to the grape: ``salt``, ``cache=False`` and further
  ``options``;
- ``startAnnouncing``'s jitter formula: each gap is uniform in ``[0.5, 1.5) * interval``.

What it adds: :meth:`Link.unannounce` (the ``unannounce`` operation of grenache-grape's
development branch, which Python grapes serve), and :meth:`Link.stop_announcing` uses it, so
a stopped service leaves lookups at once; against a Node grape, which lacks it, the service
leaves when its last announce expires, as before, and nothing fails.

Where it deliberately differs (each is a bug or a trap in Node 1.0.2):

- **Empty lookups are not cached.** Node caches ``[]`` (truthy in JS) and so hides a service
  that appears during the next 10 s. Here ``[]`` raises :class:`~grenache.errors.LookupEmpty`
  and the next lookup asks the grape again.
- **Only transport failures are retried** (grape unreachable, connection reset or closed,
  timeout). An answer from the grape, error or not, is final: Node retries everything, which
  triples the time an error string takes to arrive and re-sends puts.
- **Error strings are errors.** Node hands an announce's ``"ERR_GRAPE_SERVICE_PORT"`` or
  ``"No nodes to query"`` to the caller as a *successful* result. Here a result of the
  wrong type for the operation (announce: a number, put: a 40-hex key, lookup: a list, get: an
  object or nothing) raises :class:`~grenache.errors.GrapeReplyError` carrying the grape's
  string and the HTTP status, as a non-2xx reply does.
- **The re-announce interval defaults to 40 s**, so the longest gap (60 s) stays below the
  80 s a grape with the documented 120 s peer max age keeps a peer at least. Node's
  default of 120 s gives gaps of up to 180 s, and services drop out of lookups between
  announces.
- **A get that finds nothing gives** ``None`` (Node gives ``""``), and found items are
  :class:`Item` objects.
- **Mutable puts can be signed here** (ed25519, the BEP 44 signature buffer) from a 32-byte
  seed; the Node link 1.0 dropped ``putMutable`` and expects callers to send ``k``/``sig``,
  which :meth:`Link.put` takes too (and checks before sending).
- **A URL that points at the grape's other API** (``http://`` at the WebSocket API, ``ws://``
  at the HTTP API) fails at once with :class:`~grenache.errors.GrapeWrongAPI`, whose message
  names the URL to use.
- **Every request ends within** ``request_timeout`` (one timer per grape request, shared by
  its coalesced callers) with a reply or :class:`~grenache.errors.RequestTimeout`.

The link needs no explicit :meth:`Link.start`: the first request starts it. :meth:`Link.stop`
stops every announcing loop, fails the requests still in flight with
:class:`~grenache.errors.LinkStopped`, drops the cache and closes the pooled HTTP connections or
the WebSocket; a request made afterwards starts the link again.

Modules: :mod:`~grenache.link.link` (the :class:`Link`), :mod:`~grenache.link.client`,
:mod:`~grenache.link.http` and :mod:`~grenache.link.ws` (the grape clients),
:mod:`~grenache.link.announce` (announcing loops), :mod:`~grenache.link.results` and
:mod:`~grenache.link.item` (what answers mean).
"""

from grenache.link.announce import ANNOUNCE_JITTER
from grenache.link.client import GrapeClient, grape_client
from grenache.link.http import HTTPGrapeClient
from grenache.link.item import Item
from grenache.link.link import DEFAULT_ANNOUNCE_INTERVAL, DEFAULT_GRAPE, Link
from grenache.link.ws import WSGrapeClient

__all__ = [
    "ANNOUNCE_JITTER",
    "DEFAULT_ANNOUNCE_INTERVAL",
    "DEFAULT_GRAPE",
    "GrapeClient",
    "HTTPGrapeClient",
    "Item",
    "Link",
    "WSGrapeClient",
    "grape_client",
]
