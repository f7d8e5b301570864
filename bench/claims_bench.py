"""Claims per second with 16 concurrent claimers: PostgreSQL (`FOR UPDATE SKIP LOCKED`) and
SQLite (its single-writer path).  Each claimer is a thread with its own engine and connection;
every claim is a real ReviewService.claim() in its own transaction (lease, audit event and
all).  Reports claims/s, double claims (must be 0) and lost items (must be 0); no assertions.

    python -m bench.claims_bench [--items 2000] [--claimers 16] [--backend pg sqlite]

PostgreSQL runs in a fresh database next to LOOKFIRST_TEST_DATABASE_URL, dropped afterwards;
without that variable the PostgreSQL row is skipped with a message.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field

from sqlalchemy import func, select

from review.db import Database
from review.errors import NothingToClaim
from review.schema import AuditEvent, ReviewItem
from review.service import ReviewService
from review.states import ItemStatus
from tests.review_support import make_config, record

QUEUE = "adult"
SEED_BATCH = 250


@dataclass
class Result:
    backend: str
    claimers: int
    items: int
    claims: int = 0
    seconds: float = 0.0
    double_claims: int = 0
    lost: int = 0
    errors: int = 0
    error_kinds: Counter[str] = field(default_factory=Counter)
    audit_events: int = 0
    per_claimer: list[int] = field(default_factory=list)

    @property
    def rate(self) -> float:
        return self.claims / self.seconds if self.seconds else 0.0


@contextlib.contextmanager
def pg_database() -> Iterator[str | None]:
    base = os.environ.get("LOOKFIRST_TEST_DATABASE_URL")
    if not base:
        yield None
        return
    from tests.conftest import fresh_pg_database

    gen = fresh_pg_database(base)
    url = next(gen)
    try:
        yield url
    finally:
        gen.close()  # drops the database


@contextlib.contextmanager
def sqlite_database() -> Iterator[str]:
    with tempfile.TemporaryDirectory(prefix="lookfirst-bench-") as d:
        yield f"sqlite:///{d}/bench.db"


def seed(db: Database, svc: ReviewService, *, items: int, claimers: int) -> None:
    with db.transaction() as s:
        for i in range(claimers):
            svc.add_reviewer(s, reviewer_id=f"r{i:02d}", queues=[QUEUE])
    for start in range(0, items, SEED_BATCH):
        with db.transaction() as s:
            for n in range(start, min(items, start + SEED_BATCH)):
                # spread priorities so the ORDER BY has work to do, as a real queue does
                record(svc, s, n, account=f"acct-{n % 97}", priority=100 + n % 5)


def run(url: str, backend: str, *, items: int, claimers: int, deadline_s: float) -> Result:
    db = Database(url)
    db.upgrade()
    svc = ReviewService(make_config())
    seed(db, svc, items=items, claimers=claimers)
    res = Result(backend, claimers, items)
    claimed: list[list[int]] = [[] for _ in range(claimers)]
    errors = [0] * claimers
    kinds: Counter[str] = Counter()
    engines = [Database(url, pool_size=1) for _ in range(claimers)]
    for e in engines:  # connect before the clock starts
        with e.engine.connect():
            pass
    ready = threading.Barrier(claimers + 1)

    def claimer(i: int) -> None:
        mine, reviewer = engines[i], f"r{i:02d}"
        ready.wait(timeout=60)
        deadline = time.monotonic() + deadline_s
        for _ in range(items + 100):  # bounded: never more tries than there are items
            if time.monotonic() > deadline:
                return
            try:
                with mine.transaction() as s:
                    view = svc.claim(s, reviewer_id=reviewer, queue=QUEUE)
            except NothingToClaim:
                return
            except Exception as exc:  # noqa: BLE001 - counted and reported, the run goes on
                errors[i] += 1
                kinds[f"{type(exc).__name__}: {str(exc).splitlines()[0][:80]}"] += 1
                if errors[i] > 50:
                    return
                continue
            claimed[i].append(view.id)

    threads = [threading.Thread(target=claimer, args=(i,), name=f"claimer-{i}")
               for i in range(claimers)]
    for t in threads:
        t.start()
    ready.wait(timeout=60)
    t0 = time.perf_counter()
    for t in threads:
        t.join(timeout=deadline_s + 30)
    res.seconds = time.perf_counter() - t0
    for e in engines:
        e.dispose()
    ids = [x for c in claimed for x in c]
    res.claims = len(ids)
    res.per_claimer = sorted(len(c) for c in claimed)
    res.double_claims = len(ids) - len(set(ids))
    res.errors = sum(errors)
    res.error_kinds = kinds
    with db.transaction() as s:
        in_db = s.execute(
            select(func.count()).select_from(ReviewItem)
            .where(ReviewItem.status == ItemStatus.CLAIMED)
        ).scalar_one()
        res.audit_events = s.execute(
            select(func.count()).select_from(AuditEvent).where(AuditEvent.event == "item.claim")
        ).scalar_one()
    res.lost = items - len(set(ids)) + abs(in_db - len(set(ids)))
    db.dispose()
    return res


def table(results: list[Result]) -> str:
    head = ("backend", "claimers", "items", "claims", "seconds", "claims/s", "double", "lost",
            "errors", "audit")
    rows = [head] + [
        (r.backend, str(r.claimers), str(r.items), str(r.claims), f"{r.seconds:.2f}",
         f"{r.rate:,.0f}", str(r.double_claims), str(r.lost), str(r.errors),
         str(r.audit_events))
        for r in results
    ]
    widths = [max(len(row[i]) for row in rows) for i in range(len(head))]
    lines = ["  ".join(c.rjust(w) for c, w in zip(row, widths, strict=True)) for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.claims_bench", description=__doc__)
    p.add_argument("--items", type=int, default=2000)
    p.add_argument("--claimers", type=int, default=16)
    p.add_argument("--deadline", type=float, default=120.0, help="seconds per backend, at most")
    p.add_argument("--backend", nargs="+", choices=["pg", "sqlite"], default=["pg", "sqlite"])
    args = p.parse_args(argv)
    results: list[Result] = []
    if "pg" in args.backend:
        with pg_database() as url:
            if url is None:
                print("postgresql: skipped (set LOOKFIRST_TEST_DATABASE_URL to run it)")
            else:
                results.append(run(url, "postgresql", items=args.items, claimers=args.claimers,
                                   deadline_s=args.deadline))
    if "sqlite" in args.backend:
        with sqlite_database() as url:
            results.append(run(url, "sqlite", items=args.items, claimers=args.claimers,
                               deadline_s=args.deadline))
    print(table(results))
    for r in results:
        print(f"{r.backend}: claims per claimer min/median/max = {r.per_claimer[0]}/"
              f"{r.per_claimer[len(r.per_claimer) // 2]}/{r.per_claimer[-1]}")
        for kind, n in r.error_kinds.most_common():
            print(f"{r.backend}: {n} x {kind}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
