"""Alembic environment: runs against the engine lookfirst passes in (no alembic.ini URL)."""

from __future__ import annotations

from alembic import context
from sqlalchemy import Engine

from review.schema import Base

config = context.config
engine = config.attributes.get("engine")
if not isinstance(engine, Engine):  # pragma: no cover - only via review.db.upgrade
    raise RuntimeError("run migrations through `lookfirst db upgrade`")

with engine.connect() as connection:
    context.configure(
        connection=connection,
        target_metadata=Base.metadata,
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()
    connection.commit()
