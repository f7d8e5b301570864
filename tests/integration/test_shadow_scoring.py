"""Shadow models score the same traffic as the active one; their scores are stored beside the
decision for comparison and never change the outcome."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import select

from models.classifier.shadow import ShadowScorer
from models.nudenet import NudeNetScorer
from pipeline.policy import Context
from pipeline.runtime import Runtime
from pipeline.scoring import Orchestrator, UploadRequest
from pipeline.settings import DEMO_POLICY, Settings
from review.schema import Decision
from tests.integration.api_conftest_helpers import PixelStatsScorer

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.model
def test_shadow_scores_are_stored_and_never_consulted(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path, policy_path=DEMO_POLICY, model_threads=1)
    active = NudeNetScorer(threads=1)
    shadow = PixelStatsScorer()
    plain = Runtime(settings.model_copy(update={"data_dir": tmp_path / "plain"}), scorer=active)
    shadowed = Runtime(settings, scorer=ShadowScorer(active, [shadow]))
    req = UploadRequest(account_id="a1", external_id="u1", context=Context(audience="public"),
                        path=ROOT / "samples/astronaut.jpg")
    for rt in (plain, shadowed):
        rt.db.upgrade()
    with Orchestrator(plain) as o:
        (alone,) = o.score([req])
    with Orchestrator(shadowed) as o:
        (with_shadow,) = o.score([req])
    # the outcome and scores are the active model's, shadow or not
    assert with_shadow.as_dict()["outcome"] == alone.as_dict()["outcome"] == "review"
    assert with_shadow.scores == alone.scores
    assert with_shadow.model_version == active.version
    with shadowed.db.transaction() as s:
        d = s.execute(select(Decision)).scalar_one()
        assert d.shadow_scores == [{"model_version": shadow.version,
                                    "scores": {"nudity.explicit": 0.0, "nudity.partial": 0.0,
                                               "skin.exposed": 0.0, "person.face": 0.0},
                                    "error": None}]
        assert "shadow" not in str(d.reasons)  # not part of what a user is shown
    with plain.db.transaction() as s:
        assert s.execute(select(Decision)).scalar_one().shadow_scores is None
    plain.close()
    shadowed.close()
