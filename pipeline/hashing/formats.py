"""Bank list files, read and written: plain sha256 lists, plain PDQ lists, and the exports of
HMA / python-threatexchange and ThreatExchange ("hma").

Formats read (`read_bank_file`), one record per hash:

- `sha256`: one hash per line; text after the hash (a file name, as `sha256sum` prints it) is
  kept as the note; blank lines and `#` comments are skipped.
- `pdq`: one 64-digit hex hash per line, optionally followed by its quality and a name,
  separated by commas or blanks (`hash,quality,name` is what the reference PDQ hasher prints).
- `hma`, told apart by its first line:
  - `signal_type signal` lines (`pdq 0f1e...`): python-threatexchange's local file exchange,
    the way a list is handed to HMA;
  - CSV with a header naming the columns (`collab,signal_type,signal_str,category,tags`, as
    `threatexchange dataset -P --csv` writes it; ThreatExchange's `indicator,type,...` too);
  - JSON: one object per line, an array of objects, or a Graph API page `{"data": [...]}`;
    objects are ThreatExchange indicators / descriptors (`indicator` or `raw_indicator`,
    `type` such as `HASH_PDQ`, `id`, `tags`, `status`, `should_delete`, `creation_time` or
    `added_on`), python-threatexchange rows (`signal_type`, `signal_str`) or HMA bank content
    (`{"id": ..., "signals": {"pdq": ...}}`).

Signal types other than `pdq` and `sha256` (video MD5, TMK, URLs, ...) are returned with
`supported == False`, for the importer to count and skip rather than fail the whole file.
"""

from __future__ import annotations

import csv
import datetime as dt
import json
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Final, TextIO

from pipeline.hashing.errors import BankFileError, InvalidPdqHash
from pipeline.hashing.pdq import parse_hex

__all__ = ["SUPPORTED", "BankFormat", "BankRecord", "read_bank_file", "write_bank_file"]

SUPPORTED: Final = frozenset({"pdq", "sha256"})
_SHA256 = re.compile(r"[0-9a-fA-F]{64}")
_SPLIT = re.compile(r"[,\s]+")
_NOTE_MAX: Final = 500

# ThreatExchange indicator types -> signal type names (python-threatexchange's, where it has one)
_TE_TYPES: Final = {
    "HASH_PDQ": "pdq",
    "HASH_SHA256": "sha256",
    "HASH_MD5": "photo_md5",
    "HASH_VIDEO_MD5": "video_md5",
    "HASH_TMK": "video_tmk_pdqf",
    "URI": "url",
}
# python-threatexchange opinion categories and ThreatExchange statuses -> one small vocabulary
_CATEGORIES: Final = {
    "positive_class": "positive",
    "negative_class": "negative",
    "investigation_seed": "investigation",
    "malicious": "positive",
    "non_malicious": "negative",
    "suspicious": "investigation",
    "positive": "positive",
    "negative": "negative",
    "investigation": "investigation",
}
_VALUE_KEYS: Final = ("signal_str", "signal", "indicator", "raw_indicator", "hash")
_TYPE_KEYS: Final = ("signal_type", "type", "indicator_type")


class BankFormat(StrEnum):
    SHA256 = "sha256"
    PDQ = "pdq"
    HMA = "hma"


@dataclass(frozen=True, slots=True)
class BankRecord:
    """One hash read from (or to be written to) a bank file, with what its source said."""

    signal_type: str
    #: lowercase hex for the supported types; as found for the others
    value: str
    #: 1-based line of the file (record number within a JSON array)
    line: int = 0
    quality: int | None = None
    #: the record's id where it came from (a ThreatExchange id, an HMA content id)
    source_id: str | None = None
    #: the collaboration or bank it was shared in
    collab: str | None = None
    #: the source's opinion: "positive", "negative" (a known false positive) or "investigation"
    category: str | None = None
    tags: tuple[str, ...] = ()
    note: str = ""
    #: the source withdrew it (ThreatExchange `should_delete`): remove, do not add
    withdrawn: bool = False
    added_at: dt.datetime | None = None

    @property
    def supported(self) -> bool:
        return self.signal_type in SUPPORTED


# ---- reading ----------------------------------------------------------------------------------
def read_bank_file(lines: Iterable[str], fmt: BankFormat | str) -> Iterator[BankRecord]:
    """The records of a bank file, lazily (a million-line list is never held whole, except a
    JSON document, which is parsed in one piece).  Raises `BankFileError` naming the line."""
    try:
        kind = BankFormat(fmt)
    except ValueError:
        raise BankFileError(
            f"unknown format {fmt!r}; one of {', '.join(f.value for f in BankFormat)}"
        ) from None
    numbered = _numbered(lines)
    if kind is BankFormat.SHA256:
        return _read_plain(numbered, "sha256")
    if kind is BankFormat.PDQ:
        return _read_plain(numbered, "pdq")
    return _read_hma(numbered)


def _numbered(lines: Iterable[str]) -> Iterator[tuple[int, str]]:
    for n, line in enumerate(lines, 1):
        if n == 1:
            line = line.removeprefix("\ufeff")
        yield n, line.rstrip("\r\n")


def _read_plain(lines: Iterator[tuple[int, str]], kind: str) -> Iterator[BankRecord]:
    for n, raw in lines:
        text = raw.split("#", 1)[0].strip()
        if not text:
            continue
        head, *rest = _SPLIT.split(text, maxsplit=2 if kind == "pdq" else 1)
        quality = None
        if kind == "pdq" and rest and rest[0].isdigit():
            quality = _quality(rest.pop(0), n)
        yield BankRecord(kind, _value(kind, head, n), line=n, quality=quality,
                         note=" ".join(rest)[:_NOTE_MAX])


def _read_hma(lines: Iterator[tuple[int, str]]) -> Iterator[BankRecord]:
    start = next(((n, line) for n, line in lines if line.strip()), None)
    if start is None:
        return
    n, first = start
    stripped = first.strip()
    if stripped.startswith(("{", "[")):
        single = _json_line(stripped) if stripped.startswith("{") else None
        if single is not None and not isinstance(single.get("data"), list):
            yield from _from_object(single, n)
            for m, line in lines:
                if line.strip():
                    obj = _json_line(line.strip())
                    if obj is None:
                        raise BankFileError("not a JSON object (JSON Lines)", line=m)
                    yield from _from_object(obj, m)
            return
        yield from _read_json_document(first, lines)
        return
    header = [c.strip().lower() for c in next(csv.reader([first]))]
    if len(header) > 1 and any(k in header for k in _VALUE_KEYS):
        yield from _read_csv(header, lines)
        return
    yield from _read_typed_lines(n, first, lines)


def _read_typed_lines(
    n: int, first: str, lines: Iterator[tuple[int, str]]
) -> Iterator[BankRecord]:
    """python-threatexchange's local file format: `signal_type signal` per line."""
    for m, raw in _chain(n, first, lines):
        text = raw.strip()
        if not text or text.startswith("#"):
            continue
        kind, _, value = text.replace("\t", " ").partition(" ")
        if not value.strip():
            raise BankFileError(
                "expected `signal_type signal` (e.g. `pdq 0f1e...`), a CSV header or JSON", line=m
            )
        yield _record(kind.strip().lower(), value.strip(), m)


def _chain(n: int, first: str, rest: Iterator[tuple[int, str]]) -> Iterator[tuple[int, str]]:
    yield n, first
    yield from rest


def _read_csv(header: list[str], lines: Iterator[tuple[int, str]]) -> Iterator[BankRecord]:
    for m, raw in lines:
        if not raw.strip():
            continue
        try:
            cells = next(csv.reader([raw]))
        except csv.Error as exc:
            raise BankFileError(f"unreadable CSV: {exc}", line=m) from None
        if len(cells) != len(header):
            raise BankFileError(f"{len(cells)} fields; the header has {len(header)}", line=m)
        yield from _from_object(dict(zip(header, cells, strict=True)), m)


def _read_json_document(first: str, lines: Iterator[tuple[int, str]]) -> Iterator[BankRecord]:
    text = "\n".join([first, *(line for _, line in lines)])
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as exc:
        raise BankFileError(f"not valid JSON: {exc.msg}", line=exc.lineno) from None
    if isinstance(doc, dict) and isinstance(doc.get("data"), list):
        doc = doc["data"]  # a Graph API page
    items = doc if isinstance(doc, list) else [doc]
    for i, obj in enumerate(items, 1):
        if not isinstance(obj, dict):
            raise BankFileError("not a JSON object", line=i, unit="record")
        try:
            yield from _from_object(obj, i)
        except BankFileError as exc:
            # within a JSON document a record is found by its number, not by a line
            raise BankFileError(exc.reason, line=i, unit="record") from None


def _json_line(text: str) -> dict[str, Any] | None:
    try:
        obj = json.loads(text)
    except json.JSONDecodeError:
        return None
    return obj if isinstance(obj, dict) else None


def _from_object(obj: dict[str, Any], n: int) -> Iterator[BankRecord]:
    signals = obj.get("signals")
    if isinstance(signals, dict):  # HMA bank content: {"id": 7, "signals": {"pdq": "..."}}
        for kind, value in signals.items():
            yield _record(str(kind).lower(), _text(value, n), n, obj)
        return
    inner = obj.get("indicator")
    if isinstance(inner, dict):  # a ThreatExchange descriptor embeds its indicator
        obj = {**obj, **{k: v for k, v in inner.items() if k in ("indicator", "type")}}
    value = next((obj[k] for k in _VALUE_KEYS if obj.get(k) not in (None, "")), None)
    kind = next((obj[k] for k in _TYPE_KEYS if obj.get(k) not in (None, "")), None)
    if value is None or kind is None:
        raise BankFileError(
            "a record needs a hash (signal_str, indicator, ...) and its type "
            "(signal_type or type)", line=n,
        )
    name = _text(kind, n)
    yield _record(_TE_TYPES.get(name.upper(), name.lower()), _text(value, n), n, obj)


def _record(kind: str, value: str, n: int, obj: dict[str, Any] | None = None) -> BankRecord:
    value = _value(kind, value, n) if kind in SUPPORTED else value[:_NOTE_MAX]
    if obj is None:
        return BankRecord(kind, value, line=n)
    quality = obj.get("quality")
    source_id = obj.get("id", obj.get("indicator_id", obj.get("content_id")))
    category = obj.get("category") or obj.get("status")
    note = obj.get("note") or obj.get("description") or ""
    return BankRecord(
        kind,
        value,
        line=n,
        quality=None if quality in (None, "") else _quality(quality, n),
        source_id=None if source_id in (None, "") else str(source_id),
        collab=(str(obj["collab"]) or None) if obj.get("collab") is not None else None,
        category=_CATEGORIES.get(str(category).lower()) if category else None,
        tags=_tags(obj.get("tags")),
        note=str(note)[:_NOTE_MAX],
        withdrawn=_truthy(obj.get("should_delete")),
        added_at=_when(obj.get("added_on") or obj.get("creation_time") or obj.get("created_at"),
                       n),
    )


def _value(kind: str, text: str, n: int) -> str:
    if kind == "pdq":
        try:
            return parse_hex(text).hex()
        except InvalidPdqHash as exc:
            raise BankFileError(exc.detail, line=n) from None
    if not _SHA256.fullmatch(text.strip()):
        raise BankFileError(f"not a sha256 (64 hexadecimal digits): {text[:80]!r}", line=n)
    return text.strip().lower()


def _quality(value: Any, n: int) -> int:
    try:
        q = int(value)
    except (TypeError, ValueError):
        raise BankFileError(f"quality must be a whole number 0..100: {value!r}", line=n) from None
    if not 0 <= q <= 100:
        raise BankFileError(f"quality must be 0..100, not {q}", line=n)
    return q


def _text(value: Any, n: int) -> str:
    if not isinstance(value, str | int):
        raise BankFileError(f"expected text, found {type(value).__name__}", line=n)
    return str(value).strip()


def _tags(value: Any) -> tuple[str, ...]:
    if isinstance(value, dict):  # Graph API edge: {"data": [{"text": "..."}]}
        value = [t.get("text", "") for t in value.get("data", []) if isinstance(t, dict)]
    if isinstance(value, str):
        value = value.split()
    if isinstance(value, list):
        return tuple(str(t) for t in value if str(t))
    return ()


def _truthy(value: Any) -> bool:
    if isinstance(value, str):
        return value.strip().lower() in ("1", "true", "yes")
    return bool(value)


def _when(value: Any, n: int) -> dt.datetime | None:
    if value in (None, ""):
        return None
    try:
        if isinstance(value, int | float) or (isinstance(value, str) and value.isdigit()):
            return dt.datetime.fromtimestamp(int(value), dt.UTC)
        when = dt.datetime.fromisoformat(str(value))
    except (ValueError, OverflowError, OSError):
        raise BankFileError(f"not a time: {str(value)[:40]!r}", line=n) from None
    return when if when.tzinfo else when.replace(tzinfo=dt.UTC)


# ---- writing ----------------------------------------------------------------------------------
def write_bank_file(records: Iterable[BankRecord], fmt: BankFormat | str, out: TextIO) -> int:
    """Write records in a format `read_bank_file` reads back; returns how many were written.

    `sha256` and `pdq` take only records of their own type; `hma` writes the
    `signal_type signal` lines python-threatexchange's file exchange (and so HMA) loads, for
    the supported types.  Metadata other than a PDQ's quality does not fit these formats."""
    kind = BankFormat(fmt)
    count = 0
    for r in records:
        if not r.supported or (kind is not BankFormat.HMA and r.signal_type != kind.value):
            raise ValueError(f"a {r.signal_type} record cannot be written as {kind.value}")
        if kind is BankFormat.HMA:
            out.write(f"{r.signal_type} {r.value}\n")
        elif kind is BankFormat.PDQ and r.quality is not None:
            out.write(f"{r.value},{r.quality}\n")
        else:
            out.write(f"{r.value}\n")
        count += 1
    return count
