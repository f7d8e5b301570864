"""Hash-bank matches over HTTP: a reviewer confirms an upload's bank match or marks it false
(which demotes the entry, so it stops matching); both audited with the reviewer acting.  The
same service as `lookfirst banks confirm | deconfirm`."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Path
from pydantic import Field, StringConstraints

from pipeline.api.deps import (
    ReviewPrincipal,
    SessionDep,
    StateDep,
    XReviewer,
    acting,
    reviewer_of,
)
from pipeline.api.errors import AUTH_ERRORS, responses
from pipeline.api.review import ItemPath
from pipeline.api.schemas import ReviewerId, VerdictCreate, _Public, _Request
from review import bank_cluster, judge_bank_match

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
    body: BankMatchJudgement, key: ReviewPrincipal, state: StateDep, s: SessionDep,
    x_reviewer: XReviewer = None,
) -> dict[str, Any]:
    who = acting(key, x_reviewer, body.reviewer)
    return judge_bank_match(s, decision_id=decision_id, entry_id=body.entry_id,
                            verdict=body.verdict, actor=reviewer_of(who),
                            at=state.rt.review.clock(), note=body.note,
                            credential=who.credential, delegate=who.delegate)


class ClusterPublic(_Public):
    item_id: int
    queue: str
    #: open items of the queue showing a near-duplicate (the item itself included)
    size: int
    items: list[int]
    #: false: the item's content has no usable PDQ hash (a flat image), so it is alone
    hashed: bool


@router.get(
    "/items/{item_id}/cluster",
    response_model=ClusterPublic,
    summary="The item's cluster: open near-duplicates (PDQ) in its queue",
    responses=responses(*AUTH_ERRORS, 404),
)
def show_cluster(item_id: ItemPath, key: ReviewPrincipal, state: StateDep,
                 s: SessionDep, x_reviewer: XReviewer = None) -> dict[str, Any]:
    acting(key, x_reviewer)  # a reviewer reads it: their own credential, or a delegate's
    cfg = state.rt.review.config
    return bank_cluster(s, item_id, threshold=cfg.pdq_threshold,
                        quality_floor=cfg.pdq_quality_floor)


class ClusterDecided(_Public):
    anchor: int
    #: one per item decided: its status and this reviewer's verdict id
    items: list[dict[str, Any]]


@router.post(
    "/items/{item_id}/cluster-verdict",
    response_model=ClusterDecided,
    summary="Decide the item and its cluster with one verdict",
    responses=responses(*AUTH_ERRORS, 400, 404, 409, 422),
)
def decide_cluster(
    item_id: ItemPath, body: VerdictCreate, key: ReviewPrincipal, state: StateDep, s: SessionDep,
    x_reviewer: XReviewer = None,
) -> dict[str, Any]:
    """One act over the item (whose lease the reviewer holds) and every open near-duplicate in
    its queue the reviewer may claim: a verdict and an audit event per item; an item needing
    two people gets this reviewer's one verdict and waits for a second."""
    who = acting(key, x_reviewer, body.reviewer)
    results = state.rt.review.decide_bulk(s, item_id=item_id, reviewer_id=reviewer_of(who),
                                          verdict=body.verdict, categories=body.categories,
                                          note=body.note, group="pdq",
                                          credential=who.credential, delegate=who.delegate)
    return {"anchor": item_id, "items": [
        {"item_id": r.item_id, "status": str(r.status), "verdict_id": r.verdict_id}
        for r in results]}
