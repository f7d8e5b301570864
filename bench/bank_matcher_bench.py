"""The bank matcher over a database bank: how long a process takes to build its PDQ index from
the database, and what one upload's lookup costs through `pipeline.banks.BankMatcher` (the
catch-up query, the sha256 query and the eight dihedral PDQ lookups, in its own transaction),
on SQLite by default.  The bank is N random PDQ entries written straight into the table; each
query is a stored hash with 10 bits flipped plus seven random dihedral hashes.  Figures only.
"""

from __future__ import annotations

import argparse
import datetime as dt
import tempfile
import time
from pathlib import Path

import numpy as np
from sqlalchemy import insert, update

from pipeline.banks import BankMatcher, Query
from pipeline.hashing.pdq import DihedralPdq
from review import Database
from review.schema import BankCounter, BankEntry


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    ap.add_argument("--size", type=int, default=1_000_000, help="bank entries")
    ap.add_argument("--queries", type=int, default=500)
    ap.add_argument("--url", default=None, help="a database URL (default: a new SQLite file)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        url = args.url or f"sqlite:///{Path(tmp) / 'bank.db'}"
        db = Database(url)
        try:
            run(db, args.size, args.queries)
        finally:
            db.dispose()
    return 0


def run(db: Database, n: int, n_queries: int) -> None:
    db.upgrade()
    rng = np.random.default_rng(1)
    codes = rng.integers(0, 256, (n, 32), dtype=np.uint8)
    at = dt.datetime(2026, 12, 6, tzinfo=dt.UTC)
    t0 = time.perf_counter()
    with db.transaction() as s:
        for i in range(0, n, 50_000):
            s.execute(insert(BankEntry), [
                {"bank": "violating", "kind": "pdq", "value": c.tobytes().hex(), "quality": 100,
                 "scope_account": "", "state": "active", "source": "bench", "reason": "",
                 "added_by": "bench", "added_at": at, "seq": i + j + 1}
                for j, c in enumerate(codes[i : i + 50_000])])
        s.execute(update(BankCounter).values(value=n))
    print(f"bank of {n:,} written in {time.perf_counter() - t0:.1f} s")
    matcher = BankMatcher()
    t0 = time.perf_counter()
    with db.transaction() as s:
        matcher.refresh(s)
    print(f"index built from the database: {time.perf_counter() - t0:.1f} s "
          f"({len(matcher.index):,} entries)")
    queries = []
    for k in range(n_queries):
        base = codes[rng.integers(0, n)].copy()
        for b in rng.choice(256, 10, replace=False):
            base[b // 8] ^= np.uint8(1 << (b % 8))
        others = tuple(rng.integers(0, 256, 32, dtype=np.uint8).tobytes() for _ in range(7))
        queries.append(Query(sha256=f"{k:064x}", account_id="a",
                             pdq=DihedralPdq((base.tobytes(), *others), 100)))
    t0 = time.perf_counter()
    hits = 0
    for q in queries:
        with db.transaction() as s:
            hits += matcher.match(s, q, at=at) is not None
    took = time.perf_counter() - t0
    print(f"uploads one at a time (a transaction each): {len(queries) / took:,.0f}/s, "
          f"{took / len(queries) * 1000:.2f} ms each; found {hits}/{len(queries)}")
    t0 = time.perf_counter()
    with db.transaction() as s:
        matcher.match_many(s, queries, at=at)
    print(f"uploads in one call (the batch recorder): "
          f"{len(queries) / (time.perf_counter() - t0):,.0f}/s")


if __name__ == "__main__":
    raise SystemExit(main())
