"""The review queue over HTTP, for reviewer tools and UIs: the same service and rules as the
CLI (`lookfirst review ...`).  The reviewer acting comes from the credential: a reviewer's own
key (`keys create --reviewer`) or OIDC token acts as that reviewer; a `delegate` key (a console
behind the platform's login) names the reviewer it acts for (X-Reviewer or the body's
`reviewer`).  Each verdict records the credential, and one credential never supplies two
verdicts of one item.  Entitlement to queues is the service's."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Path, Query

from pipeline.api.deps import (
    ReviewPrincipal,
    SessionDep,
    StateDep,
    XReviewer,
    acting,
    reviewer_of,
)
from pipeline.api.errors import AUTH_ERRORS, responses
from pipeline.api.schemas import (
    ClaimBatchCreate,
    ClaimBatchPublic,
    ClaimCreate,
    ItemStatusName,
    QueueName,
    QueueStatsPublic,
    ReleaseCreate,
    ReleasePublic,
    ReviewItemPublic,
    VerdictCreate,
    VerdictResultPublic,
)
from review import OPEN_ITEM_STATUSES

router = APIRouter(prefix="/v1/review", tags=["review"])

ItemPath = Annotated[int, Path(ge=1, le=2**31 - 1)]


@router.get(
    "/items",
    response_model=list[ReviewItemPublic],
    summary="The queue as a reviewer sees it, most urgent first",
    responses=responses(*AUTH_ERRORS, 409),
)
def list_items(
    key: ReviewPrincipal,
    state: StateDep,
    s: SessionDep,
    x_reviewer: XReviewer = None,
    queue: Annotated[QueueName | None, Query()] = None,
    status: Annotated[list[ItemStatusName] | None, Query()] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
) -> list[dict[str, Any]]:
    """Only the queues the reviewer is entitled to; open items unless `status` says otherwise;
    other reviewers' verdicts stay hidden while an item is open."""
    who = reviewer_of(acting(key, x_reviewer))
    statuses = list(status) if status else sorted(OPEN_ITEM_STATUSES)
    items = state.rt.review.list_items(s, viewer=who, queue=queue, statuses=statuses,
                                       limit=limit)
    return [i.as_dict() for i in items]


@router.get(
    "/items/{item_id}",
    response_model=ReviewItemPublic,
    summary="One review item",
    responses=responses(*AUTH_ERRORS, 404),
)
def show_item(
    item_id: ItemPath, key: ReviewPrincipal, state: StateDep, s: SessionDep,
    x_reviewer: XReviewer = None,
) -> dict[str, Any]:
    return state.rt.review.show(s, item_id, viewer=reviewer_of(acting(key, x_reviewer))).as_dict()


@router.post(
    "/claim",
    response_model=ReviewItemPublic,
    summary="Lease the most urgent item the reviewer may take",
    responses=responses(*AUTH_ERRORS, 404, 409),
)
def claim(
    key: ReviewPrincipal, state: StateDep, x_reviewer: XReviewer = None,
    body: ClaimCreate | None = None,
) -> dict[str, Any]:
    """Priority, then deadline, then age.  Appeals and escalations go only to someone who did
    not decide the upload before; severe queues count against the reviewer's exposure cap."""
    body = body or ClaimCreate()
    who = reviewer_of(acting(key, x_reviewer, body.reviewer))
    # the claim desk owns its transaction: on PostgreSQL the claim is one statement
    view = state.rt.desk.claim(reviewer_id=who, queue=body.queue, item_id=body.item_id)
    return view.as_dict()


@router.post(
    "/claims",
    response_model=ClaimBatchPublic,
    summary="Lease up to `count` items at once",
    responses=responses(*AUTH_ERRORS, 404, 409),
)
def claim_batch(
    body: ClaimBatchCreate, key: ReviewPrincipal, state: StateDep, x_reviewer: XReviewer = None,
) -> dict[str, Any]:
    """For a reviewer's tool that prefetches its next items: the most urgent `count` items the
    reviewer may take, in claim order, in one transaction.  Each item has its own lease (renew
    or release it like any other) and its own audit event; exposure caps still count per item.
    404 `review.queue_empty` when there is none."""
    who = reviewer_of(acting(key, x_reviewer, body.reviewer))
    views = state.rt.desk.claim_many(reviewer_id=who, queue=body.queue, limit=body.count)
    return {"items": [v.as_dict() for v in views]}


@router.post(
    "/items/{item_id}/verdict",
    response_model=VerdictResultPublic,
    summary="Record the reviewer's verdict",
    responses=responses(*AUTH_ERRORS, 400, 404, 409),
)
def verdict(
    item_id: ItemPath, body: VerdictCreate, key: ReviewPrincipal, state: StateDep, s: SessionDep,
    x_reviewer: XReviewer = None,
) -> VerdictResultPublic:
    """The policy turns a verdict into proposed actions; irreversible ones wait for a second
    reviewer who agrees."""
    who = acting(key, x_reviewer, body.reviewer)
    res = state.rt.review.decide(s, item_id=item_id, reviewer_id=reviewer_of(who),
                                 verdict=body.verdict, categories=body.categories,
                                 note=body.note, credential=who.credential,
                                 delegate=who.delegate)
    return VerdictResultPublic.model_validate({
        "item_id": res.item_id, "status": str(res.status), "verdict_id": res.verdict_id,
        "actions": res.actions, "escalated_to": res.escalated_to,
    })


@router.post(
    "/items/{item_id}/release",
    response_model=ReleasePublic,
    summary="Give a claimed item back to its queue",
    responses=responses(*AUTH_ERRORS, 404, 409),
)
def release(
    item_id: ItemPath, key: ReviewPrincipal, state: StateDep, s: SessionDep,
    x_reviewer: XReviewer = None, body: ReleaseCreate | None = None,
) -> ReleasePublic:
    who = reviewer_of(acting(key, x_reviewer, body.reviewer if body else None))
    state.rt.review.release(s, item_id=item_id, reviewer_id=who)
    return ReleasePublic(item_id=item_id, released=True)


@router.get(
    "/stats",
    response_model=list[QueueStatsPublic],
    summary="Depth, claims, oldest age and SLA breaches per queue",
    responses=responses(*AUTH_ERRORS),
)
def stats(_key: ReviewPrincipal, state: StateDep, s: SessionDep) -> list[dict[str, Any]]:
    return state.rt.review.stats(s)

