"""How long-running model work reports progress without knowing who draws the bar.

The CLI passes an adapter onto rich progress bars; library callers and tests get `NoProgress`.
"""

from __future__ import annotations

from typing import Protocol


class Progress(Protocol):
    def start(self, key: str, description: str, total: int | None) -> None:
        """A (re)started task: a bar named `key`, `total` steps (None: unknown)."""

    def advance(self, key: str, steps: int = 1) -> None: ...

    def note(self, message: str) -> None:
        """One line of news (an epoch's metrics, a checkpoint written)."""


class NoProgress:
    def start(self, key: str, description: str, total: int | None) -> None:
        return None

    def advance(self, key: str, steps: int = 1) -> None:
        return None

    def note(self, message: str) -> None:
        return None
