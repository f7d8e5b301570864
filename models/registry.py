"""Built-in scorer names and how to load them: one place that turns a name into a Scorer.

Backends are imported lazily, so naming one does not load the others' dependencies.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

from models.base import Scorer
from models.errors import ModelError

ScorerFactory = Callable[..., Scorer]

# name -> "module:attribute"; lazy so that e.g. torch is imported only by its own backend.
_BUILTIN: dict[str, str] = {
    "nudenet-320n": "models.nudenet:NudeNetScorer",
    # the model registry's active classifier, with its shadows (needs `root=`)
    "classifier": "models.classifier.registry:registry_scorer",
}
_registered: dict[str, ScorerFactory] = {}


class UnknownScorer(ModelError):
    """No scorer is registered under that name."""

    code = "model.unknown"


def register(name: str, factory: ScorerFactory) -> None:
    """Add a scorer factory; a name is registered once (a silent override would hide bugs)."""
    if name in _BUILTIN or name in _registered:
        raise ValueError(f"a scorer named {name!r} is already registered")
    _registered[name] = factory


def available() -> tuple[str, ...]:
    """Every name `load_scorer` accepts, built-ins first."""
    return (*_BUILTIN, *sorted(_registered))


def load_scorer(name: str, **opts: Any) -> Scorer:
    """Load the scorer called `name`, passing `opts` to its constructor (e.g. threads=1)."""
    if name in _registered:
        return _registered[name](**opts)
    target = _BUILTIN.get(name)
    if target is None:
        raise UnknownScorer(f"unknown scorer {name!r}; known: {', '.join(available())}")
    module_name, _, attribute = target.partition(":")
    factory: ScorerFactory = getattr(importlib.import_module(module_name), attribute)
    return factory(**opts)
