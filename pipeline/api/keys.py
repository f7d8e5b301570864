"""API keys over HTTP, for administrators (`lookfirst keys ...` does the same on the CLI)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path

from pipeline.api.deps import AdminKey, SessionDep, StateDep
from pipeline.api.errors import AUTH_ERRORS, responses
from pipeline.api.schemas import KeyCreate, KeyCreatedPublic, KeyPublic
from pipeline.apikeys import create_key, list_keys, revoke_key
from review import NotFound, get_api_key

router = APIRouter(prefix="/v1/keys", tags=["keys"])


@router.get("", response_model=list[KeyPublic], summary="List API keys (never the keys)",
            responses=responses(*AUTH_ERRORS))
def get_keys(_key: AdminKey, s: SessionDep) -> list[KeyPublic]:
    return [KeyPublic.model_validate(k.as_dict()) for k in list_keys(s)]


@router.post("", status_code=201, response_model=KeyCreatedPublic,
             summary="Create an API key; the key is in this response only",
             responses=responses(*AUTH_ERRORS, 403))
def post_key(body: KeyCreate, key: AdminKey, state: StateDep, s: SessionDep) -> KeyCreatedPublic:
    info, raw = create_key(s, name=body.name, scopes=[x.value for x in body.scopes],
                           rate_per_minute=body.rate_per_minute, now=state.now(),
                           reviewer=body.reviewer,
                           allow_delegate=state.settings.delegate_keys_allowed,
                           by=key.principal())
    return KeyCreatedPublic.model_validate({**info.as_dict(), "key": raw})


@router.post("/{key_id}/revoke", response_model=KeyPublic, summary="Revoke an API key",
             responses=responses(*AUTH_ERRORS, 404))
def revoke(
    key_id: Annotated[int, Path(ge=1, le=2**31 - 1)], key: AdminKey, state: StateDep,
    s: SessionDep,
) -> KeyPublic:
    if get_api_key(s, key_id=key_id) is None:
        raise NotFound(f"no API key {key_id}")
    info = revoke_key(s, key_id=key_id, now=state.now(), by=key.principal())
    state.verifier.forget_all()  # effective at once in this process, within the cache TTL in others
    return KeyPublic.model_validate(info.as_dict())
