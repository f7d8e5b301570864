"""Principals: the credential ids and string forms that audit events and verdicts will carry,
and who acts when a request names a reviewer (bound credentials, delegates, neither)."""

from __future__ import annotations

import json

import pytest

from pipeline.api.errors import HTTP_STATUS
from pipeline.auth.errors import DelegateRequired, ReviewerBound, ReviewerRequired
from pipeline.auth.principal import DELEGATE, Principal, PrincipalKind, token_credential


def _key(key_id: int = 12, *scopes: str, reviewer: str | None = None) -> Principal:
    return Principal.api_key(key_id=key_id, prefix="abcdefgh", name="console",
                             scopes=scopes or ("review",), reviewer=reviewer)


def test_credential_ids_and_string_forms() -> None:
    bound = _key(12, reviewer="alice")
    assert (bound.kind, bound.credential, bound.reviewer) == (PrincipalKind.API_KEY, "key:12",
                                                              "alice")
    assert str(bound) == "alice via key:12" and bound.actor == "alice" and bound.bound
    tok = Principal.token(issuer="https://idp.example", subject="u-1", reviewer="bob",
                          scopes={"review"}, token_id="j-1")
    assert tok.credential == token_credential("https://idp.example", "u-1")
    assert tok.credential.startswith("oidc:") and len(tok.credential) == 5 + 32
    assert str(tok) == f"bob via {tok.credential}"
    ls = Principal.labelstudio(ls_user_id=42, reviewer="carol")
    assert (ls.credential, str(ls)) == ("labelstudio:42", "carol via labelstudio:42")
    sysp = Principal.system("worker")
    assert (sysp.credential, str(sysp), sysp.actor, sysp.reviewer) == (
        "system:worker", "system:worker", "system:worker", None)


def test_token_credentials_separate_issuers_and_subjects() -> None:
    ids = {token_credential(i, s) for i, s in [("https://a", "x"), ("https://b", "x"),
                                               ("https://a", "y"), ("https://a\nb", "c"),
                                               ("https://a", "b\nc")]}
    assert len(ids) == 5
    assert token_credential("https://a", "x") == token_credential("https://a", "x")


def test_audit_data_is_json_and_names_the_door() -> None:
    p = _key(7, "review", DELEGATE).acting("alice")
    data = p.audit_data()
    assert json.loads(json.dumps(data)) == data
    assert data == {"kind": "api_key", "credential": "key:7", "reviewer": "alice",
                    "delegate": True, "scopes": ["delegate", "review"],
                    "label": "console (lf_abcdefgh)"}
    tok = Principal.token(issuer="https://idp", subject="s", reviewer="bob", scopes={"review"},
                          token_id="jti-9")
    assert tok.audit_data()["token_id"] == "jti-9"
    assert "token_id" not in _key().audit_data()


# ---- who acts -----------------------------------------------------------------------------------
def test_a_bound_credential_acts_as_its_reviewer_and_names_no_one() -> None:
    alice = _key(12, reviewer="alice")
    assert alice.acting(None) is alice
    assert alice.acting("alice") is alice  # naming itself grants nothing, so it is allowed
    for named in ("bob", "Alice"):
        with pytest.raises(ReviewerBound) as info:
            alice.acting(named)
        assert info.value.code == "auth.reviewer_bound" and HTTP_STATUS[info.value.kind] == 403


def test_an_unbound_credential_without_delegate_acts_for_no_one() -> None:
    for p in (_key(3, "review"), _key(4, "admin"), _key(5, "review", "admin")):
        assert p.allows("review") and not p.allows(DELEGATE)
        for named in ("alice", None):
            with pytest.raises(DelegateRequired) as info:
                p.acting(named)
            assert info.value.code == "auth.delegate_required"


def test_a_delegate_acts_for_the_reviewer_it_names_and_says_so() -> None:
    console = _key(7, "review", DELEGATE)
    with pytest.raises(ReviewerRequired) as info:
        console.acting(None)
    assert info.value.code == "auth.reviewer_required" and HTTP_STATUS[info.value.kind] == 422
    with pytest.raises(ReviewerRequired):
        console.acting("not a reviewer id!")
    as_alice = console.acting("alice")
    assert as_alice.delegate and as_alice.reviewer == "alice" and not as_alice.bound
    assert as_alice.credential == console.credential == "key:7"
    assert str(as_alice) == "alice via key:7 (delegate)"
    assert as_alice.acting("alice") is as_alice
    with pytest.raises(ReviewerBound):
        as_alice.acting("bob")
    # two people through one console are one door: the same credential
    assert console.acting("bob").credential == as_alice.credential


def test_admin_never_implies_delegate() -> None:
    admin = _key(1, "admin")
    assert all(admin.allows(s) for s in ("classify", "review", "appeal", "admin"))
    assert not admin.allows(DELEGATE)


@pytest.mark.parametrize("kw", [
    {"credential": "key 12"},  # not a credential id
    {"credential": "KEY:12"},
    {"credential": "key:" + "x" * 121},
    {"reviewer": "two words"},
    {"reviewer": "alice", "scopes": frozenset({"review", DELEGATE})},  # bound and delegate
    {"delegate": True},  # a delegate acting for no one
    {"delegate": True, "reviewer": "alice"},  # a delegate without the scope
    {"kind": PrincipalKind.OIDC},  # a token is always someone's
    {"kind": PrincipalKind.LABELSTUDIO},
])
def test_impossible_principals_cannot_be_built(kw: dict[str, object]) -> None:
    base: dict[str, object] = dict(kind=PrincipalKind.API_KEY, credential="key:12",
                                   reviewer=None, scopes=frozenset({"review"}))
    base.update(kw)
    with pytest.raises(ValueError):
        Principal(**base)  # type: ignore[arg-type]
