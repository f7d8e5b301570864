"""Job state: the output folder is the job, and what it has committed is what is done.

`_job.json` names the source (and its size and mtime) the job runs over; the committed
Parquet parts say which rows are finished.  A second run with `resume` skips those rows,
removes the parts a killed run left half-written, and goes on; the database answers for the
rows recorded after the last committed part (their decisions are read back, the model does
not run again).  A lock file keeps two processes off one job.
"""

from __future__ import annotations

import datetime as dt
import fcntl
import json
import logging
import os
from pathlib import Path
from typing import IO, Any

import numpy as np
import numpy.typing as npt

from pipeline.batch.errors import JobLocked, OutputExists, ResumeMismatch
from pipeline.batch.output import (
    committed_ordinals,
    committed_parts,
    remove_temporaries,
)

__all__ = ["JobDir"]

logger = logging.getLogger(__name__)

JOB_FILE = "_job.json"
LOCK_FILE = "_lock"


class JobDir:
    """An output folder opened for one run of a job; `close()` releases its lock."""

    def __init__(self, out: Path, fingerprint: dict[str, Any], *, resume: bool) -> None:
        self.out = out
        out.mkdir(parents=True, exist_ok=True)
        self._lock: IO[str] | None = open(out / LOCK_FILE, "a")  # noqa: SIM115
        try:
            fcntl.flock(self._lock.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._lock.close()
            self._lock = None
            raise JobLocked(f"another process is running the job in {out}") from None
        try:
            self._open(fingerprint, resume=resume)
        except BaseException:
            self.close()
            raise

    def _open(self, fingerprint: dict[str, Any], *, resume: bool) -> None:
        job_file = self.out / JOB_FILE
        started = job_file.exists() or bool(committed_parts(self.out))
        if started and not resume:
            raise OutputExists(f"{self.out} already holds a job's results: pass --resume to "
                               "continue it, or choose another output")
        if job_file.exists():
            recorded = json.loads(job_file.read_text(encoding="utf-8"))
            if recorded.get("source") != fingerprint:
                raise ResumeMismatch(
                    f"{self.out} belongs to a job over {recorded.get('source', {}).get('spec')!r}"
                    " (or that source has changed since): it cannot be resumed with this source"
                )
            self.runs = int(recorded.get("runs", 0)) + 1
        else:
            self.runs = 1
        dropped = remove_temporaries(self.out)
        if dropped:
            logger.info("removed parts a killed run left uncommitted", extra={"parts": dropped})
        tmp = self.out / f".{JOB_FILE}.tmp"
        tmp.write_text(json.dumps({
            "source": fingerprint, "runs": self.runs,
            "updated_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        }, indent=2, sort_keys=True) + "\n", encoding="utf-8")
        os.replace(tmp, job_file)
        self.done: npt.NDArray[np.int64] = committed_ordinals(self.out)

    def is_done(self, ordinals: npt.NDArray[np.int64]) -> npt.NDArray[np.bool_]:
        """Which of these ordinals a committed part already holds."""
        if self.done.size == 0:
            return np.zeros(len(ordinals), dtype=bool)
        idx = np.searchsorted(self.done, ordinals)
        idx = np.minimum(idx, self.done.size - 1)
        found: npt.NDArray[np.bool_] = self.done[idx] == ordinals
        return found

    def close(self) -> None:
        if self._lock is not None:
            fcntl.flock(self._lock.fileno(), fcntl.LOCK_UN)
            self._lock.close()
            self._lock = None
