"""Errors of the pipeline, and `ErrorKind`: the words every error's `kind` is chosen from.

Each error has a stable machine-readable `code` and a `kind`.  The surfaces map the kind, never
the class: `pipeline.api.errors` to an HTTP status, `pipeline.cli._common` to an exit code, one
table each.  The docstring is the default message.
"""

from __future__ import annotations

import enum

from models.errors import CodedError


class ErrorKind(enum.StrEnum):
    """What went wrong, as both surfaces understand it (models and review spell the same words)."""

    INVALID = "invalid"  # the caller's input is malformed, out of range or contradictory
    UNPROCESSABLE = "unprocessable"  # well-formed input that cannot be processed (a corrupt image)
    TOO_LARGE = "too_large"  # the input is larger than a limit
    UNSUPPORTED_MEDIA = "unsupported_media"  # not a type this endpoint or command accepts
    UNAUTHENTICATED = "unauthenticated"  # no credential, or not a valid one
    FORBIDDEN = "forbidden"  # a known caller who may not do this
    NOT_FOUND = "not_found"  # no such record (or nothing waiting)
    CONFLICT = "conflict"  # the record's state does not allow this step
    LIMITED = "limited"  # a rate limit or an exposure cap was reached
    UNAVAILABLE = "unavailable"  # a dependency (database, model, Label Studio, store) is down
    CHECK_FAILED = "check_failed"  # a verification ran and found a problem (the audit chain)


class PipelineError(CodedError):
    """The request could not be processed."""

    code = "pipeline.error"
    kind = ErrorKind.INVALID


# ---- ingest -------------------------------------------------------------------------------
class ImageError(PipelineError):
    """The image was rejected."""

    code = "image.rejected"
    kind = ErrorKind.UNPROCESSABLE


class ImageEmpty(ImageError):
    """The upload is empty (0 bytes)."""

    code = "image.empty"


class ImageTooLarge(ImageError):
    """The upload is larger than the size limit."""

    code = "image.too_large"
    kind = ErrorKind.TOO_LARGE


class ImageUnsupportedType(ImageError):
    """The file is not one of the accepted image types (JPEG, PNG, WebP, GIF)."""

    code = "image.unsupported_type"
    kind = ErrorKind.UNSUPPORTED_MEDIA


class ImageCorrupt(ImageError):
    """The image could not be decoded: it is truncated or corrupt."""

    code = "image.corrupt"


class ImageTooManyPixels(ImageError):
    """The image declares more pixels than the decode limit (a possible decompression bomb)."""

    code = "image.too_many_pixels"


# ---- policy -------------------------------------------------------------------------------
class PolicyError(PipelineError):
    """The policy file is invalid."""

    code = "policy.invalid"


class UnknownContextField(PipelineError):
    """A context field is not known or has a value of the wrong type."""

    code = "context.invalid"


class UploadContextConflict(PipelineError):
    """This upload id was scored before with another context; the first decision stands."""

    code = "upload.context_conflict"
    kind = ErrorKind.CONFLICT


class InputNotFound(PipelineError):
    """The input file does not exist."""

    code = "input.not_found"


# ---- configuration / dependencies -----------------------------------------------------------
class ConfigurationError(PipelineError):
    """The configuration is invalid."""

    code = "config.invalid"


class DependencyUnavailable(PipelineError):
    """An external dependency (database, model, Label Studio, webhook) is unavailable."""

    code = "dependency.unavailable"
    kind = ErrorKind.UNAVAILABLE
