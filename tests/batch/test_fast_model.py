"""The faster NudeNet variants against fp32 on the held-out calibration set, asserted
against the bar (identical outcomes except within 0.05 of a threshold, >= 97.5 % identical
category sets); a variant that fails the bar, or was measured on another CPU, is not used."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from models import nudenet_fast
from models.nudenet import NudeNetScorer
from models.nudenet_fast import BAR, FP32, INT8_MIXED, OV_BF16
from pipeline.batch import JobOptions, run_job
from pipeline.policy import load_policy
from pipeline.runtime import SAMPLES, Runtime, _policy_outcome, _policy_thresholds, policy_id
from pipeline.settings import BUNDLED_POLICY, DEMO_POLICY
from tests.batch.conftest import ImageSet
from tests.batch.test_engine import read_rows

pytestmark = pytest.mark.model

HERE = [v for v in nudenet_fast.candidates("auto") if v != FP32]


@pytest.fixture(scope="module")
def held_out() -> Any:
    calibration, held = nudenet_fast.calibration_sets([SAMPLES])
    reference = nudenet_fast._score_all(NudeNetScorer(threads=2), held)
    return calibration, held, reference


@pytest.mark.parametrize("variant", HERE)
def test_variant_meets_the_bar(variant: str, held_out: Any, tmp_path: Path) -> None:
    calibration, held, reference = held_out
    if variant == INT8_MIXED:
        nudenet_fast.build_int8(tmp_path, calibration)
    candidate = nudenet_fast._score_all(nudenet_fast.load_variant(variant, root=tmp_path), held)
    for policy_path in (BUNDLED_POLICY, DEMO_POLICY):
        policy = load_policy(policy_path)
        found = nudenet_fast.detector_agreement(
            reference, candidate, outcome=_policy_outcome(policy),
            thresholds=_policy_thresholds(policy))
        print(variant, policy.name, found.as_dict())
        assert found.n_with_detections >= 20, "the held-out set must show the model something"
        assert found.meets(BAR), found
    # the figures go into the variant's card, which is what `auto` trusts
    demo = load_policy(DEMO_POLICY)
    nudenet_fast.measure(variant, root=tmp_path, held_out=held, outcome=_policy_outcome(demo),
                         thresholds=_policy_thresholds(demo), judged_by=policy_id(demo),
                         reference=reference)
    assert nudenet_fast.usable(variant, tmp_path, policy_id(demo))
    card = json.loads((tmp_path / variant / "card.json").read_text())
    assert card["passed"] is True and card["agreement_vs_fp32"]["n"] == len(held)
    # the card speaks for the policy it was judged under, not for another
    assert not nudenet_fast.usable(variant, tmp_path, "another policy")


def test_a_variant_below_the_bar_falls_back_to_fp32(tmp_path: Path) -> None:
    policy = load_policy(DEMO_POLICY)
    for variant in (OV_BF16, INT8_MIXED):
        (tmp_path / variant).mkdir()
        (tmp_path / variant / "card.json").write_text(json.dumps({
            "variant": variant, "passed": False, "machine": nudenet_fast._machine(),
            "judged_by": policy_id(policy)}))
    chosen = nudenet_fast.select_variant("auto", root=tmp_path, outcome=_policy_outcome(policy),
                                         thresholds=_policy_thresholds(policy),
                                         judged_by=policy_id(policy))
    assert chosen == FP32
    # measured on another kind of CPU: not trusted here either, whatever it passed there
    other = {**nudenet_fast._machine(), "avx512_bf16": not nudenet_fast.has_bf16()}
    (tmp_path / INT8_MIXED / "card.json").write_text(json.dumps({
        "variant": INT8_MIXED, "passed": True, "machine": other,
        "judged_by": policy_id(policy)}))
    assert not nudenet_fast.usable(INT8_MIXED, tmp_path, policy_id(policy))


@pytest.mark.skipif(not HERE, reason="no faster variant can run on this machine")
def test_auto_runs_the_measured_variant(small_set: ImageSet, tmp_path: Path,
                                        make_runtime: Any) -> None:
    rt = make_runtime(tmp_path / "d", f"sqlite:///{tmp_path / 'db.sqlite'}")
    result = run_job(rt, str(small_set.manifest), tmp_path / "out",
                     JobOptions(model="auto", workers=2, batch_size=8, progress=False))
    assert result.summary["model"] in HERE
    versions = {r["model_version"] for r in read_rows(tmp_path / "out").values()
                if r["model_version"]}
    assert len(versions) == 1
    marker = {OV_BF16: "+ov-bf16@", INT8_MIXED: "-int8-mixed@"}[result.summary["model"]]
    assert marker in versions.pop()
    card = json.loads((rt.settings.data_dir / "models" / result.summary["model"] /
                       "card.json").read_text())
    assert card["passed"] is True
    # the API (and `lookfirst score`) ride the same measured variant: a fresh runtime's
    # default scorer, which never measures by itself, finds the card and loads it
    api = Runtime(rt.settings)
    try:
        assert marker in api.scorer.version
    finally:
        api.close()
