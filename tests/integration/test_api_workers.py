"""`lookfirst serve --workers 2` on PostgreSQL: one key's rate limit, and one reviewer's
across their OpenID Connect tokens, hold across both server processes (the token buckets are
in the database); a revoked key stops working in both within the key cache's TTL; both
processes racing on the same uploads record each once.

Real parts: the real command, real uvicorn workers sharing one port (a listening socket each,
SO_REUSEPORT), real PostgreSQL.  Each
test connection is pinned to the worker process that accepted it (found through /proc), so
the test knows it is talking to both processes, not to whichever the kernel picked."""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from pipeline.apikeys import create_key
from review.db import Database
from review.service import utcnow
from tests.oidc_issuer import AUDIENCE, LocalIssuer

pytestmark = [
    pytest.mark.postgres,
    pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc"),
]

ROOT = Path(__file__).resolve().parents[2]
LOOKFIRST = Path(sys.executable).parent / "lookfirst"
CACHE_S = 1.0
RATE_PER_MINUTE = 60  # one a second: with 10 s of burst, a bucket holds 10 requests


@dataclass
class Workers:
    proc: subprocess.Popen[bytes]
    port: int
    db: Database
    log: Path
    opened: list[http.client.HTTPConnection]

    def key(self, name: str, rate_per_minute: int) -> tuple[int, str]:
        with self.db.transaction() as s:
            info, raw = create_key(s, name=name, scopes=["admin"],
                                   rate_per_minute=rate_per_minute, now=utcnow())
        return info.id, raw

    def descendants(self) -> set[int]:
        found: set[int] = set()
        frontier = {self.proc.pid}
        while frontier:
            parent = frontier.pop()
            for task in Path(f"/proc/{parent}/task").glob("*/children"):
                kids = {int(x) for x in task.read_text().split()}
                frontier |= kids - found
                found |= kids
        return found

    def connect(self) -> tuple[http.client.HTTPConnection, int]:
        """A keep-alive connection, and the pid of the worker process that accepted it."""
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        self.opened.append(conn)
        conn.request("GET", "/health/live")
        reply = conn.getresponse()
        reply.read()
        assert reply.status == 200
        assert conn.sock is not None
        return conn, self.owner(conn.sock.getsockname()[1])

    def owner(self, client_port: int) -> int:
        inode = None
        for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
            fields = line.split()
            local, remote = fields[1], fields[2]
            if (int(local.split(":")[1], 16) == self.port
                    and int(remote.split(":")[1], 16) == client_port):
                inode = fields[9]
        assert inode is not None, "the server side of the connection is not in /proc/net/tcp"
        for pid in self.descendants():
            try:
                links = [os.readlink(fd) for fd in Path(f"/proc/{pid}/fd").iterdir()]
            except (FileNotFoundError, PermissionError):
                continue
            if f"socket:[{inode}]" in links:
                return pid
        raise AssertionError("no worker holds the connection")


def get(conn: http.client.HTTPConnection, raw_key: str) -> int:
    conn.request("GET", "/v1/keys", headers={"Authorization": f"Bearer {raw_key}"})
    reply = conn.getresponse()
    reply.read()
    return reply.status


@contextlib.contextmanager
def serving(pg_url: str, tmp_path: Path, extra: dict[str, str]) -> Iterator[Workers]:
    """`lookfirst serve --workers 2` on `pg_url`, with `extra` settings."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {k: v for k, v in os.environ.items() if not k.startswith("LOOKFIRST_")}
    env.update(PYTHONPATH=str(ROOT), ORT_DISABLE_TELEMETRY="1", LOOKFIRST_DATABASE_URL=pg_url,
               LOOKFIRST_DATA_DIR=str(tmp_path / "data"), LOOKFIRST_API_PRELOAD_MODEL="false",
               LOOKFIRST_API_KEY_CACHE_S=str(CACHE_S), LOOKFIRST_API_RATE_BURST_SECONDS="10")
    env.update(extra)
    log = tmp_path / "serve.log"
    with open(log, "wb") as fh:
        proc = subprocess.Popen([str(LOOKFIRST), "serve", "--workers", "2", "--port", str(port)],
                                env=env, cwd=ROOT, stdout=fh, stderr=subprocess.STDOUT,
                                start_new_session=True)
    db = Database(pg_url)
    w = Workers(proc, port, db, log, [])
    try:
        deadline = time.monotonic() + 120
        # both processes listening (a socket each) and one answering
        while _listening(port) < 2 or not _answers(port):
            assert proc.poll() is None, log.read_text()[-3000:]
            assert time.monotonic() < deadline, log.read_text()[-3000:]
            time.sleep(0.2)
        yield w
    finally:
        for conn in w.opened:
            conn.close()
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        db.dispose()


@pytest.fixture
def workers(pg_url: str, tmp_path: Path) -> Iterator[Workers]:
    with serving(pg_url, tmp_path, {}) as w:
        yield w


def _listening(port: int) -> int:
    """Sockets listening on `port` (state 0A in /proc/net/tcp): one per server process."""
    lines = Path("/proc/net/tcp").read_text().splitlines()[1:]
    return sum(1 for line in lines
               if line.split()[3] == "0A" and int(line.split()[1].split(":")[1], 16) == port)


def _answers(port: int) -> bool:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
    try:
        conn.request("GET", "/health/live")
        return conn.getresponse().status == 200
    except OSError:
        return False
    finally:
        conn.close()


def one_per_worker(w: Workers) -> tuple[http.client.HTTPConnection, http.client.HTTPConnection]:
    """Two connections held by two different worker processes."""
    by_worker: dict[int, http.client.HTTPConnection] = {}
    for _ in range(60):
        conn, pid = w.connect()
        by_worker.setdefault(pid, conn)
        if len(by_worker) == 2:
            a, b = by_worker.values()
            return a, b
    raise AssertionError(f"60 connections all went to {set(by_worker)}: one worker only")


def test_one_keys_rate_limit_holds_across_two_workers(workers: Workers) -> None:
    a, b = one_per_worker(workers)
    _, raw = workers.key("limited", RATE_PER_MINUTE)
    capacity, per_second = 10, RATE_PER_MINUTE / 60
    started = time.monotonic()
    statuses = [(side, get(conn, raw)) for _ in range(20) for side, conn in (("a", a), ("b", b))]
    elapsed = time.monotonic() - started
    allowed = sum(1 for _, status in statuses if status == 200)
    assert {status for _, status in statuses} == {200, 429}
    # one bucket: its capacity and what refilled meanwhile; a bucket per worker would let
    # through up to twice the capacity
    assert capacity <= allowed <= capacity + elapsed * per_second + 1, (allowed, elapsed)
    assert elapsed * per_second + 1 < capacity, "the test ran too slowly to tell one bucket"
    for side in ("a", "b"):  # both workers took tokens, and both refused
        assert {status for s, status in statuses if s == side} == {200, 429}, statuses


def test_a_revoked_key_stops_in_every_worker_within_the_cache_ttl(workers: Workers) -> None:
    a, b = one_per_worker(workers)
    key_id, raw = workers.key("revoked", 6000)
    _, admin = workers.key("admin", 6000)
    assert get(a, raw) == 200 and get(b, raw) == 200  # known (and cached) in both workers
    a.request("POST", f"/v1/keys/{key_id}/revoke", headers={"Authorization": f"Bearer {admin}"})
    reply = a.getresponse()
    reply.read()
    assert reply.status == 200
    revoked_at = time.monotonic()
    assert get(a, raw) == 401  # the worker that revoked it forgets it at once
    while get(b, raw) != 401:  # the other, once its cached entry runs out
        assert time.monotonic() - revoked_at < CACHE_S + 2.0, "still accepted past the TTL"
        time.sleep(0.05)
    assert get(a, raw) == 401 and get(b, raw) == 401
    assert get(a, admin) == 200 and get(b, admin) == 200  # only that key


def test_a_clients_connection_pool_is_spread_over_the_workers(workers: Workers) -> None:
    """A client that opens its pool at once (32 keep-alive connections made before the first
    request) finds them held by both processes.  With one shared listening socket, asyncio
    accepted every waiting connection each time a process woke, and one process held nearly
    all of them (a profile: 91 % of the work in one of two workers); with a socket per
    process, the kernel hashes each connection to one of them (Bin(32, 1/2) < 5 on either
    side: about 1 in 50,000 runs)."""
    socks = [socket.create_connection(("127.0.0.1", workers.port), timeout=30)
             for _ in range(32)]
    try:
        held: dict[int, int] = {}
        for sock in socks:
            sock.sendall(b"GET /health/live HTTP/1.1\r\nHost: lookfirst\r\n\r\n")
            assert sock.recv(4096).startswith(b"HTTP/1.1 200")
            pid = workers.owner(sock.getsockname()[1])
            held[pid] = held.get(pid, 0) + 1
    finally:
        for sock in socks:
            sock.close()
    assert len(held) == 2 and min(held.values()) >= 5, held


def test_a_port_another_program_holds_is_a_clear_error(pg_url: str, tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        env = {k: v for k, v in os.environ.items() if not k.startswith("LOOKFIRST_")}
        env.update(PYTHONPATH=str(ROOT), LOOKFIRST_DATABASE_URL=pg_url,
                   LOOKFIRST_DATA_DIR=str(tmp_path / "data"))
        done = subprocess.run([str(LOOKFIRST), "serve", "--workers", "2", "--port", str(port)],
                              env=env, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, done.stdout + done.stderr
    assert f"cannot listen on 127.0.0.1:{port}" in done.stderr
    assert "config.invalid" in done.stderr and "Traceback" not in done.stderr


@pytest.mark.model
def test_both_workers_racing_on_the_same_uploads_record_each_once(workers: Workers) -> None:
    """Every upload sent to both server processes at once, four requests at a time each (so
    each process records them in batches): one decision per upload, both answers name it, one
    of the two answers is the one that decided it, and the audit chain verifies.  The loser of
    a race ends in the unique constraints, and its batch is retried whole and answered with
    the winner's decisions."""
    from concurrent.futures import ThreadPoolExecutor

    from sqlalchemy import func, select

    from models.calibration import as_jpeg
    from review import audit
    from review.schema import Decision, Upload
    from tests.hostile import quadrants

    _, raw = workers.key("racer", 100_000)
    # 24 uploads; two of them share a picture (the content row races too)
    pictures = [as_jpeg(np.roll(quadrants(160, 120), 7 * i, axis=1), quality=90)
                for i in range(23)]
    bodies = [*pictures, pictures[0]]
    by_worker: dict[int, list[http.client.HTTPConnection]] = {}
    for _ in range(120):
        conn, pid = workers.connect()
        if len(by_worker.setdefault(pid, [])) < 4:
            by_worker[pid].append(conn)
        if len(by_worker) == 2 and all(len(c) == 4 for c in by_worker.values()):
            break
    assert len(by_worker) == 2, "the connections all went to one worker"

    def send(conn: http.client.HTTPConnection, lane: int) -> list[tuple[int, dict[str, object]]]:
        out = []
        for i in range(lane, len(bodies), 4):
            conn.request("POST", f"/v1/classify?account_id=race&upload_id=u{i}",
                         body=bodies[i], headers={"Authorization": f"Bearer {raw}",
                                                  "Content-Type": "image/jpeg"})
            reply = conn.getresponse()
            out.append((i, {"status": reply.status, **json.loads(reply.read())}))
        return out

    with ThreadPoolExecutor(max_workers=8) as pool:
        lanes = [pool.submit(send, conn, lane) for conns in by_worker.values()
                 for lane, conn in enumerate(conns)]
        answers = [a for f in lanes for a in f.result()]
    assert len(answers) == 2 * len(bodies)
    assert all(a["status"] == 200 for _, a in answers), answers
    for i in range(len(bodies)):
        pair = [a for j, a in answers if j == i]
        assert pair[0]["decision_id"] == pair[1]["decision_id"]
        assert sorted(a["already_scored"] for a in pair) == [False, True]
    with workers.db.transaction() as s:
        assert s.execute(select(func.count()).select_from(Upload)).scalar_one() == len(bodies)
        assert s.execute(select(func.count()).select_from(Decision)).scalar_one() == len(bodies)
        assert audit.verify(s).ok


def test_a_reviewers_token_budget_holds_across_two_workers(
    pg_url: str, tmp_path: Path, idp: LocalIssuer
) -> None:
    """A reviewer's OpenID Connect tokens share one bucket (`oidc:<reviewer>`, a row in the
    database) whichever server process a request reaches, and whichever token it carries."""
    from review.service import ReviewService
    from tests.review_support import make_config

    env = {"LOOKFIRST_API_RATE_PER_MINUTE": str(RATE_PER_MINUTE),
           "LOOKFIRST_OIDC_ISSUER": idp.url, "LOOKFIRST_OIDC_AUDIENCE": AUDIENCE,
           "LOOKFIRST_OIDC_JWKS_URL": idp.jwks_url,
           "LOOKFIRST_OIDC_REVIEWER_CLAIM": "preferred_username"}
    with serving(pg_url, tmp_path, env) as w:
        with w.db.transaction() as s:
            ReviewService(make_config()).add_reviewer(s, reviewer_id="rae", queues=["adult"])
        a, b = one_per_worker(w)
        capacity, per_second = 10, RATE_PER_MINUTE / 60

        def read(conn: http.client.HTTPConnection) -> int:
            raw = idp.token(idp.keys["rsa-1"], idp.claims("rae"))  # a fresh token each time
            conn.request("GET", "/v1/decisions/no-such-decision",
                         headers={"Authorization": f"Bearer {raw}"})
            reply = conn.getresponse()
            reply.read()
            return reply.status

        started = time.monotonic()
        statuses = [(side, read(conn)) for _ in range(20) for side, conn in (("a", a), ("b", b))]
        elapsed = time.monotonic() - started
    allowed = sum(1 for _, status in statuses if status == 404)
    assert {status for _, status in statuses} == {404, 429}, statuses
    assert capacity <= allowed <= capacity + elapsed * per_second + 1, (allowed, elapsed)
    assert elapsed * per_second + 1 < capacity, "the test ran too slowly to tell one bucket"
    for side in ("a", "b"):
        assert {status for s, status in statuses if s == side} == {404, 429}, statuses
