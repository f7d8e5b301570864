"""The Ray engine on a local Ray (2 CPUs) gives the same rows as the local engine."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from pipeline.batch import JobOptions, run_job
from tests.batch.conftest import ImageSet
from tests.batch.test_engine import comparable, read_rows

pytest.importorskip("ray", reason="the Ray engine needs the `cluster` extra (make test has it)")

pytestmark = [
    pytest.mark.model,
    pytest.mark.slow,
    # Ray's own modules warn about their own deprecated settings on import
    pytest.mark.filterwarnings("ignore::DeprecationWarning:ray.*"),
]


def test_ray_rows_equal_local_rows(small_set: ImageSet, tmp_path: Path,
                                   make_runtime: Any) -> None:
    base = JobOptions(model="fp32", workers=2, batch_size=8, part_rows=20, progress=False)
    local_rt = make_runtime(tmp_path / "local", f"sqlite:///{tmp_path / 'local.db'}")
    local = run_job(local_rt, str(small_set.manifest), tmp_path / "local.parquet", base)
    ray_rt = make_runtime(tmp_path / "r", f"sqlite:///{tmp_path / 'ray.db'}")
    # a window smaller than the job: the driver streams the source through several datasets
    ray = run_job(ray_rt, str(small_set.manifest), tmp_path / "ray.parquet",
                  JobOptions(**{**base.__dict__, "engine": "ray", "ray_window": 24}))
    a, b = read_rows(tmp_path / "local.parquet"), read_rows(tmp_path / "ray.parquet")
    assert a.keys() == b.keys()
    for ordinal in a:
        assert a[ordinal]["error_code"] == b[ordinal]["error_code"], ordinal
        if a[ordinal]["error_code"] is None:
            assert comparable(a[ordinal]) == comparable(b[ordinal]), ordinal
    for key in ("rows", "decided", "outcomes", "queues", "errors", "model_versions"):
        assert local.summary[key] == ray.summary[key], key
