"""Wiring: one Runtime holds the settings, database, policy, blob store, review service and the
(lazily loaded) scorer.  The CLI, the API and batch jobs all build one of these."""

from __future__ import annotations

import datetime as dt
import logging
import threading
from collections.abc import Callable
from typing import Any

from models.base import Scorer
from pipeline.blobs import LocalBlobStore
from pipeline.policy import Policy, load_policy
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
    )


def default_scorer(settings: Settings) -> Scorer:
    from models.registry import load_scorer

    if settings.scorer == "classifier":
        return load_scorer("classifier", root=settings.data_dir / "models",
                           threads=settings.model_threads)
    return load_scorer(settings.scorer, threads=settings.model_threads)


class Runtime:
    def __init__(
        self,
        settings: Settings,
        *,
        scorer: Scorer | None = None,
        scorer_factory: Callable[[Settings], Scorer] = default_scorer,
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
        self._scorer_factory = scorer_factory
        self._lock = threading.Lock()

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
