"""Batch sources, streamed: a folder, or a JSONL / CSV / Parquet manifest, local or any fsspec URL.

Each source yields `SourceRow`s in a stable order; a row's `ordinal` (its position) is the
job's identity for it, which is what resume and the Parquet output count on.  Rows are read
as they are needed (line by line, CSV record by record, Parquet record batch by record batch,
one folder listing at a time), so memory stays flat however long the source is.  A bad row
becomes an error row with a code; it never stops the job.  What stops it is this installation,
not the row: a URL scheme whose file system needs a package not installed here
(`SchemeUnavailable`, before any such row is sent to a worker).
"""

from __future__ import annotations

import csv
import json
import logging
import os
import posixpath
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import fsspec
from fsspec.spec import AbstractFileSystem

from pipeline.batch.errors import (
    ROW_BAD_CONTEXT,
    ROW_BAD_URL,
    ROW_MALFORMED,
    ROW_NO_LOCATION,
    SchemeUnavailable,
    SourceNotFound,
    SourceUnsupported,
)
from pipeline.errors import UnknownContextField
from pipeline.policy import Context

__all__ = ["Source", "SourceRow", "open_source"]

logger = logging.getLogger(__name__)

DEFAULT_ACCOUNT = "acct-local"
MANIFEST_SUFFIXES = {".jsonl": "jsonl", ".ndjson": "jsonl", ".csv": "csv", ".parquet": "parquet"}
#: context fields a CSV or Parquet manifest may give as columns of their own
CONTEXT_FIELDS: tuple[str, ...] = tuple(Context.model_fields)
_PARQUET_BATCH_ROWS = 4096


@dataclass(frozen=True, slots=True)
class SourceRow:
    """One upload to score, or an error row saying why the source line could not be one."""

    ordinal: int
    #: what the row called the image (path or URL as written): for output, never content
    label: str
    #: what to open: a local path or an fsspec URL; None for an error row
    location: str | None
    upload_id: str
    account_id: str
    context: Mapping[str, Any] = field(default_factory=dict)
    error_code: str | None = None
    error_detail: str | None = None

    @property
    def ok(self) -> bool:
        return self.error_code is None


def _is_url(s: str) -> bool:
    return "://" in s


class Source:
    """A stream of rows from one folder or manifest."""

    def __init__(self, spec: str, *, default_account: str = DEFAULT_ACCOUNT) -> None:
        self.spec = spec
        self.default_account = default_account
        fs, path = fsspec.core.url_to_fs(spec)
        self.fs: AbstractFileSystem = fs
        self.path: str = path
        self.local = _is_local(fs)
        if not fs.exists(path):
            raise SourceNotFound(f"no such source: {spec}")
        if fs.isdir(path):
            self.kind = "folder"
        else:
            suffix = posixpath.splitext(path)[1].lower()
            kind = MANIFEST_SUFFIXES.get(suffix)
            if kind is None:
                raise SourceUnsupported(
                    f"{spec}: a source is a folder or a manifest ending in "
                    f"{', '.join(MANIFEST_SUFFIXES)}"
                )
            self.kind = kind

    # ---- identity -------------------------------------------------------------------------
    def fingerprint(self) -> dict[str, Any]:
        """What resume compares: the same source, unchanged (a manifest's size and mtime)."""
        info: dict[str, Any] = {"spec": self.spec, "kind": self.kind}
        if self.kind != "folder":
            st = self.fs.info(self.path)
            info["size"] = st.get("size")
            mtime = st.get("mtime") or st.get("LastModified") or st.get("updated")
            info["mtime"] = str(mtime) if mtime is not None else None
        return info

    def count(self) -> int | None:
        """How many rows, when that is cheap to know (for the ETA); None otherwise."""
        if self.kind == "parquet":
            import pyarrow.parquet as pq

            with self.fs.open(self.path, "rb") as fh:
                return int(pq.ParquetFile(fh).metadata.num_rows)
        if self.kind == "folder" and self.local:
            return sum(1 for _ in self._walk(self.path))  # names only: cheap next to scoring
        if self.kind in ("jsonl", "csv") and self.local:
            n = 0
            with open(self.path, "rb") as fh:
                for chunk in iter(lambda: fh.read(1 << 20), b""):
                    n += chunk.count(b"\n")
            return n - 1 if self.kind == "csv" else n
        return None

    # ---- rows ------------------------------------------------------------------------------
    def rows(self) -> Iterator[SourceRow]:
        if self.kind == "folder":
            yield from self._folder_rows()
        elif self.kind == "jsonl":
            yield from self._jsonl_rows()
        elif self.kind == "csv":
            yield from self._csv_rows()
        else:
            yield from self._parquet_rows()

    def _folder_rows(self) -> Iterator[SourceRow]:
        for ordinal, location in enumerate(self._walk(self.path)):
            rel = posixpath.relpath(location, self.path) if not self.local else os.path.relpath(
                location, self.path)
            url = location if self.local else self.fs.unstrip_protocol(location)
            yield SourceRow(
                ordinal=ordinal,
                label=rel,
                location=url,
                upload_id=f"file:{os.path.abspath(location) if self.local else url}",
                account_id=self.default_account,
                context=Context().model_dump(),
            )

    def _walk(self, folder: str) -> Iterator[str]:
        """Files under `folder`, depth first, names sorted: the same order every run."""
        if self.local:
            with os.scandir(folder) as it:
                entries = sorted((e for e in it if not e.name.startswith(".")),
                                 key=lambda e: e.name)
            for entry in entries:
                if entry.is_dir(follow_symlinks=False):
                    yield from self._walk(entry.path)
                elif entry.is_file():
                    yield entry.path
            return
        listing = sorted(self.fs.ls(folder, detail=True), key=lambda e: str(e["name"]))
        for entry in listing:
            name = str(entry["name"])
            if posixpath.basename(name).startswith("."):
                continue
            if entry.get("type") == "directory":
                yield from self._walk(name)
            else:
                yield name

    def _text(self) -> Any:
        if self.local:
            return open(self.path, encoding="utf-8", newline="")  # noqa: SIM115
        return self.fs.open(self.path, "rt", encoding="utf-8", newline="")

    def _jsonl_rows(self) -> Iterator[SourceRow]:
        with self._text() as fh:
            ordinal = 0
            for lineno, line in enumerate(fh, 1):
                if not line.strip():
                    continue
                try:
                    raw = json.loads(line)
                    if not isinstance(raw, dict):
                        raise ValueError("a manifest line must be a JSON object")
                except ValueError as exc:
                    yield self._error(ordinal, f"line {lineno}", ROW_MALFORMED,
                                      f"line {lineno}: {exc}")
                else:
                    yield self._row(ordinal, raw, where=f"line {lineno}")
                ordinal += 1

    def _csv_rows(self) -> Iterator[SourceRow]:
        with self._text() as fh:
            reader = csv.DictReader(fh)
            for ordinal, rec in enumerate(reader):
                where = f"line {reader.line_num}"
                if None in rec:  # more cells than the header names
                    yield self._error(ordinal, where, ROW_MALFORMED,
                                      f"{where}: more cells than columns")
                    continue
                raw: dict[str, Any] = {k: v for k, v in rec.items() if v not in (None, "")}
                yield self._row(ordinal, raw, where=where, context_as_text=True)

    def _parquet_rows(self) -> Iterator[SourceRow]:
        import pyarrow.parquet as pq

        with self.fs.open(self.path, "rb") as fh:
            pf = pq.ParquetFile(fh)
            ordinal = 0
            for batch in pf.iter_batches(batch_size=_PARQUET_BATCH_ROWS):
                for raw in batch.to_pylist():
                    clean = {k: v for k, v in raw.items() if v is not None}
                    yield self._row(ordinal, clean, where=f"row {ordinal}")
                    ordinal += 1

    # ---- one row ---------------------------------------------------------------------------
    def _error(self, ordinal: int, label: str, code: str, detail: str) -> SourceRow:
        return SourceRow(ordinal=ordinal, label=label, location=None,
                         upload_id=f"row:{ordinal}", account_id=self.default_account,
                         error_code=code, error_detail=detail)

    def _row(self, ordinal: int, raw: Mapping[str, Any], *, where: str,
             context_as_text: bool = False) -> SourceRow:
        target = raw.get("path", raw.get("url"))
        if not isinstance(target, str) or not target:
            return self._error(ordinal, where, ROW_NO_LOCATION,
                               f"{where}: a row needs a `path` or a `url`")
        location = self._resolve(target)
        unknown = _unknown_scheme(location, where=where)
        if unknown is not None:
            return self._error(ordinal, target, ROW_BAD_URL, unknown)
        try:
            context = _context(raw, as_text=context_as_text)
        except UnknownContextField as exc:
            return SourceRow(ordinal=ordinal, label=target, location=None,
                             upload_id=str(raw.get("upload_id") or f"row:{ordinal}"),
                             account_id=str(raw.get("account_id") or self.default_account),
                             error_code=ROW_BAD_CONTEXT, error_detail=f"{where}: {exc.detail}")
        upload_id = raw.get("upload_id")
        return SourceRow(
            ordinal=ordinal,
            label=target,
            location=location,
            upload_id=str(upload_id) if upload_id not in (None, "") else f"file:{location}",
            account_id=str(raw.get("account_id") or self.default_account),
            context=context,
        )

    def _resolve(self, target: str) -> str:
        """A row's path relative to the manifest's folder, on the manifest's file system."""
        if _is_url(target):
            return target
        if self.local:
            base = os.path.dirname(os.path.abspath(self.path))
            return os.path.normpath(os.path.join(base, target))
        base = posixpath.dirname(self.path)
        return str(self.fs.unstrip_protocol(posixpath.normpath(posixpath.join(base, target))))


#: fsspec protocols checked in this process: None (it opens here) or why it is unknown
_SCHEMES: dict[str, str | None] = {}


def _unknown_scheme(location: str, *, where: str) -> str | None:
    """Why no file system knows this URL's scheme (the row's error), None when one does; a
    scheme whose file system needs a package not installed here stops the job
    (`SchemeUnavailable`): every such row would fail, and installing it lets a resume go on."""
    protocol, _ = fsspec.core.split_protocol(location)
    if protocol is None:
        return None
    if protocol not in _SCHEMES:
        try:
            fsspec.get_filesystem_class(protocol)
            _SCHEMES[protocol] = None
        except ImportError as exc:
            raise SchemeUnavailable(
                f"{where}: {protocol}:// URLs need a package not installed here "
                f"({exc}); install it and run the same command with --resume") from None
        except ValueError:
            _SCHEMES[protocol] = f"{where}: no file system knows {protocol}:// URLs"
    return _SCHEMES[protocol]


def _context(raw: Mapping[str, Any], *, as_text: bool) -> dict[str, Any]:
    """The row's context: a `context` object (or its JSON text), or one column per field."""
    given = raw.get("context")
    if isinstance(given, str):
        try:
            given = json.loads(given)
        except ValueError:
            raise UnknownContextField("the context column is not a JSON object") from None
    if given is not None and not isinstance(given, Mapping):
        raise UnknownContextField("the context must be an object")
    columns = {k: raw[k] for k in CONTEXT_FIELDS if k in raw}
    if given is not None and columns:
        raise UnknownContextField("give the context as one `context` object or as columns, "
                                  "not both")
    if columns and as_text:
        return Context.from_pairs([f"{k}={v}" for k, v in columns.items()]).model_dump()
    return Context.parse(dict(given or columns)).model_dump()


def _is_local(fs: AbstractFileSystem) -> bool:
    protocol = fs.protocol
    names = (protocol,) if isinstance(protocol, str) else tuple(protocol)
    return "file" in names or "local" in names


def open_source(spec: str, *, default_account: str = DEFAULT_ACCOUNT) -> Source:
    """Open a folder, manifest or fsspec URL as a stream of rows (raises SourceNotFound, ...)."""
    return Source(spec, default_account=default_account)
