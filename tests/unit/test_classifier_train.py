"""The training loop's judgement: which epoch is best, when a model is not clearly better than
chance, how the pretrained backbone is trained (frozen BatchNorm statistics, a gentler rate)."""

from __future__ import annotations

import math

import pytest

from tests.synthetic import CATEGORIES, need_torch

need_torch()

import torch  # noqa: E402

from models.classifier.arch import build_net, get_architecture  # noqa: E402
from models.classifier.train import (  # noqa: E402
    TrainConfig,
    _param_groups,
    _set_train_mode,
    quality_gate,
    selection_score,
)
from models.errors import TrainingConfigInvalid  # noqa: E402


def row(auc: list[float], ap: list[float], loss: float) -> dict[str, object]:
    return {"val_auc": dict(zip(CATEGORIES, auc, strict=True)),
            "val_ap": dict(zip(CATEGORIES, ap, strict=True)), "val_loss": loss}


def test_the_best_epoch_is_the_one_users_care_about_not_the_lowest_loss() -> None:
    # The run: the loss rose while the ranking got better.
    early = row([0.55, 0.60, 0.50], [0.30, 0.30, 0.20], loss=0.40)
    later = row([0.99, 0.97, 0.95], [0.90, 0.85, 0.80], loss=0.55)
    assert selection_score(later, "roc_auc") > selection_score(early, "roc_auc")
    assert selection_score(later, "average_precision") > selection_score(early, "average_precision")
    assert selection_score(early, "loss") > selection_score(later, "loss")  # the old rule
    assert math.isclose(selection_score(later, "roc_auc"), (0.99 + 0.97 + 0.95) / 3)
    # A category without positives in validation (NaN) does not poison the mean.
    assert selection_score(row([math.nan, 0.8, 0.6], [0, 0, 0], 1.0), "roc_auc") == 0.7


def test_the_quality_gate_names_each_category_below_the_bar_on_either_split() -> None:
    val = dict(zip(CATEGORIES, [0.97, 0.62, 0.58], strict=True))
    calib = dict(zip(CATEGORIES, [0.95, 0.55, 0.70], strict=True))
    gate = quality_gate(val, calib, min_auc=0.6)
    assert not gate["passed"]
    assert gate["failing"] == {"synthetic.checker": {"calib": 0.55},
                               "synthetic.blobs": {"val": 0.58}}
    assert quality_gate(val, None, min_auc=0.5)["passed"]
    nan = quality_gate({"a": math.nan}, None, min_auc=0.6)
    assert not nan["passed"]  # what cannot be measured is not a pass


@pytest.mark.parametrize(
    ("kw", "message"),
    [({"select_on": "accuracy"}, "select_on"), ({"on_weak": "ignore"}, "on_weak"),
     ({"min_auc": 1.5}, "min_auc"), ({"backbone_lr_factor": -1.0}, "backbone_lr_factor")],
)
def test_config_refuses_what_it_cannot_do(kw: dict[str, object], message: str) -> None:
    with pytest.raises(TrainingConfigInvalid, match=message):
        TrainConfig(categories=CATEGORIES, **kw)  # type: ignore[arg-type]


def test_frozen_batchnorm_keeps_its_statistics_and_still_learns_its_scale() -> None:
    spec = get_architecture("efficientnet_lite0")
    net = build_net("efficientnet_lite0", CATEGORIES, spec.preprocess(32))
    bn = net.backbone.stem[1]
    before = bn.running_mean.clone()
    _set_train_mode(net, freeze_bn=True)
    assert net.training and not bn.training
    x = torch.randint(0, 256, (4, 32, 32, 3), dtype=torch.uint8)
    net(x).sum().backward()
    assert torch.equal(bn.running_mean, before)
    assert bn.weight.grad is not None and bn.weight.requires_grad
    _set_train_mode(net, freeze_bn=False)
    net(x)
    assert not torch.equal(bn.running_mean, before)


def test_the_new_head_learns_faster_than_the_pretrained_backbone() -> None:
    net = build_net("efficientnet_lite0", CATEGORIES, get_architecture(
        "efficientnet_lite0").preprocess(32))
    groups = _param_groups(net, "classifier", 1e-3, 0.1)
    by_name = {g["name"]: g for g in groups}
    assert by_name["head"]["lr"] == 1e-3 and by_name["backbone"]["lr"] == pytest.approx(1e-4)
    assert len(by_name["head"]["params"]) == 2  # the Linear's weight and bias
    assert sum(len(g["params"]) for g in groups) == len(list(net.parameters()))
