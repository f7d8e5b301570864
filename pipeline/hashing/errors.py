"""Errors of the perceptual hashing and bank-file code; each has a stable `code`.

They follow `pipeline.errors` (docstring = default message, a `kind` from its vocabulary).
"""

from __future__ import annotations

from pipeline.errors import ErrorKind, PipelineError


class InvalidPdqHash(PipelineError):
    """A PDQ hash must be 64 hexadecimal digits (256 bits)."""

    code = "bank.invalid_pdq"
    kind = ErrorKind.UNPROCESSABLE


class BankFileError(PipelineError):
    """The bank file could not be read."""

    code = "bank.invalid_file"
    kind = ErrorKind.UNPROCESSABLE

    def __init__(
        self, detail: str | None = None, *, line: int | None = None, unit: str = "line"
    ) -> None:
        #: the 1-based line (or record, within a JSON document) that was refused
        self.line = line
        #: what was wrong with it, without the position
        self.reason = detail or (self.__doc__ or self.code).strip()
        super().__init__(f"{unit} {line}: {self.reason}" if line is not None else self.reason)
