"""The supervisor of `lookfirst serve --workers N` (pipeline.serving), with real processes and
real sockets: a listening socket per process, a process that dies after it served is replaced,
one that fails at start-up stops them all (exit 1), SIGTERM stops them gracefully (exit 0)."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")

ROOT = Path(__file__).resolve().parents[2]


@contextlib.contextmanager
def supervised(port: int, app: str, grace_s: float, *, output: bool = False,
               hang_s: float = 30.0, startup_s: float = 180.0
               ) -> Iterator[subprocess.Popen[str]]:
    """`serve_processes` with two processes in a child interpreter; killed at the end if the
    test left it running (its processes go with it: PR_SET_PDEATHSIG)."""
    code = ("import sys\n"
            "from pipeline.serving import serve_processes\n"
            f"sys.exit(serve_processes(2, host='127.0.0.1', port={port}, log_level='warning', "
            f"app={app!r}, startup_grace_s={grace_s}, hang_timeout_s={hang_s}, "
            f"startup_timeout_s={startup_s}))\n")
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, text=True,
                            env={**os.environ, "PYTHONPATH": str(ROOT)},
                            stdout=subprocess.PIPE if output else subprocess.DEVNULL,
                            stderr=subprocess.STDOUT)
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def listening(port: int) -> int:
    lines = Path("/proc/net/tcp").read_text().splitlines()[1:]
    return sum(1 for line in lines
               if line.split()[3] == "0A" and int(line.split()[1].split(":")[1], 16) == port)


def pids_serving(port: int, tries: int = 64, *, resets_ok: bool = False) -> set[int]:
    """The process ids that answer /pid over `tries` fresh connections.  `resets_ok`: while a
    killed process goes, a connection the kernel had queued on its socket is reset (the
    price of a socket per process; docs/batch.md), and is not counted."""
    seen = set()
    for _ in range(tries):
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=30) as conn:
                conn.sendall(b"GET /pid HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
                reply = b""
                while chunk := conn.recv(4096):
                    reply += chunk
        except ConnectionResetError:
            if not resets_ok:
                raise
            continue
        seen.add(int(reply.split(b"\r\n\r\n", 1)[1]))
    return seen


def wait_for(condition: Callable[[], bool], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.1)


def test_a_dead_process_is_replaced_and_sigterm_stops_all() -> None:
    port = free_port()
    with supervised(port, "tests.integration.serving_apps:pid_app", grace_s=1.0) as proc:
        wait_for(lambda: listening(port) == 2)
        first = pids_serving(port)
        assert len(first) == 2  # both processes take connections
        victim = min(first)
        time.sleep(1.2)  # past the start-up grace: a death now is a crash, not a bad start
        os.kill(victim, signal.SIGKILL)
        # its replacement answers (a dying process's socket lingers in /proc for a moment)
        wait_for(lambda: len(pids_serving(port, 16, resets_ok=True) - first) == 1)
        second = pids_serving(port)
        assert len(second) == 2 and victim not in second and (first - {victim}) < second
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0
        assert listening(port) == 0


def test_the_processes_go_when_the_supervisor_is_killed() -> None:
    port = free_port()
    with supervised(port, "tests.integration.serving_apps:pid_app", grace_s=1.0) as proc:
        wait_for(lambda: listening(port) == 2)
        served = pids_serving(port, 16)
        proc.kill()  # no handler runs: the kernel tells the processes
        proc.wait()
        wait_for(lambda: listening(port) == 0, timeout=30)
        wait_for(lambda: not any(Path(f"/proc/{pid}").exists() for pid in served), timeout=30)


def test_a_process_that_cannot_start_stops_them_all() -> None:
    port = free_port()
    with supervised(port, "tests.integration.serving_apps:broken_app", grace_s=60.0,
                    output=True) as proc:
        out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 1, out
    assert "this app cannot start" in out and "stopping the others" in out
    assert listening(port) == 0


def test_a_hung_process_is_killed_and_replaced() -> None:
    """A process whose event loop is blocked (here a handler that sleeps for an hour) stops
    beating; past the hang timeout the supervisor kills it and starts another."""
    port = free_port()
    with supervised(port, "tests.integration.serving_apps:pid_app", grace_s=1.0,
                    hang_s=3.0) as proc:
        wait_for(lambda: listening(port) == 2)
        first = pids_serving(port)
        assert len(first) == 2
        time.sleep(1.2)  # past the start-up grace
        with socket.create_connection(("127.0.0.1", port), timeout=30) as hung_conn:
            hung_conn.sendall(b"GET /hang HTTP/1.1\r\nHost: t\r\n\r\n")
            time.sleep(0.5)  # the handler runs and blocks its process's loop
            # the other process answers meanwhile; the hung one is replaced in the timeout
            wait_for(lambda: len(pids_serving(port, 16, resets_ok=True) - first) == 1,
                     timeout=60)
            try:
                unanswered = hung_conn.recv(4096)  # closed with its process
            except ConnectionResetError:
                unanswered = b""
        assert unanswered == b""
        second = pids_serving(port)
        assert len(second) == 2 and len(second & first) == 1
        assert proc.poll() is None  # the supervisor goes on
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0


def test_a_process_that_never_starts_serving_stops_them_all() -> None:
    port = free_port()
    with supervised(port, "tests.integration.serving_apps:stuck_app", grace_s=1.0,
                    startup_s=5.0, output=True) as proc:
        out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 1, out
    assert "has not started serving" in out
    assert listening(port) == 0
