"""The Ray engine: the same `Predictor` through Ray Data `map_batches` on an actor pool.

The driver streams the source in windows (`ray_window` rows), asks the database which uploads
are already decided (exactly as the local engine does), and sends the rest through
`map_batches(Predictor, compute=ActorPoolStrategy(size=N))`, one actor per worker (a GPU each
when the cluster has GPUs).  Predictions stream back to the driver, which records each batch
with the same idempotent `BatchRecorder` and writes the same Parquet parts: exactly once holds
because the database and the committed parts decide, not Ray.  Tested with ray[data]==2.60.0.
A local Ray starts with usage stats off, no dashboard and its temporary files under the data
dir; `--ray-address` joins an existing cluster instead (whose workers must reach the
source's files and the blob store: use fsspec URLs and a shared store there).
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipeline.batch.errors import EngineUnavailable
from pipeline.batch.predictor import Prediction, Predictor, PredictorSpec
from pipeline.batch.progress import JobProgress

if TYPE_CHECKING:
    from pipeline.batch.engine import _Batch, _Job

__all__ = ["RAY_VERSION", "run_ray"]

logger = logging.getLogger(__name__)

#: the version this engine is tested with (pyproject's `cluster` extra pins it)
RAY_VERSION = "2.60.0"
# Ray's unix socket paths (<temp>/session_<date>_<pid>/sockets/plasma_store, ~60 bytes past
# the temp dir) must stay below the 107-byte limit of a socket path
_MAX_TEMP_DIR = 45


def _import_ray() -> Any:
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    try:
        import ray
    except ImportError as exc:
        raise EngineUnavailable(
            "the Ray engine needs Ray: pip install 'lookfirst[cluster]'"
        ) from exc
    if ray.__version__ != RAY_VERSION:
        logger.warning("Ray %s is not the tested %s", ray.__version__, RAY_VERSION)
    return ray


def _temp_dir(data_dir: Path) -> tuple[str, bool]:
    """Ray's temporary folder, and whether it is a private one to remove afterwards."""
    wanted = (data_dir / "ray").resolve()
    if len(str(wanted)) <= _MAX_TEMP_DIR:
        wanted.mkdir(parents=True, exist_ok=True)
        return str(wanted), False
    # the data dir is too deep for Ray's socket paths: a short private folder instead
    return tempfile.mkdtemp(prefix="lookfirst-ray-"), True


@contextlib.contextmanager
def started(ray: Any, *, address: str | None, cpus: int, data_dir: Path) -> Iterator[None]:
    """Join `address`, or start a local Ray, for the length of the block (a Ray already
    initialised by the caller is used as it is and left running)."""
    if ray.is_initialized():
        yield
        return
    private: str | None = None
    if address:
        ray.init(address=address, include_dashboard=False, log_to_driver=False,
                 configure_logging=False)
    else:
        temp, own = _temp_dir(data_dir)
        private = temp if own else None
        ray.init(num_cpus=cpus, include_dashboard=False, log_to_driver=False,
                 configure_logging=False, _temp_dir=temp,
                 object_store_memory=512 * 1024 * 1024)
    try:
        yield
    finally:
        ray.shutdown()
        if private is not None:
            shutil.rmtree(private, ignore_errors=True)


def _windows(job: _Job, window_rows: int) -> Iterator[list[_Batch]]:
    from pipeline.batch.engine import _pending_batches

    per_window = max(1, window_rows // job.batch_size)
    batches = (rows for rows in _pending_batches(job.source, job.job, job.batch_size)
               if rows)
    while True:
        window = [job.prepare(rows) for rows in itertools.islice(batches, per_window)]
        if not window:
            return
        yield window


def run_ray(job: _Job, spec: PredictorSpec, workers: int, progress: JobProgress) -> None:
    ray = _import_ray()
    options = job.options
    with started(ray, address=options.ray_address, cpus=workers,
                 data_dir=job.rt.settings.data_dir):
        ctx = ray.data.DataContext.get_current()
        ctx.enable_progress_bars = False
        gpus = float(ray.cluster_resources().get("GPU", 0))
        for window in _windows(job, options.ray_window):
            _run_window(ray, job, window, spec, workers, gpus, progress)


def _run_window(ray: Any, job: _Job, window: list[_Batch], spec: PredictorSpec, workers: int,
                gpus: float, progress: JobProgress) -> None:
    """One dataset through the actor pool; each batch is recorded as soon as it is whole."""
    waiting: dict[int, int] = {}  # ordinal -> index of its batch in the window
    missing = [len(b.to_model) for b in window]
    got: list[list[Prediction]] = [[] for _ in window]
    items: list[dict[str, Any]] = []
    for i, b in enumerate(window):
        for r in b.to_model:
            waiting[r.ordinal] = i
            items.append({"ordinal": r.ordinal, "location": r.location or ""})
    for i, n in enumerate(missing):
        if n == 0:
            progress.advance(job.finish(window[i], []))
    if not items:
        return
    ds = ray.data.from_items(items).map_batches(
        Predictor,
        fn_constructor_kwargs={"spec": spec},
        batch_size=job.batch_size,
        batch_format="numpy",
        compute=ray.data.ActorPoolStrategy(size=workers),
        num_cpus=0 if gpus else 1,
        num_gpus=1 if gpus else 0,
    )
    for out in ds.iter_batches(batch_size=None, batch_format="numpy"):
        for p in Prediction.from_batch(out):
            i = waiting.pop(p.ordinal)
            got[i].append(p)
            missing[i] -= 1
            if missing[i] == 0:
                progress.advance(job.finish(window[i], got[i]))
    if waiting:  # pragma: no cover - Ray lost rows without raising
        raise EngineUnavailable(f"Ray returned no prediction for {len(waiting)} rows")

