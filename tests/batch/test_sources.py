"""Sources: folder, JSONL, CSV and Parquet manifests and file:// URLs give the same rows,
streamed; bad rows become coded error rows."""

from __future__ import annotations

import csv
import json
import tracemalloc
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.batch.errors import SourceNotFound, SourceUnsupported
from pipeline.batch.predictor import read_bytes
from pipeline.batch.sources import SourceRow, open_source

ROWS = [
    {"path": "a/one.jpg", "upload_id": "u1", "account_id": "acct-1",
     "context": {"medical_sharing": True, "audience": "private", "account_age_days": 3}},
    {"path": "two.jpg", "upload_id": "u2", "account_id": "acct-2", "context": {}},
    {"path": "a/three.jpg"},
]


def _same(rows: list[SourceRow]) -> list[tuple[object, ...]]:
    return [(r.ordinal, r.label, r.location, r.upload_id, r.account_id,
             tuple(sorted(r.context.items())), r.error_code) for r in rows]


@pytest.fixture
def manifests(tmp_path: Path) -> dict[str, Path]:
    (tmp_path / "a").mkdir()
    out = {}
    jsonl = tmp_path / "m.jsonl"
    jsonl.write_text("".join(json.dumps(r) + "\n" for r in ROWS) + "\n")  # a blank line too
    out["jsonl"] = jsonl
    fields = ["path", "upload_id", "account_id", "medical_sharing", "audience",
              "account_age_days"]
    with open(tmp_path / "m.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=fields)
        w.writeheader()
        for r in ROWS:
            ctx = r.get("context", {})
            assert isinstance(ctx, dict)
            w.writerow({"path": r["path"], "upload_id": r.get("upload_id", ""),
                        "account_id": r.get("account_id", ""),
                        "medical_sharing": {True: "true", False: "false"}.get(
                            ctx.get("medical_sharing"), ""),  # type: ignore[arg-type]
                        "audience": ctx.get("audience", ""),
                        "account_age_days": ctx.get("account_age_days", "")})
    out["csv"] = tmp_path / "m.csv"
    table = pa.Table.from_pylist([
        {"path": r["path"], "upload_id": r.get("upload_id"), "account_id": r.get("account_id"),
         "context": json.dumps(r["context"]) if "context" in r else None} for r in ROWS
    ])
    pq.write_table(table, tmp_path / "m.parquet")
    out["parquet"] = tmp_path / "m.parquet"
    return out


def test_manifest_formats_agree(manifests: dict[str, Path], tmp_path: Path) -> None:
    expected = _same(list(open_source(str(manifests["jsonl"])).rows()))
    assert [e[2] for e in expected] == [str(tmp_path / "a/one.jpg"), str(tmp_path / "two.jpg"),
                                        str(tmp_path / "a/three.jpg")]
    assert expected[0][5] == tuple(sorted({"medical_sharing": True, "audience": "private",
                                           "account_age_days": 3, "prior_strikes": 0,
                                           "recipient_verified_provider": False}.items()))
    # a row without ids: the file's own id and the default account
    assert expected[2][3] == f"file:{tmp_path / 'a/three.jpg'}" and expected[2][4] == "acct-local"
    for kind in ("csv", "parquet"):
        assert _same(list(open_source(str(manifests[kind])).rows())) == expected, kind
    url = "file://" + str(manifests["jsonl"])
    assert _same(list(open_source(url).rows())) == expected
    assert open_source(str(manifests["parquet"])).count() == 3
    assert open_source(str(manifests["csv"])).count() == 3


def test_bad_rows_are_coded_and_the_stream_goes_on(tmp_path: Path) -> None:
    lines = [
        "{broken",
        json.dumps([1, 2]),
        json.dumps({"upload_id": "no-location"}),
        json.dumps({"path": "x.jpg", "context": {"audience": "everyone"}}),
        json.dumps({"path": "x.jpg", "context": {"medical_sharing": "yes"}}),
        json.dumps({"path": "x.jpg", "context": {"unknown_field": 1}}),
        json.dumps({"url": "file:///elsewhere/y.jpg", "upload_id": "fine"}),
    ]
    (tmp_path / "m.jsonl").write_text("\n".join(lines) + "\n")
    rows = list(open_source(str(tmp_path / "m.jsonl")).rows())
    assert [r.error_code for r in rows] == [
        "row.malformed", "row.malformed", "row.no_location", "context.invalid",
        "context.invalid", "context.invalid", None,
    ]
    assert [r.ordinal for r in rows] == list(range(7))
    assert rows[-1].location == "file:///elsewhere/y.jpg"
    assert all(r.error_detail for r in rows[:-1])


def test_csv_cells_and_both_context_forms(tmp_path: Path) -> None:
    p = tmp_path / "m.csv"
    p.write_text("path,context,audience\nx.jpg,{},public\ny.jpg,,maybe\nz.jpg,,\n"
                 "w.jpg,,public,extra\n")
    rows = list(open_source(str(p)).rows())
    assert [r.error_code for r in rows] == ["context.invalid", "context.invalid", None,
                                            "row.malformed"]


def test_folder_is_walked_in_a_stable_order(tmp_path: Path) -> None:
    for name in ("b.jpg", "a/z.png", "a/c.jpg", ".hidden.jpg", "a/.cache/x.jpg"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"x")
    rows = list(open_source(str(tmp_path)).rows())
    assert [r.label for r in rows] == ["a/c.jpg", "a/z.png", "b.jpg"]
    assert [r.ordinal for r in rows] == [0, 1, 2]
    assert open_source(str(tmp_path)).count() == 3
    assert rows[0].upload_id == f"file:{tmp_path / 'a/c.jpg'}"
    assert _same(list(open_source(f"file://{tmp_path}").rows())) == _same(rows)


def test_missing_and_unsupported_sources(tmp_path: Path) -> None:
    with pytest.raises(SourceNotFound):
        open_source(str(tmp_path / "nope.jsonl"))
    (tmp_path / "m.txt").write_text("x")
    with pytest.raises(SourceUnsupported):
        open_source(str(tmp_path / "m.txt"))


def test_read_bytes_stops_past_the_limit(tmp_path: Path) -> None:
    (tmp_path / "big").write_bytes(b"x" * 1000)
    assert len(read_bytes(str(tmp_path / "big"), 10)) == 11
    assert read_bytes(f"file://{tmp_path / 'big'}", 2000) == b"x" * 1000
    with pytest.raises(FileNotFoundError):
        read_bytes(str(tmp_path / "missing"), 10)


def test_a_long_manifest_streams_in_flat_memory(tmp_path: Path) -> None:
    """Reading 200,000 rows holds about as much as reading 20,000: nothing accumulates."""
    def peak(n: int) -> int:
        p = tmp_path / f"m{n}.jsonl"
        with open(p, "w") as fh:
            for i in range(n):
                fh.write(json.dumps({"path": f"img{i}.jpg", "upload_id": f"u{i}"}) + "\n")
        tracemalloc.start()
        count = sum(1 for _ in open_source(str(p)).rows())
        _, top = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        assert count == n
        return top

    small, large = peak(20_000), peak(200_000)
    assert large < small * 2 + (1 << 20), (small, large)
