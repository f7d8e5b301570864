"""Batch manifests (pipeline.manifest): rows become upload requests; a bad line is named."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pipeline.errors import PipelineError, UnknownContextField
from pipeline.manifest import read_manifest


def test_rows_become_requests_with_paths_relative_to_the_manifest(tmp_path: Path) -> None:
    m = tmp_path / "in" / "manifest.jsonl"
    m.parent.mkdir()
    m.write_text(
        json.dumps({"path": "a.jpg", "upload_id": "u-1", "account_id": "acct-7",
                    "context": {"medical_sharing": True}}) + "\n\n"
        + json.dumps({"path": "sub/b.png"}) + "\n",
        encoding="utf-8",
    )
    first, second = read_manifest(m)
    assert (first.path, first.external_id, first.account_id) == (m.parent / "a.jpg", "u-1",
                                                                 "acct-7")
    assert first.context.medical_sharing is True and first.source == "batch"
    assert first.label == "a.jpg"
    # no upload id: the file itself names the upload, so a rerun scores nothing twice
    assert second.external_id == f"file:{(m.parent / 'sub/b.png').resolve()}"
    assert second.account_id == "acct-local"


@pytest.mark.parametrize(("line", "problem"), [
    ("not json", "JSONDecodeError"),
    ('{"upload_id": "u-1"}', "KeyError"),
    ('["a.jpg"]', "TypeError"),
])
def test_a_bad_line_is_named(tmp_path: Path, line: str, problem: str) -> None:
    m = tmp_path / "m.jsonl"
    m.write_text(json.dumps({"path": "ok.jpg"}) + "\n" + line + "\n", encoding="utf-8")
    with pytest.raises(PipelineError, match=f"line 2: {problem}"):
        list(read_manifest(m))


def test_an_unknown_context_field_and_a_missing_manifest_are_refused(tmp_path: Path) -> None:
    m = tmp_path / "m.jsonl"
    m.write_text(json.dumps({"path": "a.jpg", "context": {"nope": 1}}) + "\n", encoding="utf-8")
    with pytest.raises(UnknownContextField):
        list(read_manifest(m))
    with pytest.raises(PipelineError, match="no such manifest"):
        list(read_manifest(tmp_path / "absent.jsonl"))
