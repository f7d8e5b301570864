"""`lookfirst serve --workers N`: N server processes on one port, each with its own listening
socket (SO_REUSEPORT), so that the kernel spreads connections over them.

uvicorn's own `--workers` shares ONE listening socket among its processes, and asyncio accepts
every connection waiting in the queue each time a process wakes.  A client that opens its
connection pool at once (the platform's upload service; 32 clients in `bench batch_bench`)
then may find all its keep-alive connections held by one process, and the others idle (a
profile under that load: one of two workers did 91 % of the work; 32 connections opened at
once all went to one process in 1 of 2 runs).  With a socket per process, Linux hashes each
new connection to one of the sockets (`SO_REUSEPORT`), so a pool's connections are shared out
whatever their timing.  On the 2-core development machine the REST benchmark did not move
(the CPU is saturated either way; docs/batch.md); the gain is where there are cores to spread
over.

The supervisor here is deliberately small: it starts the processes (spawned: no forked copies
of a database pool), restarts one that dies after it served, stops every one of them when one
fails at start-up (a bad setting, an unreachable database: restarting would fail the same way
in a loop), and passes SIGINT/SIGTERM on as a graceful shutdown; if it is killed outright,
the kernel stops its processes (PR_SET_PDEATHSIG).  Each process's event loop beats once a
second into memory it shares with the supervisor; one whose loop has not beaten for
`hang_timeout_s` (blocked: a handler that never returns, a deadlock) is killed and replaced,
as uvicorn's own supervisor does with its pings.  Linux (and the BSDs) only.
This module imports nothing heavy: a spawned process imports it to find its target, then
listens at once, before it loads the app; connections the kernel gives it meanwhile wait in
its queue.  (Under `pipeline.api`, whose imports take seconds, one process listened long
after the other answered, and a pool opened in that window went to one process.)
"""

from __future__ import annotations

import asyncio
import ctypes
import functools
import logging
import multiprocessing as mp
import os
import signal
import socket
import sys
import threading
import time
from multiprocessing.process import BaseProcess
from types import FrameType
from typing import Any

from pipeline.errors import ConfigurationError

__all__ = ["APP", "STARTUP_GRACE_S", "reuseport_socket", "serve_processes"]

log = logging.getLogger(__name__)

#: a process that ends sooner than this after it started is taken to have failed at start-up
STARTUP_GRACE_S = 20.0
#: a serving process whose event loop has not beaten for this long is hung: killed, replaced
HANG_TIMEOUT_S = 30.0
#: ... and one that has never beaten this long after it started failed at start-up
STARTUP_TIMEOUT_S = 180.0
_BEAT_S = 1.0
_BACKLOG = 2048
_PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def reuseport_socket(host: str, port: int) -> socket.socket:
    """A TCP socket bound to (host, port) with SO_REUSEPORT (and SO_REUSEADDR) set."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, port))
    return sock


#: the app each process serves: built from the LOOKFIRST_* settings
APP = "pipeline.api:app_from_env"


def _die_with(parent: int) -> None:
    """Have the kernel stop this process (SIGTERM) when the supervisor dies, however it dies
    (a SIGKILL runs no handler: its processes would go on holding the port)."""
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() != parent:  # it died before the line above
        raise SystemExit(0)


class _Heartbeat:
    """ASGI wrapper: from the first event (uvicorn's lifespan start-up), a task on the
    server's event loop writes the time into `beat` every second."""

    def __init__(self, app: Any, beat: ctypes.c_double) -> None:
        self.app = app
        self.beat = beat
        self._task: asyncio.Task[None] | None = None

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run(), name="heartbeat")
        await self.app(scope, receive, send)

    async def _run(self) -> None:
        while True:
            self.beat.value = time.monotonic()  # CLOCK_MONOTONIC: one clock for all processes
            await asyncio.sleep(_BEAT_S)


def _beating(app: str, beat: ctypes.c_double) -> _Heartbeat:
    from uvicorn.importer import import_from_string  # how uvicorn itself reads "module:attr"

    return _Heartbeat(import_from_string(app)(), beat)


def _serve_one(host: str, port: int, log_level: str, app: str, parent: int,
               beat: ctypes.c_double) -> None:
    """One server process: its own listening socket on the shared port, then the app (a
    factory's import path) with its heartbeat."""
    _die_with(parent)
    import uvicorn

    sock = reuseport_socket(host, port)
    sock.listen(_BACKLOG)
    config = uvicorn.Config(functools.partial(_beating, app, beat), factory=True, host=host,
                            port=port,
                            log_level=log_level, access_log=False, server_header=False,
                            proxy_headers=False, backlog=_BACKLOG)
    uvicorn.Server(config).run(sockets=[sock])


class _Worker:
    def __init__(self, ctx: mp.context.SpawnContext, args: tuple[str, int, str, str, int]
                 ) -> None:
        #: the last beat of its event loop (time.monotonic()); 0 until the first.  Without a
        #: lock: a process killed while holding one would leave the supervisor waiting on it
        #: for ever, and an aligned 8-byte store is read whole.
        self.beat: ctypes.c_double = ctx.RawValue(ctypes.c_double, 0.0)
        self.process: BaseProcess = ctx.Process(target=_serve_one, args=(*args, self.beat),
                                                daemon=False)
        self.process.start()
        self.started = time.monotonic()

    def silent_for(self, now: float) -> float | None:
        """Seconds since its loop last beat; None before the first beat."""
        last = self.beat.value
        return None if last == 0.0 else now - last

    def kill(self) -> None:
        self.process.kill()  # hung: a graceful stop would wait on the loop that is stuck
        self.process.join()


def serve_processes(workers: int, *, host: str, port: int, log_level: str, app: str = APP,
                    startup_grace_s: float = STARTUP_GRACE_S,
                    hang_timeout_s: float = HANG_TIMEOUT_S,
                    startup_timeout_s: float = STARTUP_TIMEOUT_S) -> int:
    """Run `workers` server processes on (host, port) until SIGINT or SIGTERM; 0 when they
    were stopped that way, 1 when one failed at start-up (its own log says why).  A process
    that ends within `startup_grace_s` of its start failed at start-up, as did one whose event
    loop never beat within `startup_timeout_s`; a later one died, and another takes its place,
    as it does for one whose loop stopped beating for `hang_timeout_s`."""
    if workers < 1:
        raise ValueError("workers must be at least 1")
    # bound (not listening) for the whole run: the port stays ours between restarts, and no
    # other program's socket without SO_REUSEPORT can take it
    try:
        holder = reuseport_socket(host, port)
    except OSError as exc:
        raise ConfigurationError(
            f"cannot listen on {host}:{port}: {exc.strerror or exc} (another program holds the "
            f"port? choose another with --port or LOOKFIRST_PORT)") from None
    ctx = mp.get_context("spawn")
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    args = (host, port, log_level, app, os.getpid())
    running: list[_Worker] = []
    code = 0
    try:
        running = [_Worker(ctx, args) for _ in range(workers)]
        while not stop.wait(0.5):
            for i, worker in enumerate(running):
                if worker.process.is_alive():
                    now = time.monotonic()
                    silent = worker.silent_for(now)
                    if silent is None and now - worker.started > startup_timeout_s:
                        log.error("server process %s has not started serving in %.0f s: "
                                  "stopping them all", worker.process.pid, startup_timeout_s)
                        code = 1
                        stop.set()
                        break
                    if silent is not None and silent > hang_timeout_s:
                        log.error("server process %s is hung (its event loop silent for %.0f "
                                  "s): killed, starting another", worker.process.pid, silent)
                        worker.kill()
                        running[i] = _Worker(ctx, args)
                    continue
                age = time.monotonic() - worker.started
                if age < startup_grace_s:
                    log.error("server process %s ended %.1f s after it started (exit code %s): "
                              "stopping the others", worker.process.pid, age,
                              worker.process.exitcode)
                    code = 1
                    stop.set()
                    break
                log.warning("server process %s died (exit code %s); starting another",
                            worker.process.pid, worker.process.exitcode)
                running[i] = _Worker(ctx, args)
    finally:
        now = time.monotonic()
        for worker in running:
            if not worker.process.is_alive():
                continue
            silent = worker.silent_for(now)
            if silent is None or silent > hang_timeout_s:
                worker.kill()  # not serving yet, or hung: nothing to finish gracefully
            else:
                worker.process.terminate()  # uvicorn shuts down gracefully on SIGTERM
        deadline = time.monotonic() + 30
        for worker in running:
            worker.process.join(max(0.1, deadline - time.monotonic()))
            if worker.process.is_alive():
                worker.process.kill()
                worker.process.join()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        holder.close()
    return code
