"""One file must never stop a batch job: faults injected into the real predictor (the real
NudeNet model) where no check foresaw them.

A file whose processing raises is that row's `image.processing_failed`; an image the model
fails on is scored alone after its batch fails, and only its row is `model.failed`; a model
that fails on every image of a batch stops the job (`ModelError`), which a resume goes on from,
instead of recording every row as failed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

import pipeline.batch.predictor as predictor_module
from models.errors import ModelError
from pipeline.batch.predictor import Prediction, Predictor, PredictorSpec, rows_to_batch
from tests.batch.conftest import ImageSet

pytestmark = pytest.mark.model


@pytest.fixture(scope="module")
def predictor(tmp_path_factory: pytest.TempPathFactory) -> Predictor:
    root = tmp_path_factory.mktemp("models")
    return Predictor(PredictorSpec(model="fp32", model_root=str(root), blob_dir=None,
                                   model_batch=4))


def _paths(images: ImageSet, n: int) -> list[str]:
    return [str(images.folder / f"img{i:04d}.jpg") for i in range(n)]


def _run(predictor: Predictor, paths: list[str]) -> list[Prediction]:
    return Prediction.from_batch(predictor(rows_to_batch(range(len(paths)), paths)))


def test_a_file_whose_processing_raises_is_its_row_s_error(
        predictor: Predictor, small_set: ImageSet, monkeypatch: pytest.MonkeyPatch) -> None:
    paths = _paths(small_set, 6)
    clean = _run(predictor, paths)
    poison = Path(paths[2]).read_bytes()
    real = predictor_module.ingest_bytes

    def ingest(data: bytes, **kw: Any) -> Any:
        if data == poison:
            raise MemoryError("a defect no check foresaw")
        return real(data, **kw)

    monkeypatch.setattr(predictor_module, "ingest_bytes", ingest)
    got = _run(predictor, paths)
    assert got[2].error_code == "image.processing_failed"
    assert "MemoryError" in (got[2].error_detail or "")
    for i in (0, 1, 3, 4, 5):  # the others exactly as without the fault
        assert got[i].error_code is None and got[i].scores == clean[i].scores


def test_an_image_the_model_fails_on_costs_only_its_row(
        predictor: Predictor, small_set: ImageSet, monkeypatch: pytest.MonkeyPatch) -> None:
    paths = _paths(small_set, 8)
    clean = _run(predictor, paths)
    real = predictor.scorer.score
    bad = predictor_module.ingest_bytes(Path(paths[5]).read_bytes(), max_bytes=1 << 26,
                                        max_pixels=1 << 28).pixels
    calls: list[int] = []

    def score(images: list[Any]) -> Any:
        calls.append(len(images))
        if any(im.shape == bad.shape and (im == bad).all() for im in images):
            raise RuntimeError("the runtime refused this input")
        return real(images)

    monkeypatch.setattr(predictor.scorer, "score", score)
    got = _run(predictor, paths)
    assert got[5].error_code == "model.failed"
    for i in (0, 1, 2, 3, 4, 6, 7):
        assert got[i].error_code is None and got[i].scores == clean[i].scores
    # two model batches of 4; the second failed and its four images were scored alone
    assert calls == [4, 4, 1, 1, 1, 1]


def test_a_model_that_fails_on_every_image_stops_the_job(
        predictor: Predictor, small_set: ImageSet, monkeypatch: pytest.MonkeyPatch) -> None:
    def score(images: list[Any]) -> Any:
        raise RuntimeError("the device is gone")

    monkeypatch.setattr(predictor.scorer, "score", score)
    with pytest.raises(ModelError, match="every image of a batch"):
        _run(predictor, _paths(small_set, 4))
