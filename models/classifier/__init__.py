"""The trainable multi-label image classifier: data, training, calibration, evaluation,
ONNX export, serving backends and the on-disk model registry.

Modules that need torch (arch, train, export, torch_scorer) import it themselves; the serving
path (preprocess, card, onnx_scorer, registry, shadow, evaluate) runs without it.  Import the
torch modules inside `with torch_extra():` where the extra may be missing.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from models.errors import ModelDependencyMissing


@contextlib.contextmanager
def torch_extra() -> Iterator[None]:
    """Turn an ImportError in the block (torch, torchvision, onnx not installed) into
    ModelDependencyMissing, which names the extra to install."""
    try:
        yield
    except ImportError as exc:
        raise ModelDependencyMissing(
            f"{exc.name or exc}: install the torch extra (pip install '.[torch]')"
        ) from exc
