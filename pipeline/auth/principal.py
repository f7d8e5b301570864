"""What an authenticated caller is: the credential it came through, the reviewer it is bound to
(or acts for, as a delegate), its scopes, and the forms that go into audit events and verdicts.

The two-person rule compares two things, and both come from here: `reviewer` (two people) and
`credential` (two doors).  A credential id is stable for the life of the credential and names
nothing secret: `key:<id>` for an API key, `oidc:<hash of issuer and subject>` for tokens,
`os:<user>@<host>` for an operator at the CLI, `labelstudio:<user id>`, `system:<name>`.
"""

from __future__ import annotations

import dataclasses
import enum
import hashlib
import json
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Final

from pipeline.auth.errors import DelegateRequired, ReviewerBound, ReviewerRequired

__all__ = [
    "ADMIN",
    "DELEGATE",
    "REVIEWER_ID",
    "Principal",
    "PrincipalKind",
    "token_credential",
]

#: the scope that lets an unbound credential act for a reviewer it names; never implied by admin
DELEGATE: Final = "delegate"
#: the scope that implies classify, review and appeal (not delegate)
ADMIN: Final = "admin"
#: a reviewer id as the API accepts it (pipeline.api.schemas.ReviewerId) and the schema stores it
REVIEWER_ID: Final = re.compile(r"[A-Za-z0-9._:@-]{1,64}")
#: what a credential id may look like: a kind, a colon, printable ASCII; it fits String(128)
_CREDENTIAL: Final = re.compile(r"[a-z]+:[\x21-\x7e]{1,120}")
_LABEL_MAX: Final = 200


class PrincipalKind(enum.StrEnum):
    API_KEY = "api_key"  # a lookfirst API key (`lf_…`), bound to a reviewer or not
    OIDC = "oidc"  # a bearer token from the platform's identity provider, bound to a reviewer
    OPERATOR = "operator"  # the CLI: someone with database access, known by OS user and host
    LABELSTUDIO = "labelstudio"  # a Label Studio user, authenticated by Label Studio, mapped
    SYSTEM = "system"  # lookfirst itself: the worker, the executor, automated holds


def token_credential(issuer: str, subject: str) -> str:
    """The credential id of an identity-provider account: the same for every token it gets.

    Not the token's `jti`: a console holding one client's credentials could fetch a second
    token and pass for a second door.  Hashed, because a subject may be an e-mail address and
    this id is written into every audit event the principal causes."""
    # JSON, not a separator: no pair of strings can pass for another pair
    digest = hashlib.sha256(json.dumps([issuer, subject]).encode()).hexdigest()
    return f"oidc:{digest[:32]}"


@dataclass(frozen=True, slots=True)
class Principal:
    """An authenticated caller.  Build one with the class methods, or `operator.current()`."""

    kind: PrincipalKind
    #: stable, non-secret id of the credential (see the module docstring); compared by the
    #: two-person rule, so two verdicts through one credential never make two people
    credential: str
    #: the reviewer this credential is bound to, or acts for when `delegate` is true
    reviewer: str | None
    scopes: frozenset[str]
    #: acting for `reviewer` through a credential that may act for many (a console, the CLI)
    delegate: bool = False
    #: for people reading the audit log (key name and prefix, issuer, OS user@host); never
    #: compared, never secret
    label: str = ""
    #: the one token this request carried (its `jti`), when the identity provider sets one
    token_id: str | None = None

    def __post_init__(self) -> None:
        if not _CREDENTIAL.fullmatch(self.credential):
            raise ValueError(f"not a credential id: {self.credential!r}")
        if self.reviewer is not None and not REVIEWER_ID.fullmatch(self.reviewer):
            raise ValueError("not a reviewer id")
        if self.delegate and (self.reviewer is None or DELEGATE not in self.scopes):
            raise ValueError("a delegate acts for a named reviewer, with the delegate scope")
        if DELEGATE in self.scopes and self.reviewer is not None and not self.delegate:
            # a credential is either one reviewer's own or a delegate's, never both: otherwise
            # "bound" would not mean "cannot name anyone else"
            raise ValueError("a credential bound to a reviewer cannot have the delegate scope")
        if self.kind in (PrincipalKind.OIDC, PrincipalKind.LABELSTUDIO) and self.reviewer is None:
            raise ValueError(f"a {self.kind} principal is always a reviewer")
        if self.token_id is not None and len(self.token_id) > 128:
            raise ValueError("token id too long")
        if len(self.label) > _LABEL_MAX:
            object.__setattr__(self, "label", self.label[:_LABEL_MAX])

    # ---- constructors ------------------------------------------------------------------------
    @classmethod
    def api_key(
        cls, *, key_id: int, prefix: str, name: str, scopes: Iterable[str],
        reviewer: str | None = None,
    ) -> Principal:
        """An API key; `reviewer` for a key made for one reviewer (`keys create --reviewer`)."""
        return cls(kind=PrincipalKind.API_KEY, credential=f"key:{key_id}", reviewer=reviewer,
                   scopes=frozenset(scopes), label=f"{name} (lf_{prefix})")

    @classmethod
    def token(
        cls, *, issuer: str, subject: str, reviewer: str, scopes: Iterable[str],
        token_id: str | None = None,
    ) -> Principal:
        """A verified OpenID Connect token (see `pipeline.auth.oidc`)."""
        return cls(kind=PrincipalKind.OIDC, credential=token_credential(issuer, subject),
                   reviewer=reviewer, scopes=frozenset(scopes), label=issuer,
                   token_id=token_id)

    @classmethod
    def labelstudio(cls, *, ls_user_id: int, reviewer: str) -> Principal:
        """A Label Studio user mapped to a reviewer: Label Studio authenticated them, and its
        webhook secret (or lookfirst's poller) vouches for the annotation's author."""
        return cls(kind=PrincipalKind.LABELSTUDIO, credential=f"labelstudio:{ls_user_id}",
                   reviewer=reviewer, scopes=frozenset({"review"}),
                   label=f"Label Studio user {ls_user_id}")

    @classmethod
    def system(cls, name: str) -> Principal:
        """lookfirst itself (`system:worker`, `system:executor`): never a reviewer."""
        return cls(kind=PrincipalKind.SYSTEM, credential=f"system:{name}", reviewer=None,
                   scopes=frozenset(), label=name)

    # ---- what it may do ----------------------------------------------------------------------
    @property
    def bound(self) -> bool:
        """Whether this credential is one reviewer's own (it can act as nobody else)."""
        return self.reviewer is not None and not self.delegate

    def allows(self, scope: str) -> bool:
        """Admin implies every scope but `delegate`: acting for other people is never a side
        effect of being allowed to manage keys."""
        if scope == DELEGATE:
            return DELEGATE in self.scopes
        return scope in self.scopes or ADMIN in self.scopes

    def acting(self, named: str | None) -> Principal:
        """Who acts, given the reviewer a request names (X-Reviewer or the body's `reviewer`).

        A bound credential acts as its reviewer and may name no one else (naming itself grants
        nothing, and reviewer tools that always send X-Reviewer keep working).  An unbound
        credential needs the delegate scope to act for the reviewer it names; the result is
        marked `delegate`.  Anything else is refused."""
        if self.reviewer is not None:
            if named is not None and named != self.reviewer:
                raise ReviewerBound()
            return self
        if not self.allows(DELEGATE):
            raise DelegateRequired()
        if named is None:
            raise ReviewerRequired()
        if not REVIEWER_ID.fullmatch(named):
            raise ReviewerRequired("The reviewer named is not a valid reviewer id.")
        return dataclasses.replace(self, reviewer=named, delegate=True)

    # ---- how it is written down --------------------------------------------------------------
    @property
    def actor(self) -> str:
        """The audit event's `actor` (and an approver's name): the reviewer when there is one,
        so reading the log by person keeps working; otherwise the credential."""
        return self.reviewer if self.reviewer is not None else self.credential

    def audit_data(self) -> dict[str, Any]:
        """What an audit event records of the principal (inside the hashed body)."""
        out: dict[str, Any] = {
            "kind": str(self.kind),
            "credential": self.credential,
            "reviewer": self.reviewer,
            "delegate": self.delegate,
            "scopes": sorted(self.scopes),
            "label": self.label,
        }
        if self.token_id is not None:
            out["token_id"] = self.token_id
        return out

    def __str__(self) -> str:
        if self.reviewer is None:
            return self.credential
        return f"{self.reviewer} via {self.credential}" + (" (delegate)" if self.delegate else "")
