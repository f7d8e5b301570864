"""Hash banks: lists that route content before any model score matters.

`violating` entries are imported by an operator (a known-violating list, sha256 or PDQ) and
send a match to review at top priority; `cleared_benign` entries are fed by people's benign
verdicts (and upheld appeals, QA clearances), so an image a person has already cleared is not
flagged again when it is shared again, recompressed or resized.

Each entry is a row with its provenance (source, reason, who added it, when), an optional
expiry, a scope ('' global, or one account) and a state: `active` entries match;
`quarantined` (flood protection), `demoted` (a person found it wrong) and `removed` ones do
not.  Every change takes the next value of the bank's change counter (`seq`), so a process
holding a PDQ index catches up with `changes_since(last seq)`.  The review store knows no PDQ
arithmetic beyond a Hamming distance; the index lives in the pipeline (`pipeline.banks`).
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, cast

from sqlalchemy import Table, func, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.engine import RowMapping
from sqlalchemy.orm import Session

from review import audit
from review.errors import NotFound, ReviewError
from review.schema import BankCounter, BankEntry, BankMatch, Content, Decision, ReviewItem
from review.states import OPEN_ITEM_STATUSES

BANKS = ("violating", "cleared_benign")
KINDS = ("sha256", "pdq")
STATES = ("active", "quarantined", "demoted", "removed")
#: PDQ's customary threshold, used where the review store compares two PDQ hashes itself
PDQ_THRESHOLD = 31
#: below this PDQ quality a hash is noise: no clearance, no cluster is built on it
PDQ_QUALITY_FLOOR = 50
_BANK = cast(Table, BankEntry.__table__)
_HEX64 = re.compile(r"[0-9a-f]{64}")


class BadBankEntry(ReviewError):
    """A bank entry must name a known bank and be 64 lowercase hexadecimal digits."""

    code = "bank.invalid_entry"
    kind = "unprocessable"


class BankEntryNotFound(NotFound):
    """No such bank entry (or bank match)."""

    code = "bank.not_found"


class NoUsablePdq(ReviewError):
    """The item's content has no PDQ hash of enough quality to find near-duplicates by."""

    code = "bank.no_usable_pdq"
    kind = "unprocessable"


@dataclass(frozen=True, slots=True)
class NewEntry:
    """One hash to add: what the import reader or a verdict hands over."""

    kind: str
    value: str
    quality: int | None = None
    reason: str = ""


def _check(bank: str, kind: str, value: str) -> str:
    if bank not in BANKS:
        raise BadBankEntry(f"unknown bank {bank!r}; one of {', '.join(BANKS)}")
    if kind not in KINDS:
        raise BadBankEntry(f"unknown hash kind {kind!r}; one of {', '.join(KINDS)}")
    text = value.strip().lower()
    if not _HEX64.fullmatch(text):
        raise BadBankEntry(f"not a {kind} hash (64 hexadecimal digits): {value[:80]!r}")
    return text


def next_seq(s: Session) -> int:
    """The bank's next change number.  The counter row stays locked until the transaction
    ends, so changes become visible in the order of their numbers."""
    for _ in range(2):
        got = s.execute(
            update(BankCounter).where(BankCounter.id == 1)
            .values(value=BankCounter.value + 1).returning(BankCounter.value)
        ).scalar()
        if got is not None:
            return int(got)
        dialect = s.get_bind().dialect.name
        ins = (pg_insert if dialect == "postgresql" else sqlite_insert)(
            cast(Table, BankCounter.__table__))
        s.execute(ins.values(id=1, value=0).on_conflict_do_nothing(index_elements=["id"]))
    raise RuntimeError("the bank counter row could not be created")  # pragma: no cover


def add(
    s: Session, *, bank: str, value: str, source: str, actor: str, at: dt.datetime,
    kind: str = "sha256", quality: int | None = None, reason: str = "",
    scope_account: str | None = None, expires_at: dt.datetime | None = None,
    origin_item_id: int | None = None,
) -> int | None:
    """Add one entry (idempotent); its id, or None if the same entry was already there."""
    text = _check(bank, kind, value)
    if quality is not None and not 0 <= quality <= 100:
        raise BadBankEntry(f"a PDQ quality is 0..100, not {quality}")
    # INSERT ... ON CONFLICT DO NOTHING: two people clearing the same image at the same moment
    # both succeed, and the entry (and its audit event) is written once
    dialect = s.get_bind().dialect.name
    ins = (pg_insert if dialect == "postgresql" else sqlite_insert)(_BANK)
    entry_id = s.execute(
        ins.values(bank=bank, kind=kind, value=text, quality=quality,
                   scope_account=scope_account or "", state="active", source=source[:128],
                   reason=reason[:500], added_by=actor[:128], added_at=at,
                   expires_at=expires_at, origin_item_id=origin_item_id, seq=next_seq(s))
        .on_conflict_do_nothing(index_elements=["bank", "kind", "value", "scope_account"])
        .returning(_BANK.c.id)
    ).scalar()
    if entry_id is None:
        return None
    audit.append(s, at=at, actor=actor, event="bank.added", subject_type="bank_entry",
                 subject_id=str(entry_id),
                 data={"bank": bank, "kind": kind, "value": text, "source": source,
                       "scope_account": scope_account, "origin_item_id": origin_item_id})
    return int(entry_id)


def import_entries(
    s: Session, entries: Iterable[NewEntry], *, bank: str, source: str, actor: str,
    at: dt.datetime, scope_account: str | None = None, expires_at: dt.datetime | None = None,
) -> tuple[int, int]:
    """Add many entries: (added, already present)."""
    added = present = 0
    for e in entries:
        new = add(s, bank=bank, kind=e.kind, value=e.value, quality=e.quality, source=source,
                  actor=actor, at=at, reason=e.reason, scope_account=scope_account,
                  expires_at=expires_at)
        added += new is not None
        present += new is None
    return added, present


def import_hashes(
    s: Session, lines: Iterable[str], *, bank: str, source: str, actor: str, at: dt.datetime
) -> tuple[int, int]:
    """Import one sha256 per line (blank lines and '#' comments skipped): (added, present)."""
    out = []
    for n, line in enumerate(lines, 1):
        text = line.split("#", 1)[0].strip()
        if text:
            try:
                _check(bank, "sha256", text)
            except BadBankEntry as exc:
                raise BadBankEntry(f"line {n}: {exc.detail}") from None
            out.append(NewEntry("sha256", text))
    return import_entries(s, out, bank=bank, source=source, actor=actor, at=at)


def entry_dict(e: BankEntry) -> dict[str, Any]:
    return {
        "id": e.id, "bank": e.bank, "kind": e.kind, "value": e.value,
        # the sha256 key is what `banks list` always showed for sha256 entries
        **({"sha256": e.value} if e.kind == "sha256" else {"pdq": e.value}),
        "quality": e.quality, "scope_account": e.scope_account or None, "state": e.state,
        "source": e.source, "reason": e.reason, "added_by": e.added_by,
        "added_at": e.added_at.isoformat(),
        "expires_at": e.expires_at.isoformat() if e.expires_at else None,
        "origin_item_id": e.origin_item_id, "seq": e.seq,
    }


def _live(at: dt.datetime) -> Any:
    return (BankEntry.state == "active") & (
        BankEntry.expires_at.is_(None) | (BankEntry.expires_at > at))


def lookup_sha256(
    s: Session, sha256s: Iterable[str], *, at: dt.datetime
) -> dict[str, list[dict[str, Any]]]:
    """The live sha256 entries matching each content (every scope: the caller applies it)."""
    wanted = sorted({x.lower() for x in sha256s})
    out: dict[str, list[dict[str, Any]]] = {}
    for i in range(0, len(wanted), 500):
        for e in s.execute(select(BankEntry).where(
                BankEntry.kind == "sha256", BankEntry.value.in_(wanted[i : i + 500]),
                _live(at)).order_by(BankEntry.id)).scalars():
            out.setdefault(e.value, []).append(entry_dict(e))
    return out


def lookup(s: Session, sha256: str, *, at: dt.datetime | None = None) -> str | None:
    """The bank this exact content matches (global entries; `violating` wins)."""
    return lookup_many(s, [sha256], at=at).get(sha256.lower())


def lookup_many(
    s: Session, sha256s: Iterable[str], *, at: dt.datetime | None = None
) -> dict[str, str]:
    """`lookup` for a batch in one query: sha256 -> matching bank (violating wins)."""
    now = at or dt.datetime.now(dt.UTC)
    out: dict[str, str] = {}
    for sha, rows in lookup_sha256(s, sha256s, at=now).items():
        banks = {r["bank"] for r in rows if r["scope_account"] is None}
        if banks:
            out[sha] = "violating" if "violating" in banks else "cleared_benign"
    return out


def changes_since(s: Session, seq: int, *, limit: int = 100_000) -> list[dict[str, Any]]:
    """Entries changed after change number `seq`, in change order (every kind, so that the
    caller's last number moves past sha256 changes too): what a PDQ index catches up with (an
    entry no longer `active` is to be dropped from it).  Plain rows, not ORM objects: the
    first call of a process reads the whole bank."""
    rows = s.execute(
        select(*_BANK.c).where(_BANK.c.seq > seq).order_by(_BANK.c.seq).limit(limit)
    ).mappings()
    return [_row_dict(r) for r in rows]


def _row_dict(r: RowMapping) -> dict[str, Any]:
    return {
        "id": r["id"], "bank": r["bank"], "kind": r["kind"], "value": r["value"],
        "quality": r["quality"], "scope_account": r["scope_account"] or None,
        "state": r["state"], "source": r["source"], "reason": r["reason"],
        "added_by": r["added_by"], "added_at": r["added_at"].isoformat(),
        "expires_at": r["expires_at"].isoformat() if r["expires_at"] else None,
        "origin_item_id": r["origin_item_id"], "seq": r["seq"],
    }


def current_seq(s: Session) -> int:
    got = s.execute(select(BankCounter.value).where(BankCounter.id == 1)).scalar()
    return int(got or 0)


def list_entries(
    s: Session, *, bank: str | None = None, kind: str | None = None, state: str | None = None,
    limit: int | None = 200,
) -> list[dict[str, Any]]:
    q = select(BankEntry).order_by(BankEntry.added_at.desc(), BankEntry.id.desc())
    if limit is not None:
        q = q.limit(limit)
    if bank:
        q = q.where(BankEntry.bank == bank)
    if kind:
        q = q.where(BankEntry.kind == kind)
    if state:
        q = q.where(BankEntry.state == state)
    return [entry_dict(e) for e in s.execute(q).scalars()]


def set_state(
    s: Session, entry_id: int, state: str, *, actor: str, at: dt.datetime, reason: str,
    event: str, data: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Move one entry to `state` (audited, with the next change number)."""
    if state not in STATES:
        raise BadBankEntry(f"unknown state {state!r}; one of {', '.join(STATES)}")
    e = s.get(BankEntry, entry_id, with_for_update=True)
    if e is None:
        raise BankEntryNotFound(f"no bank entry {entry_id}")
    before = e.state
    e.state, e.seq = state, next_seq(s)
    s.flush()
    audit.append(s, at=at, actor=actor, event=event, subject_type="bank_entry",
                 subject_id=str(entry_id),
                 data={"bank": e.bank, "kind": e.kind, "from": before, "to": state,
                       "reason": reason[:500], **(data or {})})
    return entry_dict(e)


def remove(s: Session, entry_id: int, *, actor: str, at: dt.datetime, reason: str
           ) -> dict[str, Any]:
    """Stop an entry matching for good (kept as a row: its matches and audit refer to it)."""
    return set_state(s, entry_id, "removed", actor=actor, at=at, reason=reason,
                     event="bank.removed")


# ---- content hashed before PDQ existed ---------------------------------------------------
def content_without_pdq(s: Session, *, limit: int = 500) -> list[str]:
    """Contents stored before PDQ hashing (migration 0012): what `banks backfill` hashes."""
    return list(s.execute(select(Content.sha256).where(Content.pdq.is_(None))
                          .order_by(Content.sha256).limit(limit)).scalars())


def set_content_pdq(s: Session, sha256: str, pdq: str, quality: int) -> None:
    """Store a content's PDQ hash (once: a hash already stored is kept)."""
    s.execute(update(Content).where(Content.sha256 == sha256, Content.pdq.is_(None))
              .values(pdq=_check("violating", "pdq", pdq), pdq_quality=quality))


# ---- matches: flood protection, confirm / mark false --------------------------------------
def record_matches(
    s: Session, *, decision_id: str, account_id: str, matches: Sequence[Mapping[str, Any]],
    at: dt.datetime, flood_limit: int, flood_window: dt.timedelta,
) -> list[int]:
    """Record the bank entries an upload matched (in its decision's transaction); an entry
    that matched more than `flood_limit` uploads within `flood_window` is quarantined
    (audited): a list entry that suddenly matches everything is more likely wrong than a
    flood of violating content.  Returns the entries quarantined now."""
    quarantined = []
    for m in matches:
        entry_id = int(m["entry_id"])
        s.add(BankMatch(entry_id=entry_id, decision_id=decision_id, account_id=account_id,
                        distance=int(m["distance"]), matched_at=at))
        s.flush()
        n = s.execute(select(func.count()).select_from(BankMatch).where(
            BankMatch.entry_id == entry_id, BankMatch.matched_at > at - flood_window)).scalar()
        if n is not None and n > flood_limit:
            e = s.get(BankEntry, entry_id)
            if e is not None and e.state == "active":
                set_state(s, entry_id, "quarantined", actor="system:flood", at=at,
                          reason=f"matched {n} uploads within {flood_window}",
                          event="bank.quarantined",
                          data={"matches": n, "window_s": flood_window.total_seconds(),
                                "limit": flood_limit})
                quarantined.append(entry_id)
    return quarantined


def judge_match(
    s: Session, *, decision_id: str, entry_id: int | None, verdict: str, actor: str,
    at: dt.datetime, note: str = "", credential: str | None = None, delegate: bool = False,
) -> dict[str, Any]:
    """A person confirms a bank match or marks it false; a false match demotes its entry.
    Both are audited with the acting person and the credential they acted through (an API
    key, a token, an operator account), so the chain says which door a demotion came in by."""
    door = {} if credential is None else {"credential": credential, "delegate": delegate}
    if verdict not in ("confirmed", "false"):
        raise BadBankEntry(f"a match is 'confirmed' or 'false', not {verdict!r}")
    q = select(BankMatch).where(BankMatch.decision_id == decision_id)
    if entry_id is not None:
        q = q.where(BankMatch.entry_id == entry_id)
    rows = s.execute(q.order_by(BankMatch.id)).scalars().all()
    if not rows:
        raise BankEntryNotFound(f"decision {decision_id} matched no bank entry"
                                + (f" {entry_id}" if entry_id is not None else ""))
    out: dict[str, Any] = {"decision_id": decision_id, "verdict": verdict, "entries": []}
    for m in rows:
        m.verdict, m.judged_by = verdict, actor[:128]
        s.flush()
        audit.append(s, at=at, actor=actor, event=f"bank.match_{verdict}",
                     subject_type="bank_entry", subject_id=str(m.entry_id),
                     data={"decision_id": decision_id, "distance": m.distance,
                           "note": note[:500], **door})
        entry = s.get(BankEntry, m.entry_id)
        assert entry is not None
        if verdict == "false" and entry.state == "active":
            set_state(s, m.entry_id, "demoted", actor=actor, at=at,
                      reason=note or f"marked a false match on decision {decision_id}",
                      event="bank.demoted", data={"decision_id": decision_id, **door})
        out["entries"].append(entry_dict(entry))
    return out


# ---- what verdicts feed in ----------------------------------------------------------------
def clear_content(
    s: Session, item: ReviewItem, *, verdict_id: int, verdict: str, actor: str, at: dt.datetime,
) -> list[int]:
    """A person found this content benign: remember it, so it is not flagged again.  The exact
    bytes are cleared for everyone (as before PDQ); the PDQ hash, which also clears edited
    copies, is scoped to the account whose upload the person looked at (the pipeline's
    settings may apply such clearances to every account)."""
    added = []
    common = {"bank": "cleared_benign", "source": f"verdict:{verdict_id}", "actor": actor,
              "at": at, "reason": f"item {item.id}: {verdict}", "origin_item_id": item.id}
    sha = add(s, kind="sha256", value=item.content_sha256, **common)  # type: ignore[arg-type]
    if sha is not None:
        added.append(sha)
    content = s.get(Content, item.content_sha256)
    if content is not None and content.pdq is not None:
        pdq = add(s, kind="pdq", value=content.pdq, quality=content.pdq_quality,
                  scope_account=item.account_id, **common)  # type: ignore[arg-type]
        if pdq is not None:
            added.append(pdq)
    return added


def _hamming(a: str, b: str) -> int:
    return (int(a, 16) ^ int(b, 16)).bit_count()


def overrule_clearances(
    s: Session, item: ReviewItem, *, actor: str, at: dt.datetime,
    threshold: int = PDQ_THRESHOLD,
) -> list[int]:
    """A person found this content violating: a clearance that routed it, or that covers it
    (the same bytes, or a PDQ within the threshold, applying to this account), no longer
    stands.  Each is demoted with an audit event; returns their ids."""
    ids: set[int] = set()
    decision = s.get(Decision, item.decision_id)
    bank = ((decision.reasons or {}).get("bank") if decision is not None else None) or {}
    if bank.get("bank") == "cleared_benign" and bank.get("entry_id") is not None:
        ids.add(int(bank["entry_id"]))
    scope = BankEntry.scope_account.in_(["", item.account_id])
    ids.update(s.execute(select(BankEntry.id).where(
        BankEntry.bank == "cleared_benign", BankEntry.kind == "sha256",
        BankEntry.value == item.content_sha256, BankEntry.state == "active", scope)).scalars())
    content = s.get(Content, item.content_sha256)
    if content is not None and content.pdq is not None:
        # the account's and the global PDQ clearances: few next to a violating list
        for eid, value in s.execute(select(BankEntry.id, BankEntry.value).where(
                BankEntry.bank == "cleared_benign", BankEntry.kind == "pdq",
                BankEntry.state == "active", scope)):
            if _hamming(value, content.pdq) <= threshold:
                ids.add(eid)
    demoted = []
    for eid in sorted(ids):
        e = s.get(BankEntry, eid)
        if e is not None and e.state == "active":
            set_state(s, eid, "demoted", actor=actor, at=at,
                      reason=f"a violating verdict on item {item.id} overrides the clearance",
                      event="bank.demoted", data={"item_id": item.id})
            demoted.append(eid)
    return demoted


# ---- clusters: near-duplicates waiting in one queue --------------------------------------
def cluster(
    s: Session, item: ReviewItem, *, threshold: int = PDQ_THRESHOLD,
    quality_floor: int = PDQ_QUALITY_FLOOR,
) -> list[str]:
    """The contents of the open items in `item`'s queue whose PDQ hash is within `threshold`
    bits of its own (its own content first).  Refused for an item whose content has no PDQ
    hash of at least `quality_floor`: a flat image is like every other flat image."""
    own = s.get(Content, item.content_sha256)
    if own is None or own.pdq is None or (own.pdq_quality or 0) < quality_floor:
        raise NoUsablePdq(f"review item {item.id} has no usable PDQ hash (quality below "
                          f"{quality_floor}); decide it by its sha256")
    out, mine = [own.sha256], own.pdq
    rows = s.execute(
        select(Content.sha256, Content.pdq).distinct()
        .join(ReviewItem, ReviewItem.content_sha256 == Content.sha256)
        .where(ReviewItem.queue == item.queue, ReviewItem.status.in_(OPEN_ITEM_STATUSES),
               Content.pdq.is_not(None), Content.pdq_quality >= quality_floor,
               Content.sha256 != own.sha256)
    ).all()
    out += sorted(sha for sha, pdq in rows if pdq and _hamming(pdq, mine) <= threshold)
    return out


def cluster_sizes(
    s: Session, item_ids: Sequence[int], *, threshold: int = PDQ_THRESHOLD,
    quality_floor: int = PDQ_QUALITY_FLOOR,
) -> dict[int, int]:
    """How many open items of its queue (itself included) each item's cluster holds; 1 for an
    item without a usable PDQ hash."""
    out: dict[int, int] = {}
    for item_id in item_ids:
        item = s.get(ReviewItem, item_id)
        if item is None:
            continue
        try:
            shas = cluster(s, item, threshold=threshold, quality_floor=quality_floor)
        except NoUsablePdq:
            out[item_id] = 1
            continue
        out[item_id] = int(s.execute(select(func.count()).select_from(ReviewItem).where(
            ReviewItem.queue == item.queue, ReviewItem.status.in_(OPEN_ITEM_STATUSES),
            ReviewItem.content_sha256.in_(shas))).scalar() or 1)
    return out


def cluster_items(s: Session, item_id: int, *, threshold: int = PDQ_THRESHOLD,
                  quality_floor: int = PDQ_QUALITY_FLOOR) -> dict[str, Any]:
    """An item's cluster: the open items of its queue showing a near-duplicate (PDQ); the item
    alone (`hashed` false) when its content has no usable PDQ hash."""
    item = s.get(ReviewItem, item_id)
    if item is None:
        raise NotFound(f"no review item {item_id}")
    try:
        shas = cluster(s, item, threshold=threshold, quality_floor=quality_floor)
    except NoUsablePdq:
        return {"item_id": item_id, "queue": item.queue, "size": 1, "items": [item_id],
                "hashed": False}
    ids = s.execute(select(ReviewItem.id).where(
        ReviewItem.queue == item.queue, ReviewItem.status.in_(OPEN_ITEM_STATUSES),
        ReviewItem.content_sha256.in_(shas)).order_by(ReviewItem.id)).scalars().all()
    return {"item_id": item_id, "queue": item.queue, "size": len(ids), "items": list(ids),
            "hashed": True}
