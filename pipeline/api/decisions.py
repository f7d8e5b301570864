"""Decisions: the statement of reasons, and the user's reply to a notice."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Path

from pipeline.api.deps import AppealKey, DecisionReader, SessionDep, StateDep
from pipeline.api.errors import AUTH_ERRORS, responses
from pipeline.api.schemas import ContextReplyCreate, ContextReplyPublic, StatementOfReasons
from pipeline.policy import Context

router = APIRouter(prefix="/v1/decisions", tags=["decisions"])

DecisionId = Annotated[str, Path(min_length=1, max_length=64)]


@router.get(
    "/{decision_id}",
    response_model=StatementOfReasons,
    summary="The decision and its statement of reasons",
    responses=responses(*AUTH_ERRORS, 404),
)
def get_decision(
    decision_id: DecisionId, _key: DecisionReader, state: StateDep, s: SessionDep
) -> dict[str, Any]:
    """What was detected, by which model and policy version, which rules fired at which
    thresholds, what context moved them, who reviewed, what was decided, and how to appeal."""
    return state.rt.review.statement_of_reasons(s, decision_id)


@router.post(
    "/{decision_id}/context",
    status_code=201,
    response_model=ContextReplyPublic,
    summary="The user's reply to a notice or to a request for context",
    responses=responses(*AUTH_ERRORS, 400, 404, 409),
)
def provide_context(
    decision_id: DecisionId,
    body: ContextReplyCreate,
    _key: AppealKey,
    state: StateDep,
    s: SessionDep,
) -> ContextReplyPublic:
    """The reply re-enters review before any pending action runs."""
    context = Context.parse(body.context).model_dump(mode="json", exclude_unset=True)
    item_id = state.rt.review.provide_context(
        s, decision_id=decision_id, statement=body.statement, context=context
    )
    return ContextReplyPublic(decision_id=decision_id, item_id=item_id)
