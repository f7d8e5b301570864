"""Parquet output: rows written in parts, each part committed atomically, and the summary.

The output is a folder (`results.parquet/`) that pyarrow, pandas, DuckDB and Spark read as one
dataset.  A part is written under a temporary name, flushed to disk and renamed into place,
so a reader (or a resumed job) sees a part whole or not at all.  The summary is computed from
the committed parts themselves, so it is right however many runs the job took.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import threading
import time
from collections import Counter
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pyarrow as pa
import pyarrow.parquet as pq

__all__ = ["SCHEMA", "PartWriter", "committed_ordinals", "committed_parts",
           "import_pandas_meanwhile", "summarize"]

logger = logging.getLogger(__name__)

SCHEMA = pa.schema([
    pa.field("ordinal", pa.int64(), nullable=False),
    pa.field("input", pa.string()),
    pa.field("upload_id", pa.string()),
    pa.field("account_id", pa.string()),
    pa.field("sha256", pa.string()),
    pa.field("decision_id", pa.string()),
    pa.field("review_item_id", pa.int64()),
    pa.field("model_version", pa.string()),
    pa.field("policy_version", pa.string()),
    pa.field("outcome", pa.string()),
    pa.field("queue", pa.string()),
    pa.field("scores", pa.map_(pa.string(), pa.float64())),
    #: the statement of reasons, as JSON text (its shape varies with the policy)
    pa.field("reasons", pa.string()),
    pa.field("already_scored", pa.bool_()),
    pa.field("error_code", pa.string()),
    pa.field("error_detail", pa.string()),
])
PART = re.compile(r"^part-(\d{6})\.parquet$")
TMP_PREFIX = ".tmp-"
SUMMARY_FILE = "_summary.json"


def committed_parts(out: Path) -> list[Path]:
    if not out.is_dir():
        return []
    return sorted(p for p in out.iterdir() if PART.match(p.name))


def committed_ordinals(out: Path) -> npt.NDArray[np.int64]:
    """Every row ordinal in a committed part, sorted (8 bytes a row: flat enough)."""
    chunks = [
        pq.read_table(p, columns=["ordinal"]).column("ordinal").to_numpy()
        for p in committed_parts(out)
    ]
    if not chunks:
        return np.empty(0, dtype=np.int64)
    return np.sort(np.concatenate(chunks).astype(np.int64))


def remove_temporaries(out: Path) -> int:
    """Parts a killed run was still writing: never committed, so never counted."""
    n = 0
    if out.is_dir():
        for p in out.iterdir():
            if p.name.startswith(TMP_PREFIX):
                p.unlink(missing_ok=True)
                n += 1
    return n


def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):  # some file systems cannot sync a directory
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def import_pandas_meanwhile() -> None:
    """pyarrow imports pandas (when installed) the first time it builds an array from Python
    objects: a job's first Parquet commit, which in a short job is its end, when the workers
    are done and nothing else runs.  Imported on a thread of its own at the job's start, those
    0.4 s of CPU overlap the job instead of lengthening it."""

    def load() -> None:
        with contextlib.suppress(ImportError):
            import pandas  # noqa: F401

    threading.Thread(target=load, name="import-pandas", daemon=True).start()


class PartWriter:
    """Buffers output rows; commits a part every `part_rows` rows or `part_seconds`."""

    def __init__(self, out: Path, *, part_rows: int = 2048, part_seconds: float = 30.0) -> None:
        if part_rows < 1:
            raise ValueError("part_rows must be >= 1")
        self.out = out
        self.part_rows = part_rows
        self.part_seconds = part_seconds
        self._rows: list[dict[str, Any]] = []
        self._last = time.monotonic()
        existing = [int(m.group(1)) for p in committed_parts(out)
                    if (m := PART.match(p.name))]
        self._next = max(existing, default=-1) + 1
        self.committed_rows = 0

    def add(self, rows: Iterable[Mapping[str, Any]]) -> None:
        for row in rows:
            r = dict(row)
            if r.get("reasons") is not None and not isinstance(r["reasons"], str):
                r["reasons"] = json.dumps(r["reasons"], sort_keys=True, default=str)
            self._rows.append(r)
        if len(self._rows) >= self.part_rows or (
            self._rows and time.monotonic() - self._last >= self.part_seconds
        ):
            self.commit()

    def commit(self) -> Path | None:
        """Write the buffered rows as one part, atomically; None when nothing is buffered."""
        self._last = time.monotonic()
        if not self._rows:
            return None
        table = pa.Table.from_pylist(self._rows, schema=SCHEMA)
        name = f"part-{self._next:06d}.parquet"
        tmp = self.out / f"{TMP_PREFIX}{name}"
        with open(tmp, "wb") as fh:
            pq.write_table(table, fh, compression="zstd")
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, self.out / name)
        _fsync_dir(self.out)
        self._next += 1
        self.committed_rows += len(self._rows)
        self._rows = []
        return self.out / name


def summarize(out: Path) -> dict[str, Any]:
    """Counts per outcome, per queue and errors by code, over every committed part."""
    outcomes: Counter[str] = Counter()
    queues: Counter[str] = Counter()
    errors: Counter[str] = Counter()
    models: Counter[str] = Counter()
    rows = already = 0
    for part in committed_parts(out):
        t = pq.read_table(part, columns=["outcome", "queue", "error_code", "model_version",
                                         "already_scored"])
        d = t.to_pydict()
        rows += t.num_rows
        for outcome, queue, code, model, again in zip(
            d["outcome"], d["queue"], d["error_code"], d["model_version"], d["already_scored"],
            strict=True,
        ):
            if code is not None:
                errors[code] += 1
                continue
            outcomes[outcome] += 1
            if queue is not None:
                queues[queue] += 1
            if model is not None:
                models[model] += 1
            already += bool(again)
    return {
        "rows": rows,
        "decided": rows - sum(errors.values()),
        "already_scored": already,
        "outcomes": dict(sorted(outcomes.items())),
        "queues": dict(sorted(queues.items())),
        "errors": dict(sorted(errors.items())),
        "model_versions": dict(sorted(models.items())),
    }


def write_summary(out: Path, summary: Mapping[str, Any]) -> Path:
    tmp = out / f"{TMP_PREFIX}{SUMMARY_FILE}"
    tmp.write_text(json.dumps(summary, indent=2, sort_keys=True, default=str) + "\n",
                   encoding="utf-8")
    os.replace(tmp, out / SUMMARY_FILE)
    return out / SUMMARY_FILE
