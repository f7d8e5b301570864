"""Batch manifests: the rows `lookfirst batch` scores, read as `UploadRequest`s.

A manifest is JSONL, one object per line: `{"path", "upload_id", "account_id", "context"}`;
paths are relative to the manifest's folder.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

from pipeline.errors import PipelineError
from pipeline.policy import Context
from pipeline.scoring import UploadRequest


def read_manifest(path: Path) -> Iterator[UploadRequest]:
    """The manifest's rows in order; a bad line is a PipelineError that names it."""
    if not path.is_file():
        raise PipelineError(f"no such manifest: {path}")
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            p = path.parent / row["path"]
            yield UploadRequest(
                account_id=str(row.get("account_id", "acct-local")),
                external_id=str(row.get("upload_id") or f"file:{p.resolve()}"),
                context=Context.parse(row.get("context", {})),
                source="batch",
                path=p,
                label=str(row["path"]),
            )
        except (json.JSONDecodeError, KeyError, TypeError) as exc:
            raise PipelineError(f"{path} line {n}: {type(exc).__name__}: {exc}") from None
