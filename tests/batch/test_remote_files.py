"""Manifests of URLs: a real HTTP server on 127.0.0.1 that the worker processes read through
fsspec, with files that fail for now (503) and for good (404), and schemes fsspec lacks.

A file that fails for now is tried again; still failing, it is no result (no row, no decision)
and the job says so (exit 3, `batch.unfinished`); the same command with --resume then scores it
once.  A missing file and an unknown scheme are the row's error; a scheme whose file system
needs a package not installed here stops the job, keeping what it recorded.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from collections import Counter
from collections.abc import Iterator
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest
from fsspec.registry import known_implementations, register_implementation
from sqlalchemy import func, select

from pipeline.batch import JobOptions, run_job
from pipeline.batch.errors import SchemeUnavailable
from pipeline.batch.predictor import transient
from review.schema import Decision, Upload
from tests.batch.conftest import ROOT, ImageSet

pytestmark = pytest.mark.model

FP32 = JobOptions(model="fp32", workers=2, batch_size=4, part_rows=64, progress=False)


class _Files(ThreadingHTTPServer):
    """Serves a folder; /down/... answers 503 while `down` is set, /flaky/... answers 503 to
    its first two requests of each path (one try of a read: fsspec's HEAD, then its GET)."""

    down = True
    seen: Counter[str]


class _Handler(SimpleHTTPRequestHandler):
    server: _Files

    def log_message(self, *args: Any) -> None:
        pass

    def _failing(self) -> bool:
        path = self.path.split("?")[0]
        self.server.seen[path] += 1
        if path.startswith("/down/") and self.server.down:
            return True
        return path.startswith("/flaky/") and self.server.seen[path] <= 2

    def translate_path(self, path: str) -> str:
        for prefix in ("/down/", "/flaky/"):
            if path.startswith(prefix):
                path = "/" + path[len(prefix):]
        return super().translate_path(path)

    def do_HEAD(self) -> None:
        if self._failing():
            self.send_error(503, "busy")
            return
        super().do_HEAD()

    def do_GET(self) -> None:
        if self._failing():
            self.send_error(503, "busy")
            return
        super().do_GET()


@pytest.fixture
def files(small_set: ImageSet) -> Iterator[tuple[_Files, str]]:
    folder = str(small_set.folder)

    def handler(*args: Any) -> _Handler:
        return _Handler(*args, directory=folder)

    server = _Files(("127.0.0.1", 0), handler)
    server.seen = Counter()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server, f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def _manifest(path: Path, base: str) -> Path:
    rows = [
        {"url": f"{base}/img0000.jpg", "upload_id": "ok-0"},
        {"url": f"{base}/flaky/img0001.jpg", "upload_id": "flaky-1"},
        {"url": f"{base}/down/img0002.jpg", "upload_id": "down-2"},
        {"url": f"{base}/missing.jpg", "upload_id": "missing-3"},
        {"url": "nosuchscheme://bucket/img.jpg", "upload_id": "bad-url-4"},
        {"url": f"{base}/down/img0005.jpg", "upload_id": "down-5"},
        {"url": f"{base}/img0006.jpg", "upload_id": "ok-6"},
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_files_that_fail_for_now_are_retried_then_left_for_the_resume(
        files: tuple[_Files, str], tmp_path: Path, make_runtime: Any) -> None:
    server, base = files
    rt = make_runtime(tmp_path / "data", f"sqlite:///{tmp_path / 'store.db'}")
    manifest = _manifest(tmp_path / "urls.jsonl", base)
    out = tmp_path / "out.parquet"

    first = run_job(rt, str(manifest), out, FP32)
    rows = {r["ordinal"]: r for r in pq.read_table(out).to_pylist()}
    # the flaky file failed its first try and was read on the second: a decision
    assert rows[1]["error_code"] is None and rows[1]["decision_id"]
    assert server.seen["/flaky/img0001.jpg"] >= 3
    # the files still down after the tries: no row, no decision, counted and named
    assert 2 not in rows and 5 not in rows
    assert first.counters["unfinished"] == 2
    assert first.summary["last_run"]["unfinished_examples"] == [
        f"{base}/down/img0002.jpg", f"{base}/down/img0005.jpg"]
    # for good: the row's own error
    assert rows[3]["error_code"] == "file.not_found"
    assert rows[4]["error_code"] == "row.bad_url"
    assert rows[0]["decision_id"] and rows[6]["decision_id"]
    with rt.db.transaction() as s:
        assert s.scalar(select(func.count()).select_from(Decision)) == 3

    server.down = False  # the storage is back
    again = run_job(rt, str(manifest), out,
                    JobOptions(**{**FP32.__dict__, "resume": True}))
    assert again.counters["unfinished"] == 0 and again.counters["to_model"] == 2
    rows = pq.read_table(out).to_pylist()
    assert sorted(r["ordinal"] for r in rows) == list(range(7))  # each row once
    by = {r["ordinal"]: r for r in rows}
    assert by[2]["decision_id"] and by[5]["decision_id"]
    with rt.db.transaction() as s:
        assert s.scalar(select(func.count()).select_from(Decision)) == 5
        ids = s.scalars(select(Upload.external_id)).all()
    assert sorted(ids) == sorted(["ok-0", "flaky-1", "down-2", "down-5", "ok-6"])


def test_which_failures_are_for_now() -> None:
    class Status(Exception):
        def __init__(self, status: int) -> None:
            self.status = status

    for status, for_now in ((503, True), (500, True), (429, True), (408, True),
                            (404, False), (403, False), (400, False)):
        assert transient(Status(status), remote=True) is for_now, status
    # fsspec's HTTP file system wraps every failure to reach a file in FileNotFoundError
    refused = FileNotFoundError("http://x/y.jpg")
    refused.__cause__ = ConnectionRefusedError()
    assert transient(refused, remote=True)
    gone = FileNotFoundError("http://x/y.jpg")
    gone.__cause__ = FileNotFoundError("404")
    assert not transient(gone, remote=True)
    assert not transient(FileNotFoundError("/data/y.jpg"), remote=False)
    assert transient(TimeoutError(), remote=False)
    assert not transient(PermissionError(), remote=True)
    assert not transient(IsADirectoryError(), remote=False)
    # a remote library's own error is not the row's fault; a local one is the file's
    assert transient(RuntimeError("botocore said no"), remote=True)
    assert not transient(OSError(5, "I/O error"), remote=False)


@pytest.fixture
def missing_package_scheme() -> Iterator[str]:
    """A scheme fsspec knows whose package is not installed (as s3:// is without s3fs)."""
    name = "lookfirsttestfs"
    register_implementation(name, "lookfirst_no_such_package.FileSystem", clobber=True,
                            errtxt="Install lookfirst-no-such-package to access these URLs")
    from pipeline.batch import sources

    sources._SCHEMES.pop(name, None)
    try:
        yield name
    finally:
        known_implementations.pop(name, None)
        sources._SCHEMES.pop(name, None)


def test_a_scheme_whose_package_is_missing_stops_the_job_keeping_what_it_recorded(
        small_set: ImageSet, tmp_path: Path, make_runtime: Any,
        missing_package_scheme: str) -> None:
    rt = make_runtime(tmp_path / "data", f"sqlite:///{tmp_path / 'store.db'}")
    rows = [{"path": str(small_set.folder / f"img{i:04d}.jpg"), "upload_id": f"u{i}"}
            for i in range(8)]
    rows.append({"url": f"{missing_package_scheme}://bucket/a.jpg", "upload_id": "remote"})
    manifest = tmp_path / "mixed.jsonl"
    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "out.parquet"
    with pytest.raises(SchemeUnavailable) as stopped:
        run_job(rt, str(manifest), out, FP32)
    assert "line 9" in stopped.value.detail
    assert "Install lookfirst-no-such-package" in stopped.value.detail
    # the two batches before that row were recorded and committed, each row once
    done = sorted(r["ordinal"] for r in pq.read_table(out).to_pylist())
    assert done == list(range(8))


def test_the_command_says_which_rows_wait_and_exits_3(
        files: tuple[_Files, str], tmp_path: Path) -> None:
    _, base = files
    manifest = _manifest(tmp_path / "urls.jsonl", base)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "ORT_DISABLE_TELEMETRY": "1",
           "LOOKFIRST_DATA_DIR": str(tmp_path / "data"),
           "LOOKFIRST_DATABASE_URL": f"sqlite:///{tmp_path / 'cli.db'}"}
    done = subprocess.run(
        [str(Path(sys.executable).parent / "lookfirst"), "batch", str(manifest), "--out",
         str(tmp_path / "out.parquet"), "--model", "fp32", "--workers", "1", "--json"],
        env=env, cwd=ROOT, capture_output=True, text=True, timeout=600, check=False)
    assert done.returncode == 3, done.stderr[-2000:]
    summary = json.loads(done.stdout)
    assert summary["error"]["code"] == "batch.unfinished"
    assert f"{base}/down/img0002.jpg" in summary["error"]["detail"]
    assert "--resume" in summary["error"]["detail"]
    assert summary["last_run"]["unfinished"] == 2 and summary["rows"] == 5
    assert summary["last_run"]["to_model"] == 4  # the two left are not counted as scored
    assert "Traceback" not in done.stderr
