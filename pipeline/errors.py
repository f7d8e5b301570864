"""Errors of the pipeline; each has a stable machine-readable `code` and an HTTP status.

The CLI maps them to exit codes (2: the user's input, 3: an external dependency); the API maps
them to `{"code": ..., "detail": ...}` bodies.  The docstring is the default message.
"""

from __future__ import annotations


class PipelineError(Exception):
    """The request could not be processed."""

    code = "pipeline.error"
    http_status = 400
    exit_code = 2

    def __init__(self, detail: str | None = None) -> None:
        self.detail = detail or (self.__doc__ or self.code).strip()
        super().__init__(self.detail)


# ---- ingest -------------------------------------------------------------------------------
class ImageError(PipelineError):
    """The image was rejected."""

    code = "image.rejected"
    http_status = 422


class ImageEmpty(ImageError):
    """The upload is empty (0 bytes)."""

    code = "image.empty"


class ImageTooLarge(ImageError):
    """The upload is larger than the size limit."""

    code = "image.too_large"
    http_status = 413


class ImageUnsupportedType(ImageError):
    """The file is not one of the accepted image types (JPEG, PNG, WebP, GIF)."""

    code = "image.unsupported_type"
    http_status = 415


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


# ---- configuration / dependencies -----------------------------------------------------------
class ConfigurationError(PipelineError):
    """The configuration is invalid."""

    code = "config.invalid"


class DependencyUnavailable(PipelineError):
    """An external dependency (database, model, Label Studio, webhook) is unavailable."""

    code = "dependency.unavailable"
    http_status = 503
    exit_code = 3
