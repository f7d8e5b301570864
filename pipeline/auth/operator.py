"""The CLI's principal: an operator with database access, known by operating-system account and
host.  What it records is what the kernel says (the effective uid), not what $USER claims.

An operator can write to the database directly, so this identity does not stop a determined
operator; it makes every act attributable, and lets the two-person rule ask for a second
operator account where one operator would otherwise stand for two people.
"""

from __future__ import annotations

import hashlib
import os
import re
import socket
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Final

from pipeline.auth.errors import SameOperator
from pipeline.auth.principal import Principal, PrincipalKind

__all__ = ["OPERATOR_SCOPES", "Operator", "current", "current_actor", "from_credential",
           "require_another_person"]

#: an operator can do everything the API can, and act for any reviewer it names (marked as a
#: delegate); acting for someone is what `review decide --reviewer` does
OPERATOR_SCOPES: Final = frozenset({"classify", "review", "appeal", "admin", "delegate"})
_USER: Final = re.compile(r"[A-Za-z0-9._-]{1,32}")
_HOST: Final = re.compile(r"[A-Za-z0-9.-]{1,64}")
#: accounts that name a role, not a person: they never count as a second operator
SHARED_ACCOUNTS: Final = frozenset({"root", "postgres", "lookfirst", "nobody", "admin"})


@dataclass(frozen=True, slots=True)
class Operator:
    """One operating-system account on one host, running the CLI."""

    #: the account name of the effective uid
    user: str
    uid: int
    host: str
    #: the account that ran `sudo`, when running as root through it (sudo sets SUDO_USER;
    #: root could set it too, and root can do anything anyway: it names, it does not prove)
    sudo_user: str | None = None

    @property
    def person(self) -> str:
        """The account that stands for the person: the sudo caller when there is one."""
        return self.sudo_user if self.uid == 0 and self.sudo_user else self.user

    @property
    def shared(self) -> bool:
        """Whether the account is a role account (root without sudo, postgres, …)."""
        return self.person in SHARED_ACCOUNTS

    @property
    def credential(self) -> str:
        return f"os:{_safe(self.person, _USER)}@{_safe(self.host, _HOST)}"

    def principal(self) -> Principal:
        label = f"{self.user}@{self.host}"
        if self.sudo_user and self.uid == 0:
            label += f" (sudo from {self.sudo_user})"
        return Principal(kind=PrincipalKind.OPERATOR, credential=self.credential, reviewer=None,
                         scopes=OPERATOR_SCOPES, label=label)

    def same_person_as(self, other: Operator) -> bool:
        """Whether two operators may be one person: the same account name on any host (one
        person often has the same login on several machines), or either one a shared role
        account.  The rule for "a second operator confirms"."""
        return (self.person.casefold() == other.person.casefold()
                or self.shared or other.shared)


def from_credential(credential: str) -> Operator | None:
    """The operator an `os:<person>@<host>` credential names (None for any other credential);
    enough to compare people, nothing more (no uid)."""
    kind, _, rest = credential.partition(":")
    person, at, host = rest.rpartition("@")
    if kind != "os" or not at or not person:
        return None
    return Operator(user=person, uid=-1, host=host)


def require_another_person(me: Operator, credentials: Iterable[str]) -> None:
    """Refuse (`auth.same_operator`) when an earlier verdict on the item came from an operator
    who may be the same person as `me`: the same account name on any host, or a shared role
    account on either side.  The database's UNIQUE(item_id, credential) only sees hosts."""
    for c in credentials:
        other = from_credential(c)
        if other is not None and me.same_person_as(other):
            raise SameOperator()


def current(environ: Mapping[str, str] | None = None) -> Operator:
    """The operator running this process."""
    env = os.environ if environ is None else environ
    uid = os.geteuid()
    try:
        import pwd

        user = pwd.getpwuid(uid).pw_name
    except (ImportError, KeyError):  # no passwd entry (a container's arbitrary uid)
        user = f"uid{uid}"
    sudo_user = env.get("SUDO_USER") if uid == 0 else None
    return Operator(user=user, uid=uid, host=socket.gethostname() or "localhost",
                    sudo_user=sudo_user or None)


def _safe(value: str, pattern: re.Pattern[str]) -> str:
    """The value if it fits a credential id as it is; otherwise a short digest of it, so two
    different odd names never collapse into one."""
    if pattern.fullmatch(value):
        return value
    return "x" + hashlib.sha256(value.encode()).hexdigest()[:16]


def current_actor() -> str:
    """What an audit event's `actor` says of the operator running this process (their
    credential, `os:user@host`): for the CLI's own acts, never a name the caller passes."""
    return current().principal().actor
