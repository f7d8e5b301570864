"""Architectures and the networks built on them."""

from __future__ import annotations

import math

import numpy as np
import pytest

from tests.synthetic import CATEGORIES, need_torch

need_torch()

import torch  # noqa: E402

from models.classifier.arch import (  # noqa: E402
    ARCHITECTURES,
    ArchSpec,
    ScoringNet,
    build_net,
    get_architecture,
    register_architecture,
)
from models.classifier.preprocess import Preprocess  # noqa: E402
from models.errors import UnknownArchitecture  # noqa: E402


def test_the_issue_architectures_are_registered_and_duplicates_refused() -> None:
    assert {"mobilenet_v3_large", "efficientnet_b0", "resnet50"} <= set(ARCHITECTURES)
    with pytest.raises(ValueError, match="already registered"):
        register_architecture(ArchSpec("resnet50", "resnet50", "x", "fc"))
    with pytest.raises(UnknownArchitecture):
        get_architecture("resnet9000")


def test_scoring_net_is_calibrated_sigmoid_of_the_logits() -> None:
    torch.manual_seed(0)
    net = build_net("mobilenet_v3_small", CATEGORIES, Preprocess(size=32)).eval()
    scoring = ScoringNet(net, bias=[0.5, -1.0, 0.0], temperature=[2.0, 0.5, 1.0]).eval()
    x = torch.from_numpy(np.random.default_rng(0).integers(0, 256, (2, 32, 32, 3),
                                                           dtype=np.uint8))
    with torch.inference_mode():
        logits = net(x)
        probs = scoring(x)
    assert logits.shape == (2, 3)
    for j, (b, t) in enumerate([(0.5, 2.0), (-1.0, 0.5), (0.0, 1.0)]):
        expected = 1 / (1 + torch.exp(-(logits[:, j] + b) / t))
        assert torch.allclose(probs[:, j], expected, atol=1e-6)


def test_normalisation_is_inside_the_network() -> None:
    pre = Preprocess(size=32)
    net = build_net("resnet18", CATEGORIES, pre)
    x = torch.full((1, 32, 32, 3), 255, dtype=torch.uint8)
    out = net.normalise(x)
    assert out.shape == (1, 3, 32, 32)
    assert out.is_contiguous(memory_format=torch.channels_last)
    assert math.isclose(float(out[0, 0, 0, 0]), (1 - pre.mean[0]) / pre.std[0], rel_tol=1e-5)


@pytest.mark.parametrize(("h", "w", "size"), [(90, 100, 48), (768, 1024, 224), (300, 451, 224)])
def test_device_area_resize_matches_the_preprocessing(h: int, w: int, size: int) -> None:
    from models.classifier.torch_scorer import area_resize

    img = np.random.default_rng(h).integers(0, 256, (h, w, 3), dtype=np.uint8)
    cpu = Preprocess(size=size).one(img).astype(int)
    dev = area_resize(torch.from_numpy(img).permute(2, 0, 1), size).permute(1, 2, 0).numpy()
    diff = np.abs(cpu - dev.astype(int))
    assert diff.max() <= 1 and diff.mean() < 0.01  # rounding only
