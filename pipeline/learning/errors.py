"""Errors of the learning loop (each with a code and a kind, as every pipeline error)."""

from __future__ import annotations

from pipeline.errors import ErrorKind, PipelineError


class NothingToExport(PipelineError):
    """No reviewed upload has a decided verdict in that window: there is nothing to label."""

    code = "dataset.empty"
    kind = ErrorKind.NOT_FOUND


class ExportTargetNotEmpty(PipelineError):
    """The export directory exists and is not empty; a dataset is written into a new one."""

    code = "dataset.target_exists"
    kind = ErrorKind.CONFLICT


class NoModelToCompare(PipelineError):
    """There is no candidate or no active model to compare."""

    code = "model.nothing_to_compare"
    kind = ErrorKind.NOT_FOUND


class PromotionRefused(PipelineError):
    """The candidate model is worse than the active one on a protected segment."""

    code = "model.promotion_refused"
    #: a check ran and found a problem: exit 1; --force with a reason overrides it
    kind = ErrorKind.CHECK_FAILED


class ReasonRequired(PipelineError):
    """Forcing a promotion needs a reason (it is audited)."""

    code = "model.reason_required"
    kind = ErrorKind.INVALID
