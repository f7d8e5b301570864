"""`lookfirst audit verify`: recompute the hash chains of the audit log."""

from __future__ import annotations

from pipeline.cli._common import Exit, JsonOpt, emit, group, guarded, out, runtime
from review import AuditChainBroken

app = group("audit", "The hash-chained audit log.")


@app.command("verify")
@guarded
def audit_verify(as_json: JsonOpt = False) -> int:
    """Recompute the hash chains; exit 1 at the first break."""
    from review import verify_audit_log

    rt = runtime()
    with rt.db.transaction() as s:
        report = verify_audit_log(s)
    d = {"ok": report.ok, "events": report.events, "chains": report.chains,
         "problem": report.problem, "at_chain": report.at_chain, "at_seq": report.at_seq}
    if not report.ok:
        if as_json:
            # the report and the error in one object: scripts read where the chain broke
            emit({**d, "error": {"code": AuditChainBroken.code, "detail": report.problem}}, True)
            return Exit.CHECK_FAILED
        raise AuditChainBroken(
            f"{report.problem} (chain {report.at_chain}, at event {report.at_seq})")
    if as_json:
        emit(d, True)
    else:
        out.print(f"[green]audit chain verifies[/green]: {report.events} events in "
                  f"{report.chains} chains")
    return Exit.OK
