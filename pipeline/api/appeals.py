"""Appeals: the user asks for another look, in their own words and with their own context."""

from __future__ import annotations

from fastapi import APIRouter

from pipeline.api.deps import AppealKey, SessionDep, StateDep
from pipeline.api.errors import AUTH_ERRORS, responses
from pipeline.api.schemas import AppealCreate, AppealPublic
from pipeline.policy import Context
from review import NotFound, get_appeal, get_decision

router = APIRouter(prefix="/v1/appeals", tags=["appeals"])


@router.post(
    "",
    status_code=201,
    response_model=AppealPublic,
    summary="Appeal a decision",
    responses=responses(*AUTH_ERRORS, 400, 404, 409),
)
def create_appeal(
    body: AppealCreate, _key: AppealKey, state: StateDep, s: SessionDep
) -> AppealPublic:
    """The appeal enters the appeals queue, for a reviewer who has not decided this upload
    before.  Refused when nothing was done (appeal.not_allowed), after the appeal window, or
    while an appeal of the same decision is open."""
    context = Context.parse(body.context).model_dump(mode="json", exclude_unset=True)
    if body.account_id is not None:
        decision = get_decision(s, decision_id=body.decision_id)
        if decision is None or decision.account_id != body.account_id:
            # the same answer as for an unknown decision: ids of others are not confirmed
            raise NotFound(f"no decision {body.decision_id}")
    appeal_id = state.rt.review.appeal(
        s, decision_id=body.decision_id, statement=body.statement, context=context
    )
    appeal = get_appeal(s, appeal_id=appeal_id)
    assert appeal is not None
    return AppealPublic(
        appeal_id=appeal.id, decision_id=appeal.decision_id, item_id=appeal.item_id,
        status=appeal.status,  # type: ignore[arg-type]
    )
