"""Fixtures for the review store tests: a service on the fake clock, reviewers seeded."""

from __future__ import annotations

import pytest

from review.db import Database
from review.service import ReviewService
from tests.conftest import FakeClock
from tests.review_support import make_config, seed_reviewers


@pytest.fixture
def svc(clock: FakeClock) -> ReviewService:
    return ReviewService(make_config(), clock=clock)


@pytest.fixture
def seeded(db: Database, svc: ReviewService) -> Database:
    """The `db` fixture (SQLite and PostgreSQL) with the six reviewers of review_support."""
    with db.transaction() as s:
        seed_reviewers(svc, s)
    return db
