"""Errors of the perceptual hashing and bank-file code; each has a stable `code`.

They follow `pipeline.errors` (docstring = default message) and live here until the error
classes gain their `kind` (issue 12), when they join that module's table.
"""

from __future__ import annotations

from pipeline.errors import PipelineError


class InvalidPdqHash(PipelineError):
    """A PDQ hash must be 64 hexadecimal digits (256 bits)."""

    code = "bank.invalid_pdq"
    http_status = 422


class BankFileError(PipelineError):
    """The bank file could not be read."""

    code = "bank.invalid_file"
    http_status = 422

    def __init__(
        self, detail: str | None = None, *, line: int | None = None, unit: str = "line"
    ) -> None:
        #: the 1-based line (or record, within a JSON document) that was refused
        self.line = line
        #: what was wrong with it, without the position
        self.reason = detail or (self.__doc__ or self.code).strip()
        super().__init__(f"{unit} {line}: {self.reason}" if line is not None else self.reason)
