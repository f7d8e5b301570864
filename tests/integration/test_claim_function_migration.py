"""Migration 0009 replaces PostgreSQL's claim function (0008's typed-in names and hand-built
audit JSON) with the one rendered from review/states.py and review/audit.py; going down to
0008 restores the old function and going up again the new one, and claims work each time."""

from __future__ import annotations

from alembic import command
from alembic.script import ScriptDirectory
from sqlalchemy import func, select, text

from review import ClaimDesk, ReviewService, audit
from review.claims.function import SIGNATURE
from review.db import Database, alembic_config, current_revision
from review.schema import AuditEvent
from tests.conftest import FakeClock
from tests.review_support import make_config, record_many, seed_reviewers

OLD_ARGS = ("text, text, integer, integer, timestamp without time zone, timestamp without time "
            "zone, integer, text[], text[], integer[], timestamp without time zone[]")
NEW_ARGS = SIGNATURE.removeprefix("lookfirst_claim(").removesuffix(")")


def claim_functions(db: Database) -> list[str]:
    with db.engine.connect() as c:
        return list(c.execute(text(
            "SELECT oidvectortypes(p.proargtypes) FROM pg_proc p "
            "WHERE p.proname = 'lookfirst_claim' ORDER BY 1")).scalars())


def head(db: Database) -> str | None:
    return ScriptDirectory.from_config(alembic_config(db.engine)).get_current_head()


def test_down_to_0008_and_up_again(db: Database) -> None:
    svc = ReviewService(make_config(), clock=FakeClock())
    desk = ClaimDesk(db, svc)
    with db.transaction() as s:
        seed_reviewers(svc, s)
    first, second, third = record_many(svc, db, ["a", "b", "c"], priority=100)
    pg = db.engine.dialect.name == "postgresql"
    assert current_revision(db.engine) == head(db)
    if pg:
        assert claim_functions(db) == [NEW_ARGS]
    assert desk.claim(reviewer_id="alice").id == first

    command.downgrade(alembic_config(db.engine), "0008")
    assert current_revision(db.engine) == "0008"
    if pg:
        assert claim_functions(db) == [OLD_ARGS]
        # 0008's own function is back and claims (its audit JSON built in SQL still verifies)
        with db.engine.begin() as c:
            rows = c.execute(text(
                "SELECT * FROM lookfirst_claim('bob', 'adult', NULL, 1, "
                "CAST(:now AS timestamp), CAST(:until AS timestamp), NULL, "
                "CAST(:q AS text[]), CAST(:r AS text[]), CAST(:c AS integer[]), "
                "CAST(:since AS timestamp[]))"),
                {"now": svc.clock().replace(tzinfo=None),
                 "until": (svc.clock() + svc.config.lease).replace(tzinfo=None),
                 "q": ["adult"], "r": [None], "c": [None], "since": [None]}).all()
        assert [(r.outcome_code, r.item["id"]) for r in rows] == [("ok", second)]

    command.upgrade(alembic_config(db.engine), "head")
    assert current_revision(db.engine) == head(db)
    if pg:
        assert claim_functions(db) == [NEW_ARGS]
    view = desk.claim(reviewer_id="carol")
    assert view.id == (third if pg else second)
    with db.transaction() as s:
        assert audit.verify(s).ok
        claims = s.execute(select(func.count()).select_from(AuditEvent)
                           .where(AuditEvent.event == "item.claim")).scalar_one()
    assert claims == (3 if pg else 2)
