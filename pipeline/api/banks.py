"""Hash-bank matches over HTTP: a reviewer confirms an upload's bank match or marks it false
(which demotes the entry, so it stops matching); both audited with the reviewer acting.  The
same service as `lookfirst banks confirm | deconfirm`."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Path
from pydantic import Field, StringConstraints

from pipeline.api.deps import ReviewKey, SessionDep, StateDep, XReviewer, reviewer
from pipeline.api.errors import AUTH_ERRORS, responses
from pipeline.api.schemas import ReviewerId, _Public, _Request
from review import judge_bank_match

router = APIRouter(prefix="/v1/review", tags=["review"])


class BankMatchJudgement(_Request):
    #: "confirmed": the match is right; "false": it is not (the entry is demoted)
    verdict: Literal["confirmed", "false"]
    #: only this entry of the decision's matches (default: every one)
    entry_id: Annotated[int, Field(ge=1, le=2**31 - 1)] | None = None
    note: Annotated[str, StringConstraints(max_length=500)] = ""
    reviewer: ReviewerId | None = None


class BankMatchJudged(_Public):
    decision_id: str
    verdict: str
    #: the entries as they now stand (state "demoted" after a false match)
    entries: list[dict[str, Any]]


@router.post(
    "/bank-matches/{decision_id}",
    response_model=BankMatchJudged,
    summary="Confirm a hash-bank match, or mark it false (demotes the entry)",
    responses=responses(*AUTH_ERRORS, 400, 404, 422),
)
def judge(
    decision_id: Annotated[str, Path(min_length=1, max_length=36)],
    body: BankMatchJudgement, _key: ReviewKey, state: StateDep, s: SessionDep,
    x_reviewer: XReviewer = None,
) -> dict[str, Any]:
    who = reviewer(x_reviewer, body.reviewer)
    return judge_bank_match(s, decision_id=decision_id, entry_id=body.entry_id,
                            verdict=body.verdict, actor=who, at=state.rt.review.clock(),
                            note=body.note)
