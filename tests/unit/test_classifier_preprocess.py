"""The one preprocessing object: keyword-only, callable, described and rebuilt exactly."""

from __future__ import annotations

import numpy as np
import pytest

from models.classifier.preprocess import Preprocess


def test_batch_shape_dtype_and_exact_passthrough() -> None:
    rng = np.random.default_rng(0)
    pre = Preprocess(size=32)
    images = [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for h, w in [(40, 90), (32, 32),
                                                                             (7, 300)]]
    batch = pre(images)
    assert batch.shape == (3, 32, 32, 3) and batch.dtype == np.uint8
    assert np.array_equal(batch[1], images[1])  # already the right size: untouched
    assert np.array_equal(pre.one(images[0]), batch[0])


def test_strided_views_are_accepted() -> None:
    img = np.random.default_rng(1).integers(0, 256, (50, 60, 3), dtype=np.uint8)
    pre = Preprocess(size=24)
    assert np.array_equal(pre([img[:, ::-1]])[0], pre([np.ascontiguousarray(img[:, ::-1])])[0])


def test_keyword_only_and_validated() -> None:
    with pytest.raises(TypeError):
        Preprocess(64)  # type: ignore[misc]
    with pytest.raises(ValueError):
        Preprocess(size=4)
    with pytest.raises(ValueError):
        Preprocess(size=64, std=(0.2, 0.0, 0.2))


def test_round_trips_through_its_description() -> None:
    pre = Preprocess(size=96, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))
    d = pre.to_dict()
    assert d["input"]["dtype"] == "uint8" and d["input"]["layout"] == "NHWC"
    assert Preprocess.from_dict(d) == pre
