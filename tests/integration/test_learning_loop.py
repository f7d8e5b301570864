"""The learning loop end to end, through the CLI, on synthetic traffic that the test draws:
uploads scored by the active model, a simulated reviewer who decides from the generator's
labels, `dataset export`, `retrain`, `models compare`, `models promote`.

The story: the platform's first model (A) was trained on a batch labelled by someone who took
the small round *spots* (drawn mostly on medically shared images) for *blobs*, so it flags
medically shared benign images.  Reviewers now decide correctly; one `retrain` on their
verdicts gives B, which shadows A on new traffic, is better there and on the evaluation set,
and is promoted.  Rolling back to A is refused, because A flags more medically shared benign
uploads (the protected segment), until forced with a reason, which the audit log keeps.
Verdicts given at random lead to a run that is refused and registers nothing.

One world for the module (about three trainings at 96 px on a few hundred images).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import stat
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import typer
import yaml
from PIL import Image

from tests.synthetic import CATEGORIES, Drawn, draw, invoke, make_app, need_torch, policy_text

need_torch()

from sqlalchemy import select  # noqa: E402

from models.classifier.registry import ModelRegistry  # noqa: E402
from pipeline.policy import Context  # noqa: E402
from pipeline.runtime import Runtime  # noqa: E402
from pipeline.scoring import Orchestrator, UploadRequest  # noqa: E402
from pipeline.settings import Settings  # noqa: E402
from review import NothingToClaim  # noqa: E402
from review.schema import AuditEvent, ReviewItem, VerdictRow  # noqa: E402

pytestmark = pytest.mark.slow

REVIEWER = "rita"
SIZE = "96"
#: few epochs: these runs reach their best within four or five (the default is 30, patience 5)
TRAIN_FLAGS = ("--size", SIZE, "--epochs", "6", "--patience", "2", "--threads", "2",
               "--batch-size", "32")


def png(pixels: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG")
    return buf.getvalue()


def near_copy(pixels: np.ndarray) -> bytes:
    """The same picture re-saved by another app: a little brighter, JPEG at quality 95.  (PDQ
    does not survive resizing these small, noisy drawings: their noise is most of their
    detail; docs/pdq.md has what it survives on photos.)"""
    brighter = np.clip(pixels.astype(np.int16) + 8, 0, 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(brighter).save(buf, format="JPEG", quality=95)
    return buf.getvalue()


def careless(d: Drawn) -> tuple[str, ...]:
    """The first batch's labeller: spots are blobs."""
    labels = set(d.labels) | ({"synthetic.blobs"} if d.spots else set())
    return tuple(c for c in CATEGORIES if c in labels)


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@dataclass
class World:
    root: Path
    data_dir: Path
    policy: Path
    app: typer.Typer
    #: content sha256 -> what the generator drew
    truth: dict[str, Drawn] = field(default_factory=dict)
    #: (original, near copy) sha256 pairs
    near: list[tuple[str, str]] = field(default_factory=list)
    #: contents uploaded twice, byte for byte
    twice: list[str] = field(default_factory=list)
    waves: dict[str, list[str]] = field(default_factory=dict)
    results: dict[str, Any] = field(default_factory=dict)

    def settings(self) -> Settings:
        return Settings(data_dir=self.data_dir, policy_path=self.policy, scorer="classifier",
                        model_threads=1, batch_size=32)

    def runtime(self) -> Runtime:
        rt = Runtime(self.settings())
        rt.db.upgrade()
        return rt

    def cli(self, *args: str | Path, code: int = 0) -> Any:
        res = invoke(self.app, *args)
        assert res.exit_code == code, res.output
        return json.loads(res.stdout) if "--json" in args else res

    @property
    def registry(self) -> ModelRegistry:
        return ModelRegistry(self.data_dir / "models")

    # ---- traffic and review ---------------------------------------------------------------
    def upload_wave(self, name: str, n: int, *, seed: int, near: int = 0, twice: int = 0) -> None:
        """n new images (plus `near` near copies and `twice` second uploads of the same bytes,
        from other accounts), scored by what the registry serves now."""
        rng = np.random.default_rng(seed)
        requests, shas = [], []
        for i in range(n):
            d = draw(rng, height=int(rng.integers(72, 97)), width=int(rng.integers(80, 113)))
            data = png(d.image)
            self.truth[sha(data)] = d
            shas.append(sha(data))
            ctx = Context(medical_sharing=d.medical_sharing)
            requests.append(UploadRequest(account_id=f"acct-{i % 17}", external_id=f"{name}-{i}",
                                          context=ctx, data=data, source="test"))
            if i < near:
                copy = near_copy(d.image)
                self.truth[sha(copy)] = d
                self.near.append((sha(data), sha(copy)))
                requests.append(UploadRequest(account_id="acct-near", external_id=f"{name}-n{i}",
                                              context=ctx, data=copy, source="test"))
            elif i < near + twice:
                self.twice.append(sha(data))
                requests.append(UploadRequest(account_id="acct-again",
                                              external_id=f"{name}-t{i}", context=ctx,
                                              data=data, source="test"))
        rt = self.runtime()
        try:
            with Orchestrator(rt) as orch:
                scored = orch.score(requests)
        finally:
            rt.close()
        assert all(s.ok for s in scored), [s.as_dict() for s in scored if not s.ok][:3]
        self.waves[name] = shas

    def review_everything(self, labels: Callable[[Drawn], tuple[str, ...]]) -> int:
        """The simulated reviewer decides every open item with `labels` of what was drawn."""
        rt = self.runtime()
        decided = 0
        try:
            while True:
                try:
                    views = rt.desk.claim_many(reviewer_id=REVIEWER, limit=50)
                except NothingToClaim:
                    return decided
                with rt.db.transaction() as s:
                    for v in views:
                        d = self.truth[v.content_sha256]
                        cats = labels(d)
                        verdict = ("violating" if cats else
                                   "benign_medical" if d.medical_sharing else "benign")
                        rt.review.decide(s, item_id=v.id, reviewer_id=REVIEWER,
                                         verdict=verdict, categories=cats)
                        decided += 1
        finally:
            rt.close()


def loop_policy(path: Path) -> Path:
    """The synthetic policy, with every allowed upload sampled for review (a platform's first
    weeks: people see everything) and the promotion rule spelled out."""
    raw = yaml.safe_load(policy_text())
    for spec in raw["categories"].values():
        spec["qa_sample_rate"] = 1.0
    raw["promotion"] = {"protected_segments": [{"medical_sharing": True}],
                        "fpr_tolerance": 0.05}
    path.write_text(yaml.safe_dump(raw, sort_keys=False), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    root = tmp_path_factory.mktemp("loop")
    w = World(root=root, data_dir=root / "var", policy=loop_policy(root / "policy.yaml"),
              app=make_app())
    with pytest.MonkeyPatch.context() as mp:
        for k in [k for k in os.environ if k.startswith("LOOKFIRST_")]:
            mp.delenv(k)
        mp.setenv("LOOKFIRST_DATA_DIR", str(w.data_dir))
        mp.setenv("LOOKFIRST_POLICY_PATH", str(w.policy))
        mp.setenv("LOOKFIRST_SCORER", "classifier")
        mp.setenv("LOOKFIRST_MODEL_THREADS", "1")
        rt = w.runtime()
        with rt.db.transaction() as s:
            rt.review.add_reviewer(s, reviewer_id=REVIEWER, roles=["medical", "senior"],
                                   queues=["adult", "medical", "qa", "senior", "appeals"])
        rt.close()
        yield w


# ---- the cycle, step by step (each test builds on the ones before) ------------------------------
def test_first_model_from_a_carelessly_labelled_batch(world: World) -> None:
    """A: the README's `lookfirst train` on a first batch where spots were labelled blobs."""
    rng = np.random.default_rng(100)
    batch = world.root / "first-batch"
    (batch / "images").mkdir(parents=True)
    rows = []
    for split, n in (("train", 120), ("val", 50), ("calib", 50)):
        for i in range(n):
            d = draw(rng, height=int(rng.integers(72, 97)), width=int(rng.integers(80, 113)))
            Image.fromarray(d.image).save(batch / "images" / f"{split}-{i}.png")
            rows.append({"path": f"images/{split}-{i}.png", "labels": list(careless(d)),
                         "split": split, "context": {"medical_sharing": d.medical_sharing}})
    manifest = batch / "manifest.jsonl"
    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows))
    trained = world.cli("train", "--data", manifest, "--out", world.root / "run-a", "--name",
                        "synthetic", *TRAIN_FLAGS, "--json")
    world.results["train_a"] = trained
    assert trained["registrable"], trained["quality"]
    world.cli("export", "--model", world.root / "run-a" / "model.pt", "--out",
              world.root / "model-a", "--data", manifest, "--register", "1", "--json")
    activated = world.cli("models", "activate", "synthetic@1", "--json")
    assert activated["status"] == "active"


def test_traffic_is_scored_and_every_upload_reviewed(world: World) -> None:
    world.upload_wave("w1", 300, seed=1, near=16, twice=8)
    decided = world.review_everything(lambda d: d.labels)
    # every upload reached a person: flagged ones in their queue, the rest through QA
    assert decided == 300 + 16 + 8


def test_dataset_export_traces_every_row_and_keeps_near_duplicates_together(
    world: World,
) -> None:
    out = world.root / "export-w1"
    res = world.cli("dataset", "export", "--out", out, "--json")
    rows = [json.loads(x) for x in (out / "manifest.jsonl").read_text().splitlines()]
    print("dataset export:", {k: res[k] for k in ("rows", "splits", "labels", "clusters",
                                                   "near_duplicate_clusters")})
    # one row per content: the 8 contents uploaded twice are one row each, with two decisions
    assert res["rows"] == len(rows) == 300 + 16
    by_sha = {r["sha256"]: r for r in rows}
    for s in world.twice:
        assert len(by_sha[s]["provenance"]["decision_ids"]) == 2
    # near-duplicates are found and never on both sides of the split
    for a, b in world.near:
        assert by_sha[a]["cluster"] == by_sha[b]["cluster"], (a, b)
        assert by_sha[a]["split"] == by_sha[b]["split"]
    assert res["near_duplicate_clusters"] >= len(world.near)
    clusters: dict[str, set[str]] = {}
    for r in rows:
        clusters.setdefault(r["cluster"], set()).add(r["split"])
    assert all(len(splits) == 1 for splits in clusters.values())
    assert set(res["splits"]) == {"train", "val", "calib", "test"} and all(
        res["splits"].values())
    # labels are the reviewer's (here: what was drawn), benign and benign_medical negatives
    for r in rows:
        d = world.truth[r["sha256"]]
        assert r["labels"] == sorted(d.labels)
        assert r["context"]["medical_sharing"] == d.medical_sharing
        assert r["provenance"]["agreement"] == 1.0
        # the image is the original, readable by its owner only
        image = out / r["path"]
        assert sha(image.read_bytes()) == r["sha256"]
        assert stat.S_IMODE(image.stat().st_mode) == 0o600
    # every row traces back to its verdicts
    rt = world.runtime()
    try:
        with rt.db.transaction() as s:
            for r in rows:
                p = r["provenance"]
                verdicts = s.execute(
                    select(VerdictRow, ReviewItem).join(ReviewItem,
                                                        ReviewItem.id == VerdictRow.item_id)
                    .where(VerdictRow.id.in_(p["verdict_ids"]))).all()
                assert len(verdicts) == len(p["verdict_ids"]) >= 1
                assert {it.decision_id for _, it in verdicts} == set(p["decision_ids"])
                assert {it.content_sha256 for _, it in verdicts} == {r["sha256"]}
                deciding = [v for v, _ in verdicts if v.id in p["decided_by"]["verdict_ids"]]
                assert deciding and all(v.verdict == p["resolution"] for v in deciding)
                assert sorted({c for v in deciding for c in v.categories}) == r["labels"]
            event = s.execute(select(AuditEvent).where(
                AuditEvent.event == "dataset.exported")).scalar_one()
            assert event.subject_id == res["manifest_sha256"]
            assert event.data["rows"] == res["rows"] and event.actor.startswith("os:")
    finally:
        rt.close()
    assert sha((out / "manifest.jsonl").read_bytes()) == res["manifest_sha256"]
    assert json.loads((out / "dataset.json").read_text())["manifest_sha256"] == \
        res["manifest_sha256"]
    # a second export never writes into a dataset that exists
    err = world.cli("dataset", "export", "--out", out, "--json", code=2)
    assert err["error"]["code"] == "dataset.target_exists"


def test_one_retrain_registers_a_shadow(world: World) -> None:
    res = world.cli("retrain", "--dataset", world.root / "export-w1", "--out",
                    world.root / "r1", "--version", "2", "--name", "synthetic", *TRAIN_FLAGS,
                    "--json")
    world.results["retrain"] = res
    print("retrain:", json.dumps({k: res[k] for k in ("seconds", "evaluation")}),
          "val AUC", res["train"]["val_auc"], f"{res['train']['seconds_per_epoch']} s/epoch")
    assert res["registered"]["status"] == "shadow" and res["registered"]["ref"] == "synthetic@2"
    assert res["train"]["registrable"]
    assert all(a >= 0.95 for a in res["train"]["val_auc"].values()), res["train"]["val_auc"]
    card = json.loads((world.root / "r1" / "model" / "card.json").read_text())
    assert card["metrics"]["evaluation"]["split"] == "test"
    statuses = {e.ref: e.status for e in world.registry.entries()}
    assert statuses == {"synthetic@1": "active", "synthetic@2": "shadow"}


def test_compare_shows_the_retrained_model_is_better(world: World) -> None:
    # new traffic: A decides, B shadows (its scores are stored with each decision)
    world.upload_wave("w2", 200, seed=2)
    world.review_everything(lambda d: d.labels)
    out = world.root / "compare"
    res = world.cli("models", "compare", "--data", world.root / "export-w1" /
                    "manifest.jsonl", "--out", out, "--json")
    h = res["headline"]
    world.results["compare"] = h
    print("compare headline:", h["text"])
    assert h["active"] == "synthetic@1" and h["candidate"] == "synthetic@2"
    assert h["decisions"] == 200  # the window: since B became a shadow
    data = json.loads((out / "compare.json").read_text())
    assert data["traffic"]["sources"]["candidate"] == {"shadow": 200}
    assert data["traffic"]["sources"]["active"] == {"stored": 200}
    # where people decided, the retrained model makes fewer wrong calls, and on the
    # evaluation set it ranks better
    assert h["people_decided"] == 200
    assert h["wrong"]["candidate"] < h["wrong"]["active"]
    assert h["benign_flagged"]["candidate"] < h["benign_flagged"]["active"]
    auc = h["evaluation_macro_roc_auc"]
    assert auc["candidate"] >= auc["active"] and auc["candidate"] > 0.95
    ev = data["evaluation"]["segments"]["all"]
    assert ev["benign_flagged"]["candidate"] <= ev["benign_flagged"]["active"]
    # A flags the medically shared benign uploads with spots; B does not
    fpr = h["protected"]["medical_sharing=true"]["fpr"]
    assert fpr["candidate"] + 0.05 < fpr["active"]
    assert h["promotable"]
    for name in ("report.md", "roc_overlay.png", "transitions.png", "fpr_by_segment.png"):
        assert (out / name).stat().st_size > 0, name
    report = (out / "report.md").read_text()
    assert "## Per context segment (recent traffic)" in report
    assert "| medical_sharing=true |" in report and "## Review volume per queue" in report


def test_promotion_of_the_better_model(world: World) -> None:
    res = world.cli("models", "promote", "--data", world.root / "export-w1" /
                    "manifest.jsonl", "--json")
    assert res["promoted"] == "synthetic@2" and res["previous"] == "synthetic@1"
    assert res["forced"] is False and res["check"]["passed"]
    statuses = {e.ref: e.status for e in world.registry.entries()}
    assert statuses == {"synthetic@2": "active", "synthetic@1": "shadow"}


def test_rolling_back_to_the_worse_model_is_refused_then_forced_and_audited(
    world: World,
) -> None:
    # traffic with B deciding and A shadowing it
    world.upload_wave("w3", 120, seed=3)
    world.review_everything(lambda d: d.labels)
    manifest = world.root / "export-w1" / "manifest.jsonl"
    res = world.cli("models", "promote", "synthetic@1", "--data", manifest, "--json", code=1)
    print("rollback refused:", res["error"]["detail"])
    assert res["error"]["code"] == "model.promotion_refused"
    assert "medical_sharing=true" in res["error"]["detail"]
    assert world.registry.active().ref == "synthetic@2"  # type: ignore[union-attr]
    res = world.cli("models", "promote", "synthetic@1", "--force", "--json", code=2)
    assert res["error"]["code"] == "model.reason_required"
    reason = "rollback drill: the previous model, knowingly"
    res = world.cli("models", "promote", "synthetic@1", "--data", manifest, "--force",
                    "--reason", reason, "--json")
    assert res["forced"] is True and res["reason"] == reason
    assert res["check"]["passed"] is False
    assert world.registry.active().ref == "synthetic@1"  # type: ignore[union-attr]
    last = world.registry.history()[-2:]  # B demoted, then A active
    promoted = [h for h in last if h["action"] == "active"][0]
    assert promoted["promotion"]["reason"] == reason and promoted["promotion"]["forced"]
    assert promoted["promotion"]["by"].startswith("os:")
    rt = world.runtime()
    try:
        with rt.db.transaction() as s:
            events = s.execute(select(AuditEvent).where(
                AuditEvent.event == "model.promoted").order_by(AuditEvent.at)).scalars().all()
    finally:
        rt.close()
    assert [(e.data["ref"], e.data["forced"]) for e in events] == [
        ("synthetic@2", False), ("synthetic@1", True)]
    assert events[-1].data["reason"] == reason
    assert events[-1].data["protected"]["medical_sharing=true"]["benign"] > 0
    verified = world.cli("audit", "verify", "--json")
    assert verified["ok"] is True


def test_the_false_positive_rate_people_saw_by_segment(world: World) -> None:
    res = world.cli("review", "stats", "--days", "3650", "--json")
    segs = {r["segment"]: r for r in res["false_positives"]["segments"]}
    # recomputed from what was drawn: flagged uploads (not QA samples) found benign
    rt = world.runtime()
    try:
        with rt.db.transaction() as s:
            from review.schema import Decision, Upload

            rows = s.execute(select(Upload.content_sha256, Upload.context)
                             .join(Decision, Decision.upload_id == Upload.id)
                             .where(Decision.outcome != "allow")).all()
    finally:
        rt.close()
    for name, medical in (("medical_sharing=true", True), ("medical_sharing=false", False)):
        flagged = [sh for sh, ctx in rows if ctx["medical_sharing"] is medical]
        benign = [sh for sh in flagged if not world.truth[sh].labels]
        assert segs[name]["decided"] == len(flagged)
        assert segs[name]["benign"] == len(benign)
    assert segs["all"]["decided"] == len(rows)
    print("false-positive rate by segment:", {k: v["rate"] for k, v in segs.items()
                                             if v["decided"]})
    # A, trained on spots-as-blobs, made most of them where spots are common
    assert segs["medical_sharing=true"]["rate"] > segs["medical_sharing=false"]["rate"]


def test_verdicts_at_random_give_a_model_that_is_refused(world: World) -> None:
    rng = np.random.default_rng(7)
    world.upload_wave("w4", 240, seed=4)
    labels_seen = [world.truth[s].labels for s in world.waves["w4"]]

    def at_random(d: Drawn) -> tuple[str, ...]:
        return labels_seen[int(rng.integers(len(labels_seen)))]

    world.review_everything(at_random)
    before = world.registry.entries()
    res = world.cli("retrain", "--out", world.root / "r-random", "--since",
                    _wave_start(world, "w4"), "--version", "3", "--name", "synthetic",
                    *TRAIN_FLAGS, "--json", code=1)
    assert res["error"]["code"] == "model.did_not_learn"
    assert world.registry.entries() == before  # nothing registered
    assert (world.root / "r-random" / "run" / "model.pt").is_file()  # kept for diagnosis


def _wave_start(world: World, name: str) -> str:
    """When the wave's first decision was made (its --since)."""
    from review.schema import Decision, Upload

    rt = world.runtime()
    try:
        with rt.db.transaction() as s:
            first = s.execute(select(Decision.created_at)
                              .join(Upload, Upload.id == Decision.upload_id)
                              .where(Upload.external_id == f"{name}-0")).scalar_one()
    finally:
        rt.close()
    return str(first.isoformat())
