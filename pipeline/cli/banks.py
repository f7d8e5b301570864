"""`lookfirst banks ...`: hash lists (sha256 and PDQ) that route content before its scores
matter: import, list, export, remove, reinstate, and a person's word on a match (confirm, or
mark it false, which demotes the entry).  Every change is audited with who made it."""

from __future__ import annotations

import datetime as dt
import sys
from pathlib import Path
from typing import Annotated

import typer

from pipeline.auth import operator
from pipeline.cli._common import Exit, JsonOpt, emit, group, guarded, runtime
from pipeline.errors import PipelineError

app = group("banks", "Hash banks: violating and cleared_benign (sha256 and PDQ).")

BankOpt = Annotated[str, typer.Option(help="violating | cleared_benign")]


@app.command("import")
@guarded
def banks_import(
    path: Annotated[Path, typer.Argument(help="The list: one hash a line, or an HMA export.")],
    bank: BankOpt = "violating",
    fmt: Annotated[str, typer.Option("--format", help="sha256 | pdq | hma")] = "sha256",
    source: Annotated[str | None, typer.Option(help="Where the list came from.")] = None,
    scope_account: Annotated[str | None, typer.Option(
        help="Apply the entries to this one account only (default: every account).")] = None,
    expires_days: Annotated[int | None, typer.Option(
        min=1, help="The entries stop matching after this many days.")] = None,
    as_json: JsonOpt = False,
) -> int:
    """Import a hash list (sha256, PDQ with optional ',quality', or HMA / ThreatExchange
    exports); a match routes content before its scores matter."""
    from pipeline.hashing.formats import read_bank_file
    from review import NewBankEntry, import_bank_entries

    if not path.is_file():
        raise PipelineError(f"no such file: {path}")
    rt = runtime()
    now = rt.review.clock()
    skipped: dict[str, int] = {}
    entries: list[NewBankEntry] = []
    with open(path, encoding="utf-8") as fh:
        for r in read_bank_file(fh, fmt):
            why = ("unsupported_type" if not r.supported else "withdrawn" if r.withdrawn
                   else "marked_false_positive" if r.category == "negative" else None)
            if why is not None:  # never import what the source itself does not stand by
                skipped[why] = skipped.get(why, 0) + 1
                continue
            entries.append(NewBankEntry(kind=r.signal_type, value=r.value, quality=r.quality,
                                        reason=r.note or (r.source_id or "")))
    with rt.db.transaction() as s:
        added, present = import_bank_entries(
            s, entries, bank=bank, source=source or path.name, actor=operator.current_actor(),
            at=now,
            scope_account=scope_account,
            expires_at=now + dt.timedelta(days=expires_days) if expires_days else None)
    emit({"bank": bank, "format": fmt, "added": added, "already_present": present,
          "skipped": skipped}, as_json)
    return Exit.OK


@app.command("list")
@guarded
def banks_list(
    bank: Annotated[str | None, typer.Option()] = None,
    kind: Annotated[str | None, typer.Option(help="sha256 | pdq")] = None,
    state: Annotated[str | None, typer.Option(
        help="active | quarantined | demoted | removed")] = None,
    limit: Annotated[int, typer.Option(min=1, max=100_000)] = 200,
    as_json: JsonOpt = False,
) -> int:
    """The newest bank entries, with their provenance, scope and state."""
    from review import list_bank_entries

    rt = runtime()
    with rt.db.transaction() as s:
        emit(list_bank_entries(s, bank=bank, kind=kind, state=state, limit=limit), as_json)
    return Exit.OK


@app.command("export")
@guarded
def banks_export(
    out: Annotated[str, typer.Argument(help="The file to write ('-': standard output).")],
    bank: BankOpt = "violating",
    fmt: Annotated[str, typer.Option("--format", help="sha256 | pdq | hma")] = "hma",
    as_json: JsonOpt = False,
) -> int:
    """Write a bank's active, global entries in a format `banks import` (and HMA) reads."""
    from pipeline.hashing.formats import BankRecord, write_bank_file
    from review import list_bank_entries

    rt = runtime()
    with rt.db.transaction() as s:
        rows = list_bank_entries(s, bank=bank, state="active", limit=None)
    records = [BankRecord(signal_type=e["kind"], value=e["value"], quality=e["quality"])
               for e in reversed(rows) if e["scope_account"] is None
               and (fmt == "hma" or e["kind"] == fmt)]
    if out == "-":
        written = write_bank_file(records, fmt, sys.stdout)
    else:
        with open(out, "w", encoding="utf-8") as fh:
            written = write_bank_file(records, fmt, fh)
    if out != "-":
        emit({"bank": bank, "format": fmt, "written": written, "path": out}, as_json)
    return Exit.OK


@app.command("remove")
@guarded
def banks_remove(
    entry_id: Annotated[int, typer.Argument(help="The entry's id (`banks list`).")],
    reason: Annotated[str, typer.Option(help="Why (recorded in the audit log).")],
    as_json: JsonOpt = False,
) -> int:
    """Stop an entry matching (audited; the row stays, for its matches' history)."""
    from review import remove_bank_entry

    rt = runtime()
    with rt.db.transaction() as s:
        emit(remove_bank_entry(s, entry_id, actor=operator.current_actor(),
                               at=rt.review.clock(),
                               reason=reason), as_json)
    return Exit.OK


@app.command("reinstate")
@guarded
def banks_reinstate(
    entry_id: Annotated[int, typer.Argument(help="A quarantined or demoted entry's id.")],
    reason: Annotated[str, typer.Option(help="Why (recorded in the audit log).")],
    as_json: JsonOpt = False,
) -> int:
    """Let a quarantined (or demoted) entry match again, after a person looked (audited)."""
    from review import set_bank_entry_state

    rt = runtime()
    with rt.db.transaction() as s:
        emit(set_bank_entry_state(s, entry_id, "active", actor=operator.current_actor(),
                                  at=rt.review.clock(),
                                  reason=reason, event="bank.reinstated"), as_json)
    return Exit.OK


def _judge(decision_id: str, entry: int | None, verdict: str, reviewer: str, note: str,
           as_json: bool) -> int:
    from review import judge_bank_match

    op = operator.current()  # acts for --reviewer, as a delegate, through its own account
    rt = runtime()
    with rt.db.transaction() as s:
        emit(judge_bank_match(s, decision_id=decision_id, entry_id=entry, verdict=verdict,
                              actor=reviewer, at=rt.review.clock(), note=note,
                              credential=op.credential, delegate=True), as_json)
    return Exit.OK


ReviewerOpt = Annotated[str, typer.Option(help="The reviewer who looked (audited).")]
EntryOpt = Annotated[int | None, typer.Option(help="Only this entry (default: every one).")]


@app.command("confirm")
@guarded
def banks_confirm(
    decision_id: Annotated[str, typer.Argument(help="The decision whose bank match is right.")],
    reviewer: ReviewerOpt, entry: EntryOpt = None, note: str = "", as_json: JsonOpt = False,
) -> int:
    """A reviewer confirms that an upload's bank match is right (audited)."""
    return _judge(decision_id, entry, "confirmed", reviewer, note, as_json)


@app.command("deconfirm")
@guarded
def banks_deconfirm(
    decision_id: Annotated[str, typer.Argument(help="The decision whose bank match is false.")],
    reviewer: ReviewerOpt, entry: EntryOpt = None, note: str = "", as_json: JsonOpt = False,
) -> int:
    """A reviewer marks an upload's bank match false: the entry is demoted (audited)."""
    return _judge(decision_id, entry, "false", reviewer, note, as_json)


@app.command("backfill")
@guarded
def banks_backfill(
    limit: Annotated[int | None, typer.Option(min=1, help="At most this many contents.")] = None,
    as_json: JsonOpt = False,
) -> int:
    """Hash (PDQ) the stored contents that predate PDQ hashing, from their blobs, so that a
    verdict on their items also clears their near-duplicates."""
    from pipeline.blobs import BlobError
    from pipeline.ingest import ingest_bytes, with_pdq
    from review import content_without_pdq, set_content_pdq

    rt = runtime()
    done = missing = refused = 0
    skip: set[str] = set()
    while limit is None or done + missing + refused < limit:
        with rt.db.transaction() as s:
            todo = [x for x in content_without_pdq(s, limit=500 + len(skip)) if x not in skip]
        if limit is not None:
            todo = todo[: limit - done - missing - refused]
        if not todo:
            break
        for sha in todo:
            try:
                data = rt.blobs.get(sha)
            except BlobError:  # gone, or no longer its sha256
                missing += 1
                skip.add(sha)
                continue
            try:
                image = with_pdq(ingest_bytes(data, max_bytes=max(len(data), 1),
                                              max_pixels=rt.settings.max_pixels))
            except PipelineError:
                refused += 1
                skip.add(sha)
                continue
            assert image.pdq is not None
            with rt.db.transaction() as s:
                set_content_pdq(s, sha, image.pdq.original.hex, image.pdq.quality)
            done += 1
    emit({"hashed": done, "blob_missing_or_corrupt": missing, "undecodable": refused}, as_json)
    return Exit.OK
