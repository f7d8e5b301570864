"""Claims per second with 16 concurrent claimers: PostgreSQL (`FOR UPDATE SKIP LOCKED`) and
SQLite (its single-writer path).  Each claimer (a reviewer) has its own engine and connection;
the claimers run one per process, or as threads spread over a few processes as reviewers are
served by a few API workers (`--processes 16 2`); every claim is a real claim in its own
transaction (lease, audit event per item and all), by one of two paths (`--path`): `desk`, the
ClaimDesk that the API and the CLI use (on PostgreSQL one statement, `lookfirst_claim`, in
autocommit), and `session`, ReviewService.claim_many() inside an ORM transaction.
`--batch 1` is one item per transaction (a reviewer taking the next item); larger batches are a
reviewer's tool prefetching its next items.  Reports claims/s, double claims (must be 0) and
lost items (must be 0); no assertions.

    python -m bench.claims_bench [--items 6000] [--claimers 16] [--batch 1 10]
                                 [--backend pg sqlite] [--path desk session]
                                 [--processes 16 2]

PostgreSQL runs in a fresh database next to LOOKFIRST_TEST_DATABASE_URL, dropped afterwards;
without that variable the PostgreSQL row is skipped with a message.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import multiprocessing
import multiprocessing.process
import os
import queue
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import func, select, text

from review import (
    ClaimDesk,
    Database,
    ItemStatus,
    NothingToClaim,
    ReviewService,
    verify_audit_log,
)
from review.schema import AuditEvent, ReviewItem
from tests.review_support import make_config, record

QUEUE = "adult"
SEED_BATCH = 250


@dataclass
class Result:
    backend: str
    claimers: int
    items: int
    batch: int
    mode: str
    claims: int = 0
    seconds: float = 0.0
    double_claims: int = 0
    lost: int = 0
    errors: int = 0
    error_kinds: Counter[str] = field(default_factory=Counter)
    audit_events: int = 0
    chain_ok: bool = False
    #: CPU seconds the claimers themselves spent (the database server's are not in it)
    client_cpu: float = 0.0
    #: CPU seconds the whole machine spent while the claimers ran (claimers, database, rest)
    machine_cpu: float | None = None
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
    from tests.databases import fresh_pg_database

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
    if db.engine.dialect.name == "postgresql":
        # a live database has planner statistics (autovacuum); a just-seeded one has none yet,
        # and plans made without them (the claim function's are made once per connection)
        # would measure an empty table, not a queue
        with db.autocommit() as conn:
            conn.execute(text("ANALYZE"))


def busy_cpu_seconds() -> float | None:
    """CPU seconds this machine has been busy since boot (Linux /proc/stat), else None."""
    try:
        with open("/proc/stat") as f:
            fields = [int(x) for x in f.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def _claimer(url: str, path: str, reviewer: str, batch: int, items: int, deadline_s: float,
             barrier: Any, out: Any) -> None:
    """One claimer: its own engine and connection, claims until the queue is empty."""
    db = Database(url, pool_size=1)
    svc = ReviewService(make_config())
    desk = ClaimDesk(db, svc)
    with db.engine.connect():  # connect before the clock starts
        pass
    if path == "desk" and db.engine.dialect.name == "postgresql":
        with db.autocommit():
            pass

    def claim() -> list[Any]:
        if path == "desk":
            return desk.claim_many(reviewer_id=reviewer, queue=QUEUE, limit=batch)
        with db.transaction() as s:
            return svc.claim_many(s, reviewer_id=reviewer, queue=QUEUE, limit=batch)
    claimed: list[int] = []
    errors = 0
    kinds: Counter[str] = Counter()
    barrier.wait(timeout=120)
    cpu0 = time.thread_time()  # this claimer's own CPU, thread or process
    deadline = time.monotonic() + deadline_s
    end = time.monotonic()
    for _ in range(items + 100):  # bounded: never more tries than there are items
        if time.monotonic() > deadline:
            break
        try:
            views = claim()
        except NothingToClaim:
            break
        except Exception as exc:  # noqa: BLE001 - counted and reported, the run goes on
            errors += 1
            kinds[f"{type(exc).__name__}: {str(exc).splitlines()[0][:80]}"] += 1
            if errors > 50:
                break
            continue
        end = time.monotonic()
        claimed.extend(v.id for v in views)
    cpu = time.thread_time() - cpu0
    db.dispose()
    out.put((claimed, errors, dict(kinds), end, cpu))


def _claimer_group(url: str, path: str, reviewers: list[str], batch: int, items: int,
                   deadline_s: float, barrier: Any, out: Any) -> None:
    """One process running several claimers as threads (as an API worker serves several
    reviewers at once)."""
    group = [threading.Thread(target=_claimer, name=f"claimer-{r}",
                              args=(url, path, r, batch, items, deadline_s, barrier, out))
             for r in reviewers]
    for t in group:
        t.start()
    for t in group:
        t.join()


def run(url: str, backend: str, *, path: str, items: int, claimers: int, batch: int,
        deadline_s: float, processes: int) -> Result:
    """`processes`: how many processes the claimers are spread over (as threads); 1 is one
    interpreter, `claimers` is one process each."""
    db = Database(url)
    db.upgrade()
    svc = ReviewService(make_config())
    seed(db, svc, items=items, claimers=claimers)
    db.dispose()
    processes = max(1, min(processes, claimers))
    res = Result(backend, claimers, items, batch, f"{path}, {processes} proc")
    reviewers = [f"r{i:02d}" for i in range(claimers)]
    workers: list[threading.Thread] | list[multiprocessing.process.BaseProcess]
    if processes == 1:
        barrier: Any = threading.Barrier(claimers + 1)
        out: Any = queue.Queue()
        workers = [threading.Thread(target=_claimer_group,
                                    args=(url, path, reviewers, batch, items, deadline_s,
                                          barrier, out))]
    else:
        ctx = multiprocessing.get_context("spawn")
        barrier, out = ctx.Barrier(claimers + 1), ctx.Queue()
        workers = [ctx.Process(target=_claimer_group, name=f"claimers-{p}",
                               args=(url, path, reviewers[p::processes], batch, items,
                                     deadline_s, barrier, out))
                   for p in range(processes)]
    for w in workers:
        w.start()
    barrier.wait(timeout=180)
    t0, busy0 = time.monotonic(), busy_cpu_seconds()
    reports = [out.get(timeout=deadline_s + 120) for _ in reviewers]
    busy1 = busy_cpu_seconds()
    if busy0 is not None and busy1 is not None:
        res.machine_cpu = busy1 - busy0
    for w in workers:
        w.join(timeout=60)
    res.seconds = max(r[3] for r in reports) - t0
    claimed = [r[0] for r in reports]
    ids = [x for c in claimed for x in c]
    res.claims = len(ids)
    res.per_claimer = sorted(len(c) for c in claimed)
    res.double_claims = len(ids) - len(set(ids))
    res.errors = sum(r[1] for r in reports)
    for r in reports:
        res.error_kinds.update(r[2])
    res.client_cpu = sum(r[4] for r in reports)
    db = Database(url)
    with db.transaction() as s:
        in_db = s.execute(
            select(func.count()).select_from(ReviewItem)
            .where(ReviewItem.status == ItemStatus.CLAIMED)
        ).scalar_one()
        res.audit_events = s.execute(
            select(func.count()).select_from(AuditEvent).where(AuditEvent.event == "item.claim")
        ).scalar_one()
        res.chain_ok = verify_audit_log(s).ok
    res.lost = items - len(set(ids)) + abs(in_db - len(set(ids)))
    db.dispose()
    return res


def table(results: list[Result]) -> str:
    head = ("backend", "claimers", "mode", "batch", "items", "claims", "seconds", "claims/s",
            "client ms/claim", "machine ms/claim", "double", "lost", "errors", "audit", "chain")
    rows = [head] + [
        (r.backend, str(r.claimers), r.mode, str(r.batch), str(r.items), str(r.claims),
         f"{r.seconds:.2f}", f"{r.rate:,.0f}",
         f"{1e3 * r.client_cpu / r.claims:.2f}" if r.claims else "-",
         f"{1e3 * r.machine_cpu / r.claims:.2f}" if r.claims and r.machine_cpu else "-",
         str(r.double_claims),
         str(r.lost), str(r.errors), str(r.audit_events), "ok" if r.chain_ok else "BROKEN")
        for r in results
    ]
    widths = [max(len(row[i]) for row in rows) for i in range(len(head))]
    lines = ["  ".join(c.rjust(w) for c, w in zip(row, widths, strict=True)) for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.claims_bench", description=__doc__)
    p.add_argument("--items", type=int, default=6000,
                   help="items seeded per run (a few seconds of claims: fewer measure start-up)")
    p.add_argument("--claimers", type=int, default=16)
    p.add_argument("--deadline", type=float, default=120.0, help="seconds per backend, at most")
    p.add_argument("--backend", nargs="+", choices=["pg", "sqlite"], default=["pg", "sqlite"])
    p.add_argument("--batch", nargs="+", type=int, default=[1, 10],
                   help="items per claim transaction (one row each)")
    p.add_argument("--path", nargs="+", choices=["desk", "session"], default=["desk", "session"],
                   help="desk: ClaimDesk, the API's and CLI's claim (one statement in autocommit "
                        "on PostgreSQL); session: ReviewService.claim_many inside an ORM "
                        "transaction, as a caller composing a claim with other work does")
    p.add_argument("--processes", nargs="+", type=int, default=[16, 2],
                   help="how many processes the claimers are spread over, as threads (16: one "
                        "process each; 2: two API-worker-like processes of 8 reviewers each)")
    args = p.parse_args(argv)
    results: list[Result] = []
    for backend in args.backend:
        if backend == "pg" and not os.environ.get("LOOKFIRST_TEST_DATABASE_URL"):
            print("postgresql: skipped (set LOOKFIRST_TEST_DATABASE_URL to run it)")
            continue
        # SQLite has one path: the desk runs ReviewService.claim_many in a transaction
        paths = args.path if backend == "pg" else ["desk"]
        for path, procs, batch in itertools.product(paths, args.processes, args.batch):
            where = pg_database() if backend == "pg" else sqlite_database()
            with where as url:
                assert url is not None
                results.append(run(url, "postgresql" if backend == "pg" else "sqlite",
                                   path=path, items=args.items, claimers=args.claimers,
                                   batch=batch, deadline_s=args.deadline, processes=procs))
                print(table(results[-1:]).splitlines()[-1], flush=True)
    print(table(results))
    for r in results:
        print(f"{r.backend} {r.mode} batch {r.batch}: claims per claimer min/median/max = "
              f"{r.per_claimer[0]}/{r.per_claimer[len(r.per_claimer) // 2]}/{r.per_claimer[-1]}")
        for kind, n in r.error_kinds.most_common():
            print(f"{r.backend} {r.mode} batch {r.batch}: {n} x {kind}")
    single = {(r.backend, r.mode): r.rate for r in results if r.batch == 1}
    for r in results:
        if r.batch > 1 and single.get((r.backend, r.mode)):
            print(f"{r.backend} {r.mode}: batch {r.batch} / batch 1 = "
                  f"{r.rate / single[(r.backend, r.mode)]:.2f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
