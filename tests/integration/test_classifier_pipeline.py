"""The whole classifier cycle on a synthetic dataset the test draws: train → calibrate →
evaluate → export (with parity) → register → activate/shadow → serve, through the CLI.

One model is trained for the module (resnet18 at 48 px, about a minute on two cores); every
test below reads it.  The figures asserted are the issue's: validation ROC AUC >= 0.95 per
category, calibration lowering the ECE on a split it was not fitted on, ONNX parity, and the
registry refusing duplicates and corrupted files.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import typer

from tests.synthetic import (
    CATEGORIES,
    invoke,
    make_app,
    need_torch,
    synthetic_policy,
    write_dataset,
    write_policy,
)

need_torch()

from models.classifier.calibrate import expected_calibration_error, sigmoid  # noqa: E402
from models.classifier.checkpoint import LoadedClassifier, load_checkpoint  # noqa: E402
from models.classifier.data import Manifest, decode_image  # noqa: E402
from models.classifier.onnx_scorer import OnnxClassifierScorer  # noqa: E402
from models.classifier.registry import ModelRegistry  # noqa: E402
from models.classifier.shadow import ShadowedScoreResult, ShadowScorer  # noqa: E402
from models.classifier.torch_scorer import TorchClassifierScorer  # noqa: E402
from models.errors import DuplicateModel, ModelDigestMismatch  # noqa: E402

pytestmark = pytest.mark.slow


@dataclass
class Trained:
    root: Path
    manifest: Path
    policy: Path
    run: Path
    export: Path
    registry: Path
    app: typer.Typer
    train_summary: dict[str, Any]
    export_summary: dict[str, Any]

    @property
    def model_pt(self) -> Path:
        return self.run / "model.pt"


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Trained]:
    root = tmp_path_factory.mktemp("classifier")
    manifest = write_dataset(root / "data", counts={"train": 1000, "val": 200, "calib": 200,
                                                    "test": 200}, seed=0)
    policy = write_policy(root / "policy.yaml")
    app = make_app()
    res = invoke(app, "train", "--data", manifest, "--arch", "resnet18", "--out", root / "run",
                 "--size", "48", "--epochs", "10", "--patience", "3", "--lr", "2e-3",
                 "--threads", "1", "--seed", "0", "--name", "synthetic-resnet18",
                 "--policy", policy, "--json")
    assert res.exit_code == 0, res.output
    train_summary = json.loads(res.stdout.strip().splitlines()[-1])
    res = invoke(app, "export", "--model", root / "run" / "model.pt", "--out", root / "export",
                 "--data", manifest, "--policy", policy, "--register", "1.0",
                 "--registry", root / "registry", "--json")
    assert res.exit_code == 0, res.output
    export_summary = json.loads(res.stdout.strip().splitlines()[-1])
    yield Trained(root, manifest, policy, root / "run", root / "export", root / "registry", app,
                  train_summary, export_summary)


@pytest.fixture(scope="module")
def test_images(trained: Trained) -> list[np.ndarray]:
    return [decode_image(s.path) for s in Manifest.load(trained.manifest).split("test")]


def test_training_reaches_the_auc_bar_on_every_category(trained: Trained) -> None:
    aucs = trained.train_summary["val_auc"]
    print("validation ROC AUC:", aucs, "best epoch", trained.train_summary["best_epoch"])
    assert set(aucs) == set(CATEGORIES)
    assert all(a >= 0.95 for a in aucs.values()), aucs
    ckpt = load_checkpoint(trained.model_pt)
    # A checkpoint is a dict of named keys that rebuilds and describes the model.
    assert ckpt.arch == "resnet18" and ckpt.categories == CATEGORIES
    assert ckpt.meta["data"]["digest"] == Manifest.load(trained.manifest).digest()
    assert ckpt.meta["train_config"]["seed"] == 0
    assert {"best.pt", "last.pt", "model.pt", "training.json"} <= {
        p.name for p in trained.run.iterdir()
    }


def test_calibration_lowers_ece_on_a_split_it_was_not_fitted_on(trained: Trained) -> None:
    ckpt: LoadedClassifier = load_checkpoint(trained.model_pt)
    assert ckpt.calibration.split == "calib"
    samples = Manifest.load(trained.manifest).split("test")
    import torch

    from models.classifier.data import label_matrix

    x = ckpt.preprocess([decode_image(s.path) for s in samples])
    with torch.inference_mode():
        logits = ckpt.net(torch.from_numpy(x)).numpy()
    y = label_matrix(samples, ckpt.categories)
    raw = [expected_calibration_error(sigmoid(logits[:, j]), y[:, j])
           for j in range(len(CATEGORIES))]
    calibrated = ckpt.calibration.apply(logits)
    after = [expected_calibration_error(calibrated[:, j], y[:, j])
             for j in range(len(CATEGORIES))]
    print("test-split ECE before:", np.round(raw, 4), "after:", np.round(after, 4),
          "temperatures:", np.round(ckpt.calibration.temperature, 3))
    assert np.mean(after) < np.mean(raw)
    assert sum(a < b for a, b in zip(after, raw, strict=True)) >= 2


def test_export_is_one_onnx_file_with_parity_and_a_card(trained: Trained) -> None:
    parity = trained.export_summary["parity"]
    print("export parity:", parity)
    assert parity["passed"] and parity["outcomes_identical"]
    assert parity["max_abs_diff"] <= 1e-4 and parity["n"] == 64
    assert sorted(p.name for p in trained.export.iterdir()) == ["card.json", "model.onnx"]
    card = json.loads((trained.export / "card.json").read_text())
    for key in ("architecture", "categories", "preprocessing", "calibration", "metrics",
                "training", "onnx", "parity"):
        assert card[key], key
    assert card["training"]["data_digest"] == Manifest.load(trained.manifest).digest()
    assert card["onnx"]["dynamic_batch"] and card["calibration"]["per_category"]
    import onnx

    model = onnx.load(str(trained.export / "model.onnx"), load_external_data=False)
    dim0 = model.graph.input[0].type.tensor_type.shape.dim[0]
    assert dim0.dim_param and not dim0.dim_value  # symbolic: any batch size
    assert not any(t.data_location == onnx.TensorProto.EXTERNAL for t in model.graph.initializer)


def test_registered_model_scores_like_the_checkpoint(trained: Trained, test_images) -> None:
    reg = ModelRegistry(trained.registry)
    entry = reg.resolve("synthetic-resnet18@1.0")
    assert entry.status == "inactive"
    served = reg.load(entry.ref, threads=1)
    assert served.version == entry.model_version == trained.export_summary["model_version"]
    torch_scorer = TorchClassifierScorer(checkpoint=trained.model_pt, threads=1)
    a = np.array([[r.scores[c] for c in CATEGORIES] for r in served.score(test_images)])
    b = np.array([[r.scores[c] for c in CATEGORIES] for r in torch_scorer.score(test_images)])
    assert np.max(np.abs(a - b)) < 1e-4
    policy = synthetic_policy()
    from pipeline.policy_tools import policy_outcome

    outcome = policy_outcome(policy)
    for ra, rb in zip(a, b, strict=True):
        assert outcome(dict(zip(CATEGORIES, ra, strict=True))) == outcome(
            dict(zip(CATEGORIES, rb, strict=True)))
    # Batches of any size (the batch dimension is dynamic), and encoded input on CPU.
    one = served.score(test_images[:1])[0].scores
    assert one == pytest.approx(dict(zip(CATEGORIES, a[0], strict=True)), abs=1e-5)
    import io

    from PIL import Image

    blobs = []
    for img in test_images[:4]:
        buf = io.BytesIO()
        Image.fromarray(img).save(buf, format="PNG")
        blobs.append(buf.getvalue())
    enc = torch_scorer.score_encoded(blobs)
    assert [r.scores for r in enc] == [r.scores for r in torch_scorer.score(test_images[:4])]


def test_the_registry_refuses_a_duplicate(trained: Trained) -> None:
    reg = ModelRegistry(trained.registry)
    with pytest.raises(DuplicateModel, match="already registered"):
        reg.register(trained.export, version="1.0")
    with pytest.raises(DuplicateModel, match="already registered as"):
        reg.register(trained.export, version="1.1")
    res = invoke(trained.app, "models", "register", trained.export, "--version", "1.0",
                 "--registry", trained.registry, "--json")
    assert res.exit_code == 2
    assert json.loads(res.stdout)["error"]["code"] == "model.duplicate"


def test_a_corrupted_onnx_file_is_refused_with_a_clear_error(trained: Trained,
                                                             tmp_path: Path) -> None:
    bad = tmp_path / "bad"
    shutil.copytree(trained.export, bad)
    data = bytearray((bad / "model.onnx").read_bytes())
    data[len(data) // 2] ^= 0xFF
    (bad / "model.onnx").write_bytes(bytes(data))
    with pytest.raises(ModelDigestMismatch, match="corrupt or was replaced; refusing"):
        OnnxClassifierScorer(model=bad)
    reg = ModelRegistry(tmp_path / "reg")
    with pytest.raises(ModelDigestMismatch):
        reg.register(bad, version="1")
    assert reg.entries() == []
    # Tampering after registration is caught when the model is loaded or activated.
    good = reg.register(trained.export, version="1")
    target = reg.directory(good) / "model.onnx"
    target.write_bytes(bytes(data))
    with pytest.raises(ModelDigestMismatch):
        reg.activate(good.ref)
    with pytest.raises(ModelDigestMismatch):
        reg.load(good.ref)
    res = invoke(trained.app, "evaluate", "--model", bad, "--data", trained.manifest,
                 "--policy", trained.policy, "--json")
    assert res.exit_code == 3
    assert json.loads(res.stdout)["error"]["code"] == "model.digest_mismatch"


def test_evaluation_writes_the_report_with_the_segment_table(trained: Trained) -> None:
    out = trained.root / "evaluation"
    res = invoke(trained.app, "evaluate", "--model", "synthetic-resnet18@1.0", "--data",
                 trained.manifest, "--registry", trained.registry, "--policy", trained.policy,
                 "--out", out, "--json")
    assert res.exit_code == 0, res.output
    summary = json.loads(res.stdout)
    print("evaluation headline:", summary["headline"], "macro AUC", summary["macro_roc_auc"])
    for name in ("report.md", "evaluation.json", "roc.png", "pr.png", "reliability.png",
                 "fpr_by_segment.png"):
        assert (out / name).stat().st_size > 0, name
    report = (out / "report.md").read_text()
    assert "## Per segment" in report
    for c in CATEGORIES:
        assert f"| medical_sharing=true | {c} | 0.65 |" in report
        assert f"| medical_sharing=false | {c} | 0.5 |" in report
    data = json.loads((out / "evaluation.json").read_text())
    segments = {s["segment"] for s in data["segments"]}
    assert segments == {"all", "medical_sharing=false", "medical_sharing=true"}
    assert {h["segment"] for h in data["headline"]} == segments
    assert data["per_category"][CATEGORIES[0]]["roc_auc"] > 0.9
    assert (out / "roc.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    html = trained.root / "evaluation-html"
    res = invoke(trained.app, "evaluate", "--model", trained.export, "--data", trained.manifest,
                 "--policy", trained.policy, "--out", html, "--format", "html")
    assert res.exit_code == 0, res.output
    assert "<td>medical_sharing=true</td>" in (html / "report.html").read_text()


def test_int8_copy_is_measured_and_shadows_without_changing_outcomes(
    trained: Trained, test_images
) -> None:
    int8_dir = trained.root / "int8"
    res = invoke(trained.app, "quantize", "--model", trained.export, "--data", trained.manifest,
                 "--out", int8_dir, "--calibration-images", "64", "--policy", trained.policy,
                 "--json")
    assert res.exit_code == 0, res.output
    agreement = json.loads(res.stdout)["agreement_vs_fp32"]
    print("int8 agreement vs fp32:", agreement)
    assert agreement["n"] == 200 and agreement["outcome_agreement"] >= 0.9
    card = json.loads((int8_dir / "card.json").read_text())
    assert card["onnx"]["precision"] == "int8"
    assert card["extra"]["quantization"]["agreement_vs_fp32"] == agreement

    reg = ModelRegistry(trained.root / "serving-registry")
    fp32 = reg.register(trained.export, version="1.0")
    int8 = reg.register(int8_dir, version="1.0")
    for args in (("activate", fp32.ref), ("shadow", int8.ref)):
        res = invoke(trained.app, "models", *args, "--registry", reg.root)
        assert res.exit_code == 0, res.output
    serving = reg.serving_scorer(threads=1)
    assert isinstance(serving, ShadowScorer) and serving.version == fp32.model_version
    alone = reg.load(fp32.ref, threads=1).score(test_images[:16])
    shadowed = serving.score(test_images[:16])
    assert [r.scores for r in shadowed] == [r.scores for r in alone]
    assert all(isinstance(r, ShadowedScoreResult) for r in shadowed)
    assert {s.model_version for r in shadowed for s in r.shadow} == {int8.model_version}
    # Activating the candidate makes the old active model its shadow.
    reg.activate(int8.ref)
    statuses = {e.ref: e.status for e in reg.entries()}
    assert statuses[int8.ref] == "active" and statuses[fp32.ref] == "shadow"
    res = invoke(trained.app, "models", "list", "--registry", reg.root, "--json")
    assert {e["status"] for e in json.loads(res.stdout)} == {"active", "shadow"}


def test_doctor_reports_devices_and_providers(trained: Trained) -> None:
    res = invoke(trained.app, "doctor", "--json")
    assert res.exit_code == 0, res.output
    report = json.loads(res.stdout)
    assert "CPUExecutionProvider" in report["onnxruntime"]["providers_available"]
    assert report["torch"]["installed"] and report["selected"]["serving"].startswith(
        "onnxruntime")


def test_device_decode_path_stays_close_to_the_exact_path(trained: Trained, test_images) -> None:
    """The batch-job path (torchvision decode_jpeg + area resize as matrix products, as on a
    GPU) runs here on the CPU; its scores match the serving path's closely."""
    import io

    from PIL import Image

    scorer = TorchClassifierScorer(checkpoint=trained.model_pt, threads=1)
    assert scorer.precision == "fp32" and scorer.device.type == "cpu"
    blobs, decoded = [], []
    for img in test_images[:32]:
        buf = io.BytesIO()
        Image.fromarray(img).save(buf, format="JPEG", quality=95)
        blobs.append(buf.getvalue())
        decoded.append(np.asarray(Image.open(io.BytesIO(blobs[-1])).convert("RGB")))
    exact = scorer.score(decoded)
    device_style = scorer.score_encoded(blobs, on_device=True)
    diff = max(abs(a.scores[c] - b.scores[c])
               for a, b in zip(exact, device_style, strict=True) for c in CATEGORIES)
    print(f"device-decode path vs exact path: max score difference {diff:.4f}")
    assert diff < 0.01
    # Non-JPEG input falls back to Pillow inside the same batch.
    png = io.BytesIO()
    Image.fromarray(test_images[0]).save(png, format="PNG")
    mixed = scorer.score_encoded([blobs[0], png.getvalue()], on_device=True)
    assert len(mixed) == 2
