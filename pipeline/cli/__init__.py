"""The `lookfirst` command line: scoring, the review queue, actions, appeals, audit, policy, db.

This module only assembles the app from one module per command group (each adds its commands
to its own Typer; `_common` holds what they share) and holds `main()`, the console script.
Exit codes and the error contract are in `_common`.
"""

from __future__ import annotations

import os

os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")  # before anything imports onnxruntime

import logging  # noqa: E402

import typer  # noqa: E402
from pydantic import ValidationError  # noqa: E402

from pipeline.cli import (  # noqa: E402
    actions,
    audit,
    banks,
    classifier,
    db,
    decisions,
    labelstudio,
    learning,
    policy,
    registry,
    review,
    reviewers,
    scoring,
    serve,
    worker,
)
from pipeline.settings import Settings  # noqa: E402

__all__ = ["app", "main"]

app = typer.Typer(no_args_is_help=True, add_completion=False, help=__doc__.split("\n")[0])
# Commands without a name are merged in, groups added under their own name; the order is the
# order `lookfirst --help` lists them in: top-level commands first, then the groups.
for part in (
    scoring.app, worker.app, serve.app, classifier.app, learning.app,
    review.app, actions.app, audit.app, policy.app, db.app, reviewers.app, decisions.app,
    worker.outbox_app, banks.app, serve.keys_app, labelstudio.app, registry.models_app,
    learning.dataset_app,
):
    app.add_typer(part)


def main() -> None:
    try:
        level = Settings().log_level
    except ValidationError:
        level = "WARNING"  # the command itself reports the bad setting
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    app()
