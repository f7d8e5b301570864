"""Hash banks: exact sha256 lists that route content before any model score matters.

`violating` entries are imported by an operator (a known-violating list) and send a match to
the severe queue; `cleared_benign` entries are fed by people's benign verdicts, so an image a
person has already cleared is not flagged again when it is shared again.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Iterable
from typing import Any, cast

from sqlalchemy import Table, select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm import Session

from review import audit
from review.errors import ReviewError
from review.schema import BankEntry

BANKS = ("violating", "cleared_benign")
_BANK = cast(Table, BankEntry.__table__)
_SHA256 = re.compile(r"[0-9a-f]{64}")


class BadBankEntry(ReviewError):
    """A bank entry must be a 64-character lowercase hexadecimal sha256."""

    code = "bank.invalid_entry"
    kind = "unprocessable"


def _check(bank: str, sha256: str) -> str:
    if bank not in BANKS:
        raise BadBankEntry(f"unknown bank {bank!r}; one of {', '.join(BANKS)}")
    sha = sha256.strip().lower()
    if not _SHA256.fullmatch(sha):
        raise BadBankEntry(f"not a sha256: {sha256[:80]!r}")
    return sha


def add(
    s: Session, *, bank: str, sha256: str, source: str, actor: str, at: dt.datetime,
    note: str = "",
) -> bool:
    """Add one entry (idempotent); returns False if it was already there."""
    sha = _check(bank, sha256)
    # INSERT ... ON CONFLICT DO NOTHING: two people clearing the same image at the same moment
    # both succeed, and the entry (and its audit event) is written once
    dialect = s.get_bind().dialect.name
    ins = (pg_insert if dialect == "postgresql" else sqlite_insert)(_BANK)
    row = s.execute(
        ins.values(bank=bank, sha256=sha, source=source, note=note[:500], created_at=at)
        .on_conflict_do_nothing(index_elements=["bank", "sha256"])
        .returning(_BANK.c.sha256)
    ).first()
    if row is None:
        return False
    audit.append(s, at=at, actor=actor, event="bank.added", subject_type="bank",
                 subject_id=f"{bank}:{sha[:16]}", data={"source": source})
    return True


def import_hashes(
    s: Session, lines: Iterable[str], *, bank: str, source: str, actor: str, at: dt.datetime
) -> tuple[int, int]:
    """Import one sha256 per line (blank lines and '#' comments skipped): (added, present)."""
    added = present = 0
    for n, line in enumerate(lines, 1):
        text = line.split("#", 1)[0].strip()
        if not text:
            continue
        try:
            new = add(s, bank=bank, sha256=text, source=source, actor=actor, at=at)
        except BadBankEntry as exc:
            raise BadBankEntry(f"line {n}: {exc.detail}") from None
        added += new
        present += not new
    return added, present


def lookup(s: Session, sha256: str) -> str | None:
    """The bank that matches this content; `violating` wins over `cleared_benign`."""
    banks = set(
        s.execute(select(BankEntry.bank).where(BankEntry.sha256 == sha256.lower())).scalars()
    )
    if "violating" in banks:
        return "violating"
    return "cleared_benign" if "cleared_benign" in banks else None


def list_entries(s: Session, *, bank: str | None = None, limit: int = 200) -> list[dict[str, Any]]:
    q = select(BankEntry).order_by(BankEntry.created_at.desc()).limit(limit)
    if bank:
        q = q.where(BankEntry.bank == bank)
    return [
        {"bank": e.bank, "sha256": e.sha256, "source": e.source, "note": e.note,
         "created_at": e.created_at.isoformat()}
        for e in s.execute(q).scalars()
    ]


def lookup_many(s: Session, sha256s: Iterable[str]) -> dict[str, str]:
    """`lookup` for a batch in one query: sha256 -> matching bank (violating wins)."""
    wanted = sorted({x.lower() for x in sha256s})
    if not wanted:
        return {}
    out: dict[str, str] = {}
    for bank, sha in s.execute(
        select(BankEntry.bank, BankEntry.sha256).where(BankEntry.sha256.in_(wanted))
    ):
        if out.get(sha) != "violating":
            out[sha] = bank
    return out
