"""Errors raised by model backends, and `CodedError`, the base that `pipeline` shares.

Every error has a stable machine-readable `code` and a `kind` (what went wrong, in the words of
`pipeline.errors.ErrorKind`); the surfaces map the kind to an HTTP status or an exit code, so no
error here knows about either.  The docstring is the default message.
"""

from __future__ import annotations

from typing import ClassVar


class CodedError(Exception):
    """The operation failed."""

    code: ClassVar[str]
    kind: ClassVar[str]

    def __init__(self, detail: str | None = None) -> None:
        self.detail = detail or (self.__doc__ or self.code).strip()
        super().__init__(self.detail)


class ModelError(CodedError):
    """The model could not be loaded or run."""

    code = "model.error"
    kind = "unavailable"


class ModelFileMissing(ModelError):
    """The model's weights file does not exist."""

    code = "model.file_missing"


class ModelDigestMismatch(ModelError):
    """The model's weights do not match the sha256 its card records."""

    code = "model.digest_mismatch"


class BadModelInput(ModelError):
    """Images given to a scorer must be H x W x 3 uint8 RGB arrays."""

    code = "model.bad_input"


class InvalidArgument(ModelError, ValueError):
    """An argument is malformed or out of range."""

    code = "input.invalid"
    kind = "invalid"


# ---- the trainable classifier (models/classifier) ------------------------------------------
class ModelDependencyMissing(ModelError):
    """An optional dependency of this model backend is not installed (pip install '.[torch]')."""

    code = "model.dependency_missing"


class DatasetError(ModelError):
    """The labelled dataset (manifest or its images) is invalid."""

    code = "model.dataset_invalid"
    kind = "invalid"


class UnknownArchitecture(ModelError):
    """No classifier architecture is registered under that name."""

    code = "model.unknown_architecture"
    kind = "invalid"


class CheckpointInvalid(ModelError):
    """The file is not a lookfirst classifier checkpoint, or it is damaged."""

    code = "model.checkpoint_invalid"
    kind = "invalid"


class ModelCardInvalid(ModelError):
    """The classifier's model card is missing fields or contradicts its model file."""

    code = "model.card_invalid"


class ExportParityFailed(ModelError):
    """The exported ONNX model does not score like the torch model it came from."""

    code = "model.parity_failed"


class DuplicateModel(ModelError):
    """A model with this name and version is already registered."""

    code = "model.duplicate"
    kind = "conflict"


class ModelNotRegistered(ModelError):
    """No registered model matches that name (and version)."""

    code = "model.not_registered"
    kind = "not_found"


# ---- the learning loop's quality gate (issue 15) -------------------------------------------
class TrainingConfigInvalid(ModelError):
    """The training configuration asks for something training cannot do."""

    code = "model.training_config_invalid"
    kind = "invalid"


class ModelDidNotLearn(ModelError):
    """Training ended, but the model is not clearly better than chance on some category."""

    code = "model.did_not_learn"
    #: the run's files are written (for diagnosis) and marked not registrable; the CLI exits 1
    kind = "check_failed"

    def __init__(self, detail: str | None = None, *, result: object = None) -> None:
        super().__init__(detail)
        #: the TrainResult of the refused run (its model.pt exists, marked not registrable)
        self.result = result


class ModelNotRegistrable(ModelError):
    """The model failed its training quality gate; registering or promoting it needs force."""

    code = "model.not_registrable"
    kind = "check_failed"
