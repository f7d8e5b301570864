"""`lookfirst banks ...`: hash lists that route content before its scores matter."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from pipeline.cli._common import Exit, JsonOpt, emit, group, guarded, runtime
from pipeline.errors import PipelineError

app = group("banks", "Hash banks: violating and cleared_benign.")


@app.command("import")
@guarded
def banks_import(
    path: Annotated[Path, typer.Argument(help="One sha256 per line ('#' comments allowed).")],
    bank: Annotated[str, typer.Option(help="violating | cleared_benign")] = "violating",
    source: Annotated[str | None, typer.Option(help="Where the list came from.")] = None,
    as_json: JsonOpt = False,
) -> int:
    """Import a hash list; a match routes content before its scores matter."""
    from review import import_bank_hashes

    if not path.is_file():
        raise PipelineError(f"no such file: {path}")
    rt = runtime()
    with rt.db.transaction() as s, open(path) as fh:
        added, present = import_bank_hashes(
            s, fh, bank=bank, source=source or path.name, actor="cli:banks",
            at=rt.review.clock(),
        )
    emit({"bank": bank, "added": added, "already_present": present}, as_json)
    return Exit.OK


@app.command("list")
@guarded
def banks_list(bank: Annotated[str | None, typer.Option()] = None,
               as_json: JsonOpt = False) -> int:
    """The newest bank entries."""
    from review import list_bank_entries

    rt = runtime()
    with rt.db.transaction() as s:
        emit(list_bank_entries(s, bank=bank), as_json)
    return Exit.OK
