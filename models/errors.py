"""Errors raised by model backends; each carries a stable machine-readable code."""

from __future__ import annotations


class ModelError(Exception):
    """The model could not be loaded or run."""

    code = "model.error"

    def __init__(self, detail: str | None = None) -> None:
        self.detail = detail or (self.__doc__ or self.code).strip()
        super().__init__(self.detail)


class ModelFileMissing(ModelError):
    """The model's weights file does not exist."""

    code = "model.file_missing"


class ModelDigestMismatch(ModelError):
    """The model's weights do not match the sha256 its card records."""

    code = "model.digest_mismatch"


class BadModelInput(ModelError):
    """Images given to a scorer must be H x W x 3 uint8 RGB arrays."""

    code = "model.bad_input"
