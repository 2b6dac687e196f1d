"""DHT fuzz, the big run: generated hostile datagrams against a live DHT node.

    python bench/dht_fuzz.py [COUNT] [SEED]     # COUNT defaults to 100000

The node runs on the in-memory network of the tests (no socket, a Clock), with a live
neighbour it looks keys up through; a probe checks between batches of 50 datagrams that a
valid ping is still answered. Prints what the node counted: every datagram's outcome, drops
per reason, error replies per code. Exits 1 if a datagram raised, went uncounted, or a valid
query or lookup went unanswered. The generator is tests/dhtfuzz.py (tests/test_dht_fuzz.py
runs 5,000 of the same in CI).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.dhtfuzz import run_fuzz

BUG_REASONS = ("internal error", "handler error", "handler bug", "reply not encodable")


def main() -> int:
    count = int(sys.argv[1]) if len(sys.argv) > 1 else 100_000
    seed = int(sys.argv[2]) if len(sys.argv) > 2 else 0
    start = time.perf_counter()
    r = run_fuzz(count, seed=seed)
    took = time.perf_counter() - start
    print(f"{r.datagrams} hostile datagrams (seed {seed}) in {took:.1f} s")
    print(f"delivered to the node in all: {r.delivered} (with probes and neighbour traffic)")
    print(
        f"counted outcomes: {sum(r.received.values())}  "
        + ", ".join(f"{k} {v}" for k, v in r.received.most_common())
    )
    print("dropped per reason:")
    for reason, n in r.dropped.most_common():
        print(f"  {n:8d}  {reason}")
    print("error replies per code: " + ", ".join(f"{c}: {n}" for c, n in sorted(r.refused.items())))
    print(
        f"probes answered: {r.probes_answered}/{r.probes}; lookups ended: "
        f"{r.lookups_done}/{r.lookups}; routing table: {r.routing}; sources tracked: "
        f"{r.sources_tracked}"
    )
    bugs = sum(n for reason, n in r.dropped.items() if reason.startswith(BUG_REASONS))
    ok = (
        bugs == 0
        and sum(r.received.values()) == r.delivered
        and r.probes_answered == r.probes
        and r.lookups_done == r.lookups
    )
    print("OK" if ok else f"FAILED (exceptions: {bugs})")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
