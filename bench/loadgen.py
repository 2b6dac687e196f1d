#!/usr/bin/env python3
"""Small, bounded load generators for the benchmarks (stdlib + bencode2 only).

Two generators, each one process on one core, each printing one JSON line of results:

``udp``: KRPC queries to a DHT node with a bounded window of outstanding queries::

    python bench/loadgen.py udp 127.0.0.1:20001 --seconds 10 --window 64 \
        [--query get_peers|ping|find_node] [--info-hash rpc_test] [--echo]

  Every query carries the same valid 20-byte ``id`` and a 4-byte transaction id, is sent
  from one socket, and is matched to its reply by ``t``. A reply ``y=r`` counts as answered,
  ``y=e`` as an error; a query unanswered after ``--timeout`` seconds counts as lost and
  frees its window slot. ``--echo`` also accepts ``y=q`` replies (for measuring this
  generator's own ceiling against a UDP echo server).

``http``: keep-alive HTTP/1.1 requests with a fixed body, one request in flight per
connection (no pipelining), over non-blocking sockets on one epoll loop::

    python bench/loadgen.py http http://127.0.0.1:30001/lookup --body '{"rid":"...","data":"x"}' \
        --seconds 10 --connections 32

  It is the fallback when ``wrk`` is not installed. It runs Python code per request, so
  check its ceiling against a trivial server first (``bench/grape.py`` does: about 90k
  req/s on one core of the project's machine, close to wrk's), and expect different
  latencies from wrk's.

Both stop by themselves after ``--seconds`` (plus at most one timeout), and report
``count`` (answered requests), ``rate`` (per second), ``p50_us``/``p99_us`` latencies and the
error counters.
"""

from __future__ import annotations

import argparse
import json
import os
import select
import socket
import struct
import sys
import time
from typing import Any
from urllib.parse import urlsplit

import bencode2


def _percentile(sorted_values: list[float], fraction: float) -> float:
    if not sorted_values:
        return float("nan")
    index = min(len(sorted_values) - 1, max(0, round(fraction * len(sorted_values)) - 1))
    return sorted_values[index]


def _latency_summary(latencies: list[float]) -> dict[str, float]:
    latencies.sort()
    return {
        "p50_us": round(_percentile(latencies, 0.50) * 1e6, 1),
        "p90_us": round(_percentile(latencies, 0.90) * 1e6, 1),
        "p99_us": round(_percentile(latencies, 0.99) * 1e6, 1),
        "max_us": round((latencies[-1] if latencies else float("nan")) * 1e6, 1),
    }


# --------------------------------------------------------------------------------------------
# UDP / KRPC
# --------------------------------------------------------------------------------------------


def krpc_query_parts(query: str, node_id: bytes, info_hash: bytes) -> tuple[bytes, bytes]:
    """The bytes of a canonical KRPC query before and after the value of ``t``.

    Keys in bencode order (``a``, ``q``, ``t``, ``y``), as a Node grape sends them; the caller
    puts ``4:`` + four bytes of transaction id between the two parts.
    """
    assert len(node_id) == 20
    if query == "get_peers":
        args = {b"id": node_id, b"info_hash": info_hash}
    elif query == "find_node":
        args = {b"id": node_id, b"target": info_hash}
    elif query == "ping":
        args = {b"id": node_id}
    else:
        raise ValueError(f"unsupported query {query!r}")
    a = bencode2.bencode(args)
    q = query.encode()
    head = b"d1:a" + a + b"1:q" + str(len(q)).encode() + b":" + q + b"1:t4:"
    return head, b"1:y1:qe"


def udp_load(
    host: str,
    port: int,
    seconds: float,
    window: int,
    query: str = "get_peers",
    info_hash: bytes = b"rpc_test",
    node_id: bytes | None = None,
    timeout: float = 1.0,
    echo: bool = False,
) -> dict[str, Any]:
    """Keep ``window`` KRPC queries outstanding for ``seconds``; see the module docstring."""
    node_id = node_id if node_id is not None else os.urandom(20)
    head, tail = krpc_query_parts(query, node_id, info_hash)
    pack = struct.Struct(">I").pack
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 << 20)
    sock.connect((host, port))
    sock.setblocking(False)
    send, recv = sock.send, sock.recv
    decode = bencode2.bdecode
    outstanding: dict[bytes, float] = {}
    latencies: list[float] = []
    answered = errors = lost = undecodable = unmatched = sent = 0
    sample_reply: Any = None
    counter = 0
    clock = time.perf_counter
    start = clock()
    end = start + seconds
    next_expiry = start + timeout / 4
    now = start
    try:
        while now < end:
            while len(outstanding) < window:
                counter = (counter + 1) & 0xFFFFFFFF
                t = pack(counter)
                try:
                    send(head + t + tail)
                except BlockingIOError:
                    break
                except ConnectionRefusedError:
                    # ICMP port unreachable from an earlier datagram: the server is gone.
                    raise SystemExit(f"udp: {host}:{port} refused (no server?)") from None
                outstanding[t] = clock()
                sent += 1
            got = 0
            while True:
                try:
                    data = recv(65535)
                except BlockingIOError:
                    break
                except ConnectionRefusedError:
                    raise SystemExit(f"udp: {host}:{port} refused (no server?)") from None
                got += 1
                arrived = clock()
                try:
                    message = decode(data)
                    t = message[b"t"]
                    y = message[b"y"]
                except Exception:
                    undecodable += 1
                    continue
                sent_at = outstanding.pop(t, None)
                if sent_at is None:
                    unmatched += 1
                    continue
                if y == b"r" or (echo and y == b"q"):
                    answered += 1
                    latencies.append(arrived - sent_at)
                    if sample_reply is None:
                        sample_reply = message
                else:
                    errors += 1
                if got >= window:
                    break
            now = clock()
            if now >= next_expiry:
                next_expiry = now + timeout / 4
                limit = now - timeout
                stale = [t for t, at in outstanding.items() if at < limit]
                for t in stale:
                    del outstanding[t]
                lost += len(stale)
            if not got:
                select.select([sock], [], [], 0.002)
                now = clock()
        elapsed = now - start
    finally:
        sock.close()
    result: dict[str, Any] = {
        "kind": "udp",
        "target": f"{host}:{port}",
        "query": query,
        "window": window,
        "seconds": round(elapsed, 3),
        "sent": sent,
        "count": answered,
        "rate": round(answered / elapsed, 1) if elapsed > 0 else 0.0,
        "errors": errors,
        "lost": lost,
        "in_flight_at_end": len(outstanding),
        "undecodable": undecodable,
        "unmatched": unmatched,
        **_latency_summary(latencies),
    }
    if sample_reply is not None:
        result["sample_reply_keys"] = sorted(
            k.decode() for k in (sample_reply.get(b"r") or sample_reply.get(b"a") or {})
        )
    return result


# --------------------------------------------------------------------------------------------
# HTTP (fallback for wrk)
# --------------------------------------------------------------------------------------------


class _Conn:
    __slots__ = ("buf", "need", "sent_at", "sock")

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buf = b""
        self.sent_at = 0.0
        self.need = -1  # total bytes of the response being read, once its head is known


def http_load(url: str, body: bytes, seconds: float, connections: int) -> dict[str, Any]:
    """Keep-alive POSTs of ``body`` to ``url`` on ``connections`` sockets for ``seconds``."""
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    path = parts.path or "/"
    request = (
        f"POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode() + body
    ep = select.epoll()
    conns: dict[int, _Conn] = {}
    latencies: list[float] = []
    count = status_errors = read_errors = 0
    clock = time.perf_counter
    for _ in range(connections):
        s = socket.create_connection((host, port))
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        s.setblocking(False)
        c = _Conn(s)
        conns[s.fileno()] = c
        ep.register(s.fileno(), select.EPOLLIN)
    start = clock()
    end = start + seconds
    for c in conns.values():
        c.sent_at = clock()
        c.sock.send(request)
    now = start
    try:
        while now < end and conns:
            events = ep.poll(0.05)
            now = clock()
            for fd, _ in events:
                c = conns[fd]
                try:
                    data = c.sock.recv(65536)
                except BlockingIOError:
                    continue
                except OSError:
                    data = b""
                if not data:
                    read_errors += 1
                    ep.unregister(fd)
                    c.sock.close()
                    del conns[fd]
                    continue
                c.buf += data
                while True:
                    if c.need < 0:
                        head_end = c.buf.find(b"\r\n\r\n")
                        if head_end < 0:
                            break
                        head = c.buf[:head_end].lower()
                        i = head.find(b"content-length:")
                        length = 0
                        if i >= 0:
                            j = head.find(b"\r\n", i)
                            length = int(head[i + 15 : j if j >= 0 else None])
                        c.need = head_end + 4 + length
                        if not c.buf.startswith(b"HTTP/1.1 2"):
                            status_errors += 1
                    if len(c.buf) < c.need:
                        break
                    c.buf = c.buf[c.need :]
                    c.need = -1
                    count += 1
                    latencies.append(now - c.sent_at)
                    if now < end:
                        c.sent_at = clock()
                        c.sock.send(request)
        elapsed = clock() - start
    finally:
        for c in conns.values():
            c.sock.close()
        ep.close()
    return {
        "kind": "http",
        "target": url,
        "connections": connections,
        "seconds": round(elapsed, 3),
        "count": count,
        "rate": round(count / elapsed, 1) if elapsed > 0 else 0.0,
        "status_errors": status_errors,
        "read_errors": read_errors,
        **_latency_summary(latencies),
    }


# --------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="kind", required=True)
    udp = sub.add_parser("udp", help="KRPC queries over UDP")
    udp.add_argument("target", help="host:port of the DHT socket")
    udp.add_argument("--seconds", type=float, default=10.0)
    udp.add_argument("--window", type=int, default=64, help="outstanding queries")
    udp.add_argument("--query", default="get_peers", choices=["get_peers", "find_node", "ping"])
    udp.add_argument("--info-hash", default="rpc_test", help="UTF-8 text (default: rpc_test)")
    udp.add_argument("--timeout", type=float, default=1.0, help="seconds before a query is lost")
    udp.add_argument("--echo", action="store_true", help="count echoed queries as answers")
    http = sub.add_parser("http", help="keep-alive HTTP POSTs")
    http.add_argument("url")
    http.add_argument("--body", default="{}")
    http.add_argument("--seconds", type=float, default=10.0)
    http.add_argument("--connections", type=int, default=32)
    args = parser.parse_args(argv)
    if not 0 < args.seconds <= 3600:
        parser.error("--seconds must be in (0, 3600]")
    if args.kind == "udp":
        host, _, port = args.target.rpartition(":")
        result = udp_load(
            host or "127.0.0.1",
            int(port),
            args.seconds,
            args.window,
            query=args.query,
            info_hash=args.info_hash.encode(),
            timeout=args.timeout,
            echo=args.echo,
        )
    else:
        result = http_load(args.url, args.body.encode(), args.seconds, args.connections)
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
