"""The job's main process holds about as much at 8,000 rows as at 1,000: streamed source,
bounded batches in flight, Parquet parts flushed as they fill."""

from __future__ import annotations

import json
import tracemalloc
from pathlib import Path
from typing import Any

import pytest

from pipeline.batch import JobOptions, run_job

pytestmark = pytest.mark.model


def peak(tmp_path: Path, rows: int, make_runtime: Any) -> int:
    work = tmp_path / str(rows)
    work.mkdir()
    manifest = work / "m.jsonl"
    with open(manifest, "w") as fh:
        # rows the workers answer quickly (the file is missing): the job's own bookkeeping
        # is what is measured, not the model
        for i in range(rows):
            fh.write(json.dumps({"path": f"nowhere/{i}.jpg", "upload_id": f"u{i}"}) + "\n")
    rt = make_runtime(work / "d", f"sqlite:///{work / 'db.sqlite'}")
    tracemalloc.start()
    try:
        result = run_job(rt, str(manifest), work / "out",
                         JobOptions(model="fp32", workers=2, batch_size=32, part_rows=1000,
                                    progress=False))
        _, top = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert result.summary["errors"] == {"file.not_found": rows}
    return top


def test_main_process_memory_is_flat(tmp_path: Path, make_runtime: Any) -> None:
    peak(tmp_path, 50, make_runtime)  # first use imports (pandas under pyarrow, ...): not held
    small = peak(tmp_path, 1_000, make_runtime)
    large = peak(tmp_path, 8_000, make_runtime)
    # 7,000 more rows held anywhere would be several MB more
    assert large < small * 1.5 + (1 << 20), (small, large)
