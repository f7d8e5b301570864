"""`lookfirst db upgrade`: apply the migrations."""

from __future__ import annotations

from pipeline.cli._common import Exit, JsonOpt, emit, group, guarded, runtime

app = group("db", "The database of record.")


@app.command("upgrade")
@guarded
def db_upgrade(as_json: JsonOpt = False) -> int:
    """Apply the migrations (SQLite or PostgreSQL, the same ones)."""
    from review import current_revision

    rt = runtime()  # applies them
    emit({"ok": True, "revision": current_revision(rt.db.engine), **rt.describe()}, as_json)
    return Exit.OK
