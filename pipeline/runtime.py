"""Wiring: one Runtime holds the settings, database, policy, blob store, review service and the
(lazily loaded) scorer.  The CLI, the API and batch jobs all build one of these."""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import threading
from collections.abc import Callable, Hashable, Mapping
from pathlib import Path
from typing import Any

from models.base import Scorer
from pipeline.banks import BankMatcher
from pipeline.blobs import LocalBlobStore
from pipeline.policy import Context, Policy, load_policy
from pipeline.settings import Settings
from review import ClaimDesk, Database, QueueRules, ReviewConfig, ReviewService, utcnow

log = logging.getLogger(__name__)


def review_config(policy: Policy, settings: Settings) -> ReviewConfig:
    """Hand the review store what it needs from the policy, as plain data."""
    queues = {
        name: QueueRules(
            name=name,
            sla=q.sla,
            role=q.role,
            reviewers_required=q.reviewers_required,
            exposure_cap=q.exposure_cap,
            exposure_window=q.exposure_window,
            escalate_to=q.escalate_to,
        )
        for name, q in policy.queues.items()
    }
    return ReviewConfig(
        queues=queues,
        actions_for_verdict=policy.actions_for_verdict,
        appeals_queue=policy.appeals_queue,
        escalation_queue=policy.escalation_queue,
        urgent_actions=frozenset(policy.urgent_actions),
        lease=dt.timedelta(seconds=settings.lease_seconds),
        appeal_window=dt.timedelta(days=settings.appeal_window_days),
        notice_period=dt.timedelta(hours=settings.notice_period_hours),
        bank_flood_limit=settings.bank_flood_limit,
        bank_flood_window=dt.timedelta(seconds=settings.bank_flood_window_s),
        pdq_threshold=settings.bank_pdq_threshold,
        pdq_quality_floor=settings.bank_pdq_quality_floor,
    )


#: the bundled sample photos: where a faster variant's calibration and held-out sets come from
SAMPLES = Path(__file__).resolve().parents[1] / "samples"
NUDENET = "nudenet-320n"


def default_scorer(settings: Settings, *, variant: str = "fp32") -> Scorer:
    """The scorer the settings name; for NudeNet, `variant` (one whose card passed: see
    `Runtime.model_variant`)."""
    from models.registry import load_scorer

    if settings.scorer == "classifier":
        return load_scorer("classifier", root=settings.data_dir / "models",
                           threads=settings.model_threads)
    if settings.scorer == NUDENET and variant != "fp32":
        from models import nudenet_fast

        return nudenet_fast.load_variant(variant, root=settings.data_dir / "models",
                                         threads=settings.model_threads)
    return load_scorer(settings.scorer, threads=settings.model_threads)


def policy_id(policy: Policy) -> str:
    """What a variant's agreement is judged under: outcomes depend on the policy's rules."""
    return f"{policy.name} {policy.version} sha256:{policy.digest[:12]}"


def _policy_outcome(policy: Policy) -> Callable[[Mapping[str, float]], Hashable]:
    context = Context()

    def outcome(scores: Mapping[str, float]) -> str:
        return policy.evaluate(scores, context, content_sha256="0" * 64).outcome

    return outcome


def _policy_thresholds(policy: Policy) -> dict[str, list[float]]:
    return {
        name: [t for t in (c.thresholds.review, c.thresholds.hold) if t is not None and t < 1.0]
        for name, c in policy.categories.items()
    }


def choose_variant(settings: Settings, policy: Policy, requested: str | None = None, *,
                   measure: bool = False) -> str:
    """The NudeNet variant to run (`requested`, default the settings' `model_variant`): the
    first candidate whose agreement with fp32, measured on this machine under this policy,
    meets the bar; fp32 otherwise.  `measure`: build and measure a never-measured candidate
    first (a batch job does; a server never spends its start on it).  Another scorer than
    NudeNet is returned by name."""
    if settings.scorer != NUDENET:
        return settings.scorer
    from models import nudenet_fast

    return nudenet_fast.select_variant(
        requested or settings.model_variant,
        root=settings.data_dir / "models",
        outcome=_policy_outcome(policy),
        thresholds=_policy_thresholds(policy),
        sample_folders=[SAMPLES] if SAMPLES.is_dir() else [],
        measure_missing=measure,
        threads=max(1, os.cpu_count() or 1),
        judged_by=policy_id(policy),
    )


def variant_cards(settings: Settings) -> dict[str, Any]:
    """What `lookfirst doctor` shows of the faster NudeNet variants: each card's measured
    agreement with fp32, and whether it is used here under the policy in force."""
    from models.nudenet_fast import describe

    return describe(settings.data_dir / "models", policy_id(load_policy(settings.policy_path)))


def variant_card_lines(cards: dict[str, Any]) -> list[str]:
    lines = []
    for name, card in cards.items():
        if not isinstance(card, dict):
            continue
        if not card.get("measured"):
            state = "not measured here (the first `lookfirst batch` measures it)"
        else:
            figures = json.dumps(card.get("agreement_vs_fp32") or {}, sort_keys=True)
            used = "used here" if card.get("usable_here") else "not used"
            state = f"{used}; agreement with fp32: {figures}"
        lines.append(f"NudeNet {name}: {state}")
    return lines


class Runtime:
    def __init__(
        self,
        settings: Settings,
        *,
        scorer: Scorer | None = None,
        scorer_factory: Callable[[Settings], Scorer] | None = None,
        policy: Policy | None = None,
        clock: Callable[[], dt.datetime] = utcnow,
    ) -> None:
        self.settings = settings
        self.policy = policy or load_policy(settings.policy_path)
        self.db = Database(settings.db_url)
        self.blobs = LocalBlobStore(settings.blob_dir)
        self.review = ReviewService(review_config(self.policy, settings), clock=clock)
        #: claims as their own transactions (one statement on PostgreSQL)
        self.desk = ClaimDesk(self.db, self.review)
        self._scorer = scorer
        # by default the NudeNet variant whose measured agreement passes (the API rides the
        # same faster model as batch jobs), fp32 when none has been measured here
        self._scorer_factory = scorer_factory or (
            lambda s: default_scorer(s, variant=choose_variant(s, self.policy)))
        self._lock = threading.Lock()
        self._banks: BankMatcher | None = None

    @property
    def banks(self) -> BankMatcher:
        """The one bank matcher of this process (its PDQ index is built on first use)."""
        if self._banks is None:
            with self._lock:
                if self._banks is None:
                    self._banks = BankMatcher.from_settings(self.settings, self.policy)
        return self._banks

    @property
    def scorer(self) -> Scorer:
        if self._scorer is None:
            with self._lock:
                if self._scorer is None:
                    self._scorer = self._scorer_factory(self.settings)
                    log.info("model loaded", extra={"model_version": self._scorer.version})
        return self._scorer

    @property
    def scorer_loaded(self) -> bool:
        return self._scorer is not None

    def describe(self) -> dict[str, Any]:
        return {
            "database": self.db.engine.url.render_as_string(hide_password=True),
            "data_dir": str(self.settings.data_dir),
            "policy": {"name": self.policy.name, "version": self.policy.version},
        }

    def close(self) -> None:
        self.db.dispose()
