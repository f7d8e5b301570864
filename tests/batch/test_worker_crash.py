"""A file whose processing ends its worker process (a native decoder's crash on a hostile file,
the kernel's OOM killer) is its row's error, and the job goes on: it does not stop the job, nor
every resume of it.

The crash is real: a row names a FIFO, and a thread of this test SIGKILLs whichever process
opens it for reading, every time one does (a worker blocks in `open` until a writer comes).
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest
from sqlalchemy import func, select

from pipeline.batch import JobOptions, run_job
from pipeline.errors import DependencyUnavailable
from review.schema import Decision
from tests.batch.conftest import ImageSet

pytestmark = pytest.mark.model


class _Killer:
    """SIGKILLs each process that opens `fifo` to read it."""

    def __init__(self, fifo: Path) -> None:
        self.fifo = str(fifo)
        #: the processes killed (one may be seen again while it dies, still holding the FIFO)
        self.killed: set[int] = set()
        self.errors: list[Exception] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _readers(self) -> list[int]:
        """Processes holding the FIFO open to read.  Only readers: a process forked while
        this thread holds its write end (a worker being spawned, before its exec closes the
        descriptor) holds the FIFO too, and is no file's victim."""
        found = []
        for name in os.listdir("/proc"):
            if not name.isdigit() or int(name) == os.getpid():
                continue
            try:
                for fd in os.listdir(f"/proc/{name}/fd"):
                    if os.readlink(f"/proc/{name}/fd/{fd}") != self.fifo:
                        continue
                    with open(f"/proc/{name}/fdinfo/{fd}") as info:
                        flags = next(int(line.split()[1], 8) for line in info
                                     if line.startswith("flags:"))
                    if flags & os.O_ACCMODE == os.O_RDONLY:
                        found.append(int(name))
                        break
            except (OSError, StopIteration):  # gone, or not ours to look at
                continue
        return found

    def _run(self) -> None:
        # this thread must not die: a reader it leaves blocked in `open` hangs the job
        while not self._stop.is_set():
            try:
                self._once()
            except Exception as exc:  # noqa: BLE001 - kept, and raised by __exit__
                self.errors.append(exc)

    def _once(self) -> None:
        try:  # succeeds only while a reader is opening or holds the FIFO
            fd = os.open(self.fifo, os.O_WRONLY | os.O_NONBLOCK)
        except OSError as exc:
            if exc.errno != errno.ENXIO:
                raise
            time.sleep(0.01)
            return
        try:
            deadline = time.monotonic() + 5
            while time.monotonic() < deadline:
                readers = self._readers()
                for pid in readers:
                    with contextlib.suppress(ProcessLookupError):  # it ended by itself
                        os.kill(pid, signal.SIGKILL)
                    self.killed.add(pid)
                if readers:
                    break
                time.sleep(0.01)
        finally:
            os.close(fd)

    def __enter__(self) -> _Killer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=10)
        assert not self.errors, self.errors


@pytest.fixture
def poison(tmp_path: Path) -> Iterator[Path]:
    fifo = tmp_path / "poison.jpg"
    os.mkfifo(fifo)
    yield fifo


def test_a_file_that_kills_its_worker_is_its_row_s_error_and_the_job_goes_on(
        small_set: ImageSet, tmp_path: Path, make_runtime: Any, poison: Path) -> None:
    rt = make_runtime(tmp_path / "data", f"sqlite:///{tmp_path / 'store.db'}")
    rows = [{"path": str(small_set.folder / f"img{i:04d}.jpg"), "upload_id": f"u{i}"}
            for i in range(12)]
    rows.insert(5, {"path": str(poison), "upload_id": "poison"})
    manifest = tmp_path / "rows.jsonl"
    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "out.parquet"
    options = JobOptions(model="fp32", workers=2, batch_size=4, part_rows=64, progress=False)

    with _Killer(poison) as killer:
        result = run_job(rt, str(manifest), out, options)

    got = {r["ordinal"]: r for r in pq.read_table(out).to_pylist()}
    assert sorted(got) == list(range(13))  # every row once
    assert got[5]["error_code"] == "image.worker_crashed"
    assert all(got[i]["decision_id"] for i in got if i != 5)
    # killed with its batch, with its batch alone, then alone: three workers died for it
    assert len(killer.killed) == 3
    assert result.counters["recorded"] == 12
    with rt.db.transaction() as s:
        assert s.scalar(select(func.count()).select_from(Decision)) == 12


def test_workers_dying_again_and_again_stop_the_job_keeping_what_it_recorded(
        small_set: ImageSet, tmp_path: Path, make_runtime: Any, poison: Path) -> None:
    """Many files that end their workers in one run are the machine's trouble (memory), not
    the files': past `LocalWorkers.MAX_RESTARTS` replaced pools the job stops, resumable."""
    rt = make_runtime(tmp_path / "data", f"sqlite:///{tmp_path / 'store.db'}")
    rows = [{"path": str(small_set.folder / f"img{i:04d}.jpg"), "upload_id": f"u{i}"}
            for i in range(4)]
    rows += [{"path": str(poison), "upload_id": f"poison-{i}"} for i in range(8)]
    manifest = tmp_path / "rows.jsonl"
    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "out.parquet"
    options = JobOptions(model="fp32", workers=2, batch_size=4, part_rows=64, progress=False)

    with _Killer(poison), pytest.raises(DependencyUnavailable, match="died 9 times"):
        run_job(rt, str(manifest), out, options)
    done = {r["ordinal"]: r for r in pq.read_table(out).to_pylist()}
    assert all(done[i]["decision_id"] for i in range(4))  # recorded before it stopped
    assert {done[i]["error_code"] for i in done if i >= 4} <= {"image.worker_crashed"}
