"""Bank files: plain sha256 and PDQ lists, HMA / ThreatExchange exports; every refusal names
its line, and what is written reads back the same."""

from __future__ import annotations

import datetime as dt
import io
import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pipeline.hashing.errors import BankFileError
from pipeline.hashing.formats import BankFormat, BankRecord, read_bank_file, write_bank_file

PDQ_A = "f8f8f0cee0f4a84f06370a22038f63f0b36e2ed596621e1d33e6b39c4e9c9b22"
PDQ_B = "0" * 63 + "1"
SHA_A = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"


def _read(text: str, fmt: str) -> list[BankRecord]:
    return list(read_bank_file(io.StringIO(text), fmt))


def _refusal(text: str, fmt: str) -> BankFileError:
    with pytest.raises(BankFileError) as info:
        _read(text, fmt)
    assert info.value.code == "bank.invalid_file"
    return info.value


# ---- plain lists --------------------------------------------------------------------------
def test_sha256_list_with_comments_names_and_windows_line_ends() -> None:
    text = f"\ufeff# exported 2026-12-01\r\n\r\n{SHA_A.upper()}  holiday.jpg\r\n{SHA_A} # again\r\n"
    got = _read(text, "sha256")
    assert [(r.signal_type, r.value, r.line, r.note) for r in got] == [
        ("sha256", SHA_A, 3, "holiday.jpg"),
        ("sha256", SHA_A, 4, ""),
    ]


def test_pdq_list_with_and_without_quality() -> None:
    text = f"{PDQ_A},100,bridge.jpg\n{PDQ_B} 73\n{PDQ_A.upper()}\n"
    got = _read(text, "pdq")
    assert [(r.value, r.quality, r.note, r.line) for r in got] == [
        (PDQ_A, 100, "bridge.jpg", 1),
        (PDQ_B, 73, "", 2),
        (PDQ_A, None, "", 3),
    ]


@pytest.mark.parametrize(
    ("fmt", "text", "line", "says"),
    [
        ("sha256", f"{SHA_A}\nnot-a-hash\n", 2, "not a sha256"),
        ("sha256", f"{SHA_A[:-1]}\n", 1, "not a sha256"),
        ("pdq", f"{PDQ_A}\n\n{PDQ_A[:-2]}\n", 3, "not a PDQ hash"),
        ("pdq", f"{PDQ_A},101\n", 1, "quality must be 0..100"),
        ("pdq", f"{SHA_A}\n{'z' * 64}\n", 2, "not a PDQ hash"),
    ],
)
def test_a_bad_line_is_refused_by_number(fmt: str, text: str, line: int, says: str) -> None:
    err = _refusal(text, fmt)
    assert err.line == line
    assert str(err).startswith(f"line {line}: ") and says in str(err)


def test_unknown_format() -> None:
    err = _refusal("", "csv")
    assert "one of sha256, pdq, hma" in str(err)


# ---- HMA / python-threatexchange / ThreatExchange -----------------------------------------
def test_threatexchange_file_exchange_lines() -> None:
    got = _read(f"pdq {PDQ_A}\n\nvideo_md5 d41d8cd98f00b204e9800998ecf8427e\nSHA256\t{SHA_A}\n",
                "hma")
    assert [(r.signal_type, r.value, r.supported, r.line) for r in got] == [
        ("pdq", PDQ_A, True, 1),
        ("video_md5", "d41d8cd98f00b204e9800998ecf8427e", False, 3),
        ("sha256", SHA_A, True, 4),
    ]


def test_threatexchange_dataset_csv() -> None:
    text = (
        "collab,signal_type,signal_str,category,tags\n"
        f"Sample Collab,pdq,{PDQ_A},POSITIVE_CLASS,media_type_photo known\n"
        f'"Other, Inc",pdq,{PDQ_B},NEGATIVE_CLASS,\n'
    )
    a, b = _read(text, "hma")
    assert (a.collab, a.value, a.category, a.tags, a.line) == (
        "Sample Collab", PDQ_A, "positive", ("media_type_photo", "known"), 2)
    assert (b.collab, b.category, b.tags) == ("Other, Inc", "negative", ())


def test_threatexchange_indicators_as_json_lines() -> None:
    rows = [
        {"id": "3058061737574159", "indicator": PDQ_A, "type": "HASH_PDQ",
         "creation_time": 1601513795, "status": "MALICIOUS", "should_delete": False,
         "tags": ["tag1", "tag2"]},
        {"id": "42", "indicator": PDQ_B, "type": "HASH_PDQ", "should_delete": True},
        {"id": "43", "indicator": "https://example.org/x", "type": "URI"},
    ]
    a, b, c = _read("\n".join(json.dumps(r) for r in rows) + "\n", "hma")
    assert (a.source_id, a.signal_type, a.value, a.category, a.tags, a.withdrawn) == (
        "3058061737574159", "pdq", PDQ_A, "positive", ("tag1", "tag2"), False)
    assert a.added_at == dt.datetime(2020, 10, 1, 0, 56, 35, tzinfo=dt.UTC)
    assert b.withdrawn and b.line == 2
    assert (c.signal_type, c.supported) == ("url", False)


def test_threatexchange_descriptor_page() -> None:
    page = {"data": [
        {"id": "9", "raw_indicator": PDQ_A.upper(), "type": "HASH_PDQ",
         "added_on": "2020-10-01T12:00:00+0000", "description": "from a partner",
         "tags": {"data": [{"id": "1", "text": "media_priority_s1"}]}},
        {"id": "10", "indicator": {"id": "77", "indicator": SHA_A, "type": "HASH_SHA256"},
         "status": "NON_MALICIOUS"},
    ], "paging": {"cursors": {"after": "x"}}}
    a, b = _read(json.dumps(page, indent=2), "hma")
    assert (a.value, a.tags, a.note, a.line) == (PDQ_A, ("media_priority_s1",), "from a partner", 1)
    assert a.added_at == dt.datetime(2020, 10, 1, 12, 0, tzinfo=dt.UTC)
    assert (b.signal_type, b.value, b.category, b.line) == ("sha256", SHA_A, "negative", 2)


def test_hma_bank_content() -> None:
    doc = [{"id": 7, "signals": {"pdq": PDQ_A, "video_md5": "abc"}}]
    got = _read(json.dumps(doc), "hma")
    assert [(r.source_id, r.signal_type, r.supported) for r in got] == [
        ("7", "pdq", True), ("7", "video_md5", False)]


@pytest.mark.parametrize(
    ("text", "where", "says"),
    [
        (f"pdq {PDQ_A}\npdq\n", "line 2", "expected `signal_type signal`"),
        (f"pdq {PDQ_A}\npdq {PDQ_A[:10]}\n", "line 2", "not a PDQ hash"),
        ("signal_type,signal_str\npdq\n", "line 2", "1 fields; the header has 2"),
        (json.dumps({"type": "HASH_PDQ"}) + "\n", "line 1", "needs a hash"),
        (json.dumps({"type": "HASH_PDQ", "indicator": PDQ_A}) + "\nnope\n", "line 2",
         "not a JSON object"),
        (json.dumps([{"type": "HASH_PDQ", "indicator": PDQ_A}, 5]), "record 2",
         "not a JSON object"),
        (json.dumps([{"type": "HASH_PDQ", "indicator": "00"}]), "record 1", "not a PDQ hash"),
        ("[\n{\"type\": \n", "line 2", "not valid JSON"),
        (json.dumps({"type": "HASH_PDQ", "indicator": PDQ_A, "added_on": "soon"}), "line 1",
         "not a time"),
    ],
)
def test_hma_refusals_name_where(text: str, where: str, says: str) -> None:
    err = _refusal(text, "hma")
    assert str(err).startswith(f"{where}: ") and says in str(err), str(err)


def test_an_empty_file_has_no_records() -> None:
    assert _read("", "hma") == _read("\n\n", "pdq") == _read("# only a comment\n", "sha256") == []


# ---- writing ------------------------------------------------------------------------------
pdq_hex = st.binary(min_size=32, max_size=32).map(bytes.hex)
qualities = st.none() | st.integers(0, 100)


@given(st.lists(st.tuples(pdq_hex, qualities), max_size=20))
def test_pdq_lists_read_back(items: list[tuple[str, int | None]]) -> None:
    records = [BankRecord("pdq", h, quality=q) for h, q in items]
    out = io.StringIO()
    assert write_bank_file(records, BankFormat.PDQ, out) == len(items)
    back = _read(out.getvalue(), "pdq")
    assert [(r.value, r.quality) for r in back] == items


@given(st.lists(st.tuples(st.sampled_from(["pdq", "sha256"]), pdq_hex), max_size=20))
def test_hma_lines_read_back(items: list[tuple[str, str]]) -> None:
    out = io.StringIO()
    write_bank_file([BankRecord(t, v) for t, v in items], "hma", out)
    assert [(r.signal_type, r.value) for r in _read(out.getvalue(), "hma")] == items


def test_sha256_lists_read_back() -> None:
    out = io.StringIO()
    write_bank_file([BankRecord("sha256", SHA_A)], "sha256", out)
    assert out.getvalue() == SHA_A + "\n"
    assert [r.value for r in _read(out.getvalue(), "sha256")] == [SHA_A]


def test_a_record_of_another_type_is_not_written() -> None:
    with pytest.raises(ValueError):
        write_bank_file([BankRecord("pdq", PDQ_A)], "sha256", io.StringIO())
    with pytest.raises(ValueError):
        write_bank_file([BankRecord("video_md5", "abc")], "hma", io.StringIO())
