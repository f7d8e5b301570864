"""Training: the manifest formats and their errors, initial weights (a local file, the offline
ImageNet start), reproducibility, and the issue's bar: the default configuration learns every
category of a small synthetic set, and a run on shuffled labels is refused and never
registered without force."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from tests.synthetic import CATEGORIES, invoke, make_app, need_torch, write_dataset, write_policy

need_torch()

import torch  # noqa: E402
import torchvision  # noqa: E402

from models.classifier.arch import build_net, load_initial_weights  # noqa: E402
from models.classifier.checkpoint import load_checkpoint  # noqa: E402
from models.classifier.data import Manifest, decode_image  # noqa: E402
from models.classifier.export import export  # noqa: E402
from models.classifier.preprocess import Preprocess  # noqa: E402
from models.classifier.registry import ModelRegistry  # noqa: E402
from models.classifier.train import TrainConfig, TrainResult, train  # noqa: E402
from models.errors import (  # noqa: E402
    CheckpointInvalid,
    DatasetError,
    ModelDidNotLearn,
    ModelNotRegistrable,
)

TINY = {"train": 48, "val": 32, "calib": 32, "test": 16}
#: the issue's scale: a platform's first labelled batch, 480 small images in all
SMALL = {"train": 320, "val": 80, "calib": 80, "test": 0}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_dataset(tmp_path_factory.mktemp("tiny"), counts=TINY, seed=3)


def tiny_config(**kw: object) -> TrainConfig:
    # One epoch on 48 images learns nothing: these runs are about mechanics, not quality.
    base: dict[str, object] = dict(arch="mobilenet_v3_small", categories=CATEGORIES, size=32,
                                   epochs=1, batch_size=16, threads=1, seed=0, on_weak="warn")
    base.update(kw)
    return TrainConfig(**base)  # type: ignore[arg-type]


# ---- the manifest -------------------------------------------------------------------------
def test_jsonl_and_csv_describe_the_same_data(tmp_path: Path) -> None:
    jsonl = write_dataset(tmp_path / "a", counts={"train": 6, "test": 3}, seed=1)
    csv = write_dataset(tmp_path / "b", counts={"train": 6, "test": 3}, seed=1, fmt="csv")
    a, b = Manifest.load(jsonl), Manifest.load(csv)
    assert [(s.labels, s.split, dict(s.context)) for s in a.samples] == [
        (s.labels, s.split, dict(s.context)) for s in b.samples
    ]
    assert isinstance(b.samples[0].context["medical_sharing"], bool)
    # The digest is about the data, not the file format or the folder it sits in.
    assert a.digest() == b.digest()


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ('{"path": "x.png", "labels": [], "split": "holdout"}', "line 2: 'split' must be one of"),
        ('{"path": "x.png", "labels": "a", "split": "train"}', "line 2: 'labels' must be a list"),
        ('{"path": "x.png", "labels": [], "split": "train", "extra": 1}', "unknown keys"),
        ("not json", "line 2: not JSON"),
    ],
)
def test_manifest_errors_name_the_line(tmp_path: Path, line: str, message: str) -> None:
    path = tmp_path / "m.jsonl"
    path.write_text('{"path": "a.png", "labels": [], "split": "train"}\n' + line + "\n")
    with pytest.raises(DatasetError, match=message):
        Manifest.load(path)


def test_categories_must_be_learnable(tiny: Path) -> None:
    m = Manifest.load(tiny)
    with pytest.raises(DatasetError, match="not categories of this model"):
        m.check_categories(CATEGORIES[:2], splits=("train",))
    one_sided = tiny.with_name("one_sided.jsonl")
    rows = [json.loads(x) for x in tiny.read_text().splitlines()]
    for r in rows:
        r["labels"] = [c for c in r["labels"] if c != "synthetic.blobs"]
        r["path"] = str(tiny.parent / r["path"])
    one_sided.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(DatasetError, match="'synthetic.blobs' has 0 positives"):
        Manifest.load(one_sided).check_categories(CATEGORIES, splits=("train",))


def test_missing_image_is_a_dataset_error(tmp_path: Path) -> None:
    path = tmp_path / "m.jsonl"
    path.write_text('{"path": "gone.png", "labels": [], "split": "train"}\n')
    with pytest.raises(DatasetError, match="cannot read image"):
        Manifest.load(path).digest()


# ---- initial weights from a local file ----------------------------------------------------
def test_init_loads_a_local_state_dict_and_resets_only_the_head(tmp_path: Path) -> None:
    torch.manual_seed(123)
    imagenet_shaped = torchvision.models.mobilenet_v3_small(num_classes=1000)
    path = tmp_path / "init.pth"
    torch.save(imagenet_shaped.state_dict(), path)
    net = build_net("mobilenet_v3_small", CATEGORIES, Preprocess(size=32))
    info = load_initial_weights(net, "mobilenet_v3_small", path)
    assert info["source"] == str(path)
    assert info["head_reset"] == ["classifier.3.bias", "classifier.3.weight"]
    got, want = net.backbone.state_dict(), imagenet_shaped.state_dict()
    for k, v in got.items():
        if k.startswith("classifier.3."):
            assert v.shape[0] == len(CATEGORIES)
        else:
            assert torch.equal(v, want[k]), k


def test_init_from_another_architecture_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "resnet.pth"
    torch.save(torchvision.models.resnet18(num_classes=10).state_dict(), path)
    net = build_net("mobilenet_v3_small", CATEGORIES, Preprocess(size=32))
    with pytest.raises(CheckpointInvalid, match="does not fit mobilenet_v3_small"):
        load_initial_weights(net, "mobilenet_v3_small", path)
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointInvalid, match="cannot read --init file"):
        load_initial_weights(net, "mobilenet_v3_small", tmp_path / "junk.pth")


def shuffled(manifest: Path, name: str, *, seed: int = 0) -> Path:
    """The same images with their label lists dealt out again at random within each split."""
    rows = [json.loads(x) for x in manifest.read_text().splitlines()]
    rng = np.random.default_rng(seed)
    for split in sorted({r["split"] for r in rows}):  # sorted: set order varies per process
        idx = [i for i, r in enumerate(rows) if r["split"] == split]
        labels = [rows[i]["labels"] for i in idx]
        for i, j in zip(idx, rng.permutation(len(idx)), strict=True):
            rows[i]["labels"] = labels[j]
    out = manifest.with_name(name)
    out.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return out


def test_train_cli_with_init_path(tiny: Path, tmp_path: Path) -> None:
    init = tmp_path / "fresh.pth"
    torch.save(torchvision.models.mobilenet_v3_small().state_dict(), init)
    policy = write_policy(tmp_path / "policy.yaml")
    app = make_app()
    # Labels dealt at random: nothing can be learned, so the run is refused, loudly, with its
    # files kept for diagnosis (the initial weights it started from among them).
    noise = shuffled(tiny, "noise.jsonl")
    res = invoke(app, "train", "--data", noise, "--arch", "mobilenet_v3_small", "--out",
                 tmp_path / "run", "--init", init, "--epochs", "1", "--size", "32",
                 "--threads", "1", "--batch-size", "16", "--policy", policy, "--json")
    assert res.exit_code == 1, res.output  # a check failed: kind check_failed
    assert json.loads(res.stdout)["error"]["code"] == "model.did_not_learn"
    ckpt = load_checkpoint(tmp_path / "run" / "model.pt")
    assert ckpt.meta["init"]["source"] == str(init)
    assert ckpt.meta["train_config"]["init"] == str(init)
    assert ckpt.meta["registrable"] is False
    res = invoke(app, "train", "--data", tiny, "--arch", "resnet18", "--out", tmp_path / "r2",
                 "--init", init, "--epochs", "1", "--policy", policy, "--json")
    assert res.exit_code == 2
    assert json.loads(res.stdout)["error"]["code"] == "model.checkpoint_invalid"
    res = invoke(app, "train", "--data", tiny, "--arch", "vgg99", "--out", tmp_path / "r3",
                 "--policy", policy)
    assert res.exit_code == 2 and "unknown architecture" in res.output


# ---- reproducibility ----------------------------------------------------------------------
def test_same_seed_same_weights(tiny: Path, tmp_path: Path) -> None:
    m = Manifest.load(tiny)
    a = train(m, tiny_config(seed=5), tmp_path / "a")
    b = train(m, tiny_config(seed=5), tmp_path / "b")
    c = train(m, tiny_config(seed=6), tmp_path / "c")
    sa = load_checkpoint(a.model_path).net.state_dict()
    sb = load_checkpoint(b.model_path).net.state_dict()
    sc = load_checkpoint(c.model_path).net.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not all(torch.equal(sa[k], sc[k]) for k in sa)
    # Everything but the wall-clock time each epoch took.
    assert [{**r, "seconds": 0} for r in a.history] == [{**r, "seconds": 0} for r in b.history]
    last = torch.load(a.last_path, weights_only=True)
    assert {"model", "optimizer", "scheduler", "epoch", "history"} <= set(last)


# ---- the bar: learns by default, refuses noise -----------------------------------
@pytest.fixture(scope="module")
def small(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_dataset(tmp_path_factory.mktemp("small"), counts=SMALL, seed=11)


@pytest.mark.slow
def test_the_default_configuration_learns_every_category(small: Path, tmp_path: Path) -> None:
    """What `lookfirst train --size 96` runs (EfficientNet-Lite0 from its offline ImageNet
    weights, best epoch by validation ROC AUC), with no flag tuned to this data set."""
    result = train(Manifest.load(small), TrainConfig(categories=CATEGORIES, size=96), tmp_path)
    print(f"validation ROC AUC {result.val_auc}; calibration split "
          f"{result.quality['calib_auc']}; best epoch {result.best_epoch} of "
          f"{result.epochs_run}; {result.seconds_per_epoch:.1f} s per epoch")
    assert set(result.val_auc) == set(CATEGORIES)
    assert all(a >= 0.95 for a in result.val_auc.values()), result.val_auc
    assert result.registrable and result.quality["failing"] == {}
    # The kept epoch is the first with the best mean validation AUC, whatever the loss did,
    # and training ran `patience` epochs past it unless it reached the last epoch.
    means = [float(np.mean(list(r["val_auc"].values()))) for r in result.history]
    assert result.best_epoch == 1 + int(np.argmax(means))
    assert result.epochs_run in (result.best_epoch + 5, 30)
    ckpt = load_checkpoint(result.model_path)
    assert ckpt.arch == "efficientnet_lite0"
    assert ckpt.meta["init"]["weights"] == "efficientnet_lite0.imagenet"
    assert ckpt.meta["train_config"]["freeze_bn"] is True
    assert ckpt.meta["metrics"]["quality"]["passed"] is True


@pytest.fixture(scope="module")
def refused(small: Path, tmp_path_factory: pytest.TempPathFactory) -> TrainResult:
    out = tmp_path_factory.mktemp("refused")
    with pytest.raises(ModelDidNotLearn) as caught:
        train(Manifest.load(shuffled(small, "shuffled.jsonl", seed=1)),
              TrainConfig(categories=CATEGORIES, size=96), out)
    assert caught.value.code == "model.did_not_learn"
    assert "not clearly better than chance" in caught.value.detail
    result = caught.value.result
    assert isinstance(result, TrainResult)
    return result


@pytest.mark.slow
def test_shuffled_labels_are_refused_and_kept_for_diagnosis(refused: TrainResult) -> None:
    print("shuffled labels:", refused.quality)
    assert not refused.registrable and refused.quality["failing"]
    assert refused.model_path.is_file()
    saved = json.loads((refused.model_path.parent / "training.json").read_text())
    assert saved["registrable"] is False
    assert load_checkpoint(refused.model_path).meta["registrable"] is False


@pytest.mark.slow
def test_a_refused_model_is_never_registered_or_promoted_without_force(
    refused: TrainResult, small: Path, tmp_path: Path
) -> None:
    loaded = load_checkpoint(refused.model_path)
    images = [decode_image(s.path) for s in Manifest.load(small).split("calib")[:16]]
    exported = export(loaded, tmp_path / "export", parity_images=images, name="weak")
    assert exported.parity.passed  # the SAME-padded network exports like any other
    assert exported.card.metrics["quality"]["passed"] is False
    reg = ModelRegistry(tmp_path / "registry")
    with pytest.raises(ModelNotRegistrable, match="did not clear the quality gate"):
        reg.register(exported.directory, version="1")
    assert reg.entries() == []
    entry = reg.register(exported.directory, version="1", force=True)
    assert reg.history()[-1]["forced"] == "quality gate"
    for promote in (reg.activate, reg.shadow):
        with pytest.raises(ModelNotRegistrable):
            promote(entry.ref)
    assert reg.resolve(entry.ref).status == "inactive"
    assert reg.shadow(entry.ref, force=True).status == "shadow"
    assert reg.history()[-1] == {**reg.history()[-1], "action": "shadow",
                                 "forced": "quality gate"}
