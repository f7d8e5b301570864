"""Errors of batch jobs: the job's own refusals, and the codes a bad row is recorded with."""

from __future__ import annotations

from pipeline.errors import ErrorKind, PipelineError


class SourceNotFound(PipelineError):
    """The batch source (folder, manifest or URL) does not exist."""

    code = "batch.source_not_found"
    kind = ErrorKind.NOT_FOUND


class SourceUnsupported(PipelineError):
    """The source is not a folder or a .jsonl, .csv or .parquet manifest."""

    code = "batch.source_unsupported"


class OutputExists(PipelineError):
    """The output already holds a job's results: pass --resume to continue it."""

    code = "batch.output_exists"
    kind = ErrorKind.CONFLICT


class ResumeMismatch(PipelineError):
    """The output belongs to a job over another source; it cannot be resumed with this one."""

    code = "batch.resume_mismatch"
    kind = ErrorKind.CONFLICT


class JobLocked(PipelineError):
    """Another process is running this job (its output folder is locked)."""

    code = "batch.locked"
    kind = ErrorKind.UNAVAILABLE


class SchemeUnavailable(PipelineError):
    """A row's URL needs an fsspec file system whose package is not installed here (s3://:
    s3fs, gs://: gcsfs); the job stops, and goes on with --resume once it is installed."""

    code = "batch.scheme_unavailable"
    kind = ErrorKind.UNAVAILABLE


class UnknownEngine(PipelineError):
    """The engine is `local` (worker processes on this machine) or `ray`."""

    code = "batch.unknown_engine"


class EngineUnavailable(PipelineError):
    """The requested engine cannot run here (the Ray engine needs the `cluster` extra)."""

    code = "batch.engine_unavailable"
    kind = ErrorKind.UNAVAILABLE


# ---- codes of error rows (the job goes on) -------------------------------------------------
#: a manifest line that is not JSON, or a CSV/Parquet row that cannot be read
ROW_MALFORMED = "row.malformed"
#: a row with neither `path` nor `url`
ROW_NO_LOCATION = "row.no_location"
#: a row whose URL has a scheme no fsspec file system knows
ROW_BAD_URL = "row.bad_url"
#: a row whose context is not a valid upload context
ROW_BAD_CONTEXT = "context.invalid"
#: the file a row names does not exist or cannot be read
FILE_NOT_FOUND = "file.not_found"
FILE_UNREADABLE = "file.unreadable"
#: the file could not be read for now (the network, a storage service's 5xx or throttling),
#: after a few tries: not a result, so no row is written and a resume tries it again
FILE_UNAVAILABLE = "file.unavailable"
#: the model failed on this row's image (scored alone, after its batch failed)
MODEL_FAILED = "model.failed"
#: processing this row's file failed in a way no check foresaw (a defect, or memory): the
#: row's error, with the traceback in the worker's log; the job goes on
PROCESSING_FAILED = "image.processing_failed"
#: processing this row's file ended its worker process (a native decoder's crash on a hostile
#: file, the memory limit), also when tried alone
WORKER_CRASHED = "image.worker_crashed"
