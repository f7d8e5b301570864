"""CLI commands for the REST service (`serve`, `keys`); registered onto the main app."""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    """Add the API's commands to `app`."""
