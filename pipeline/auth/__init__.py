"""Who is calling: authenticated principals (API keys bound to reviewers, OpenID Connect tokens,
operators at the CLI, Label Studio users, lookfirst itself) and the errors that refuse them.

`principal` is what every surface hands to the review service; `oidc` verifies bearer tokens;
`operator` names the CLI's caller.  See SECURITY.md for the trust boundaries.
"""

from __future__ import annotations

from pipeline.auth.principal import ADMIN, DELEGATE, Principal, PrincipalKind, token_credential

__all__ = ["ADMIN", "DELEGATE", "Principal", "PrincipalKind", "token_credential"]
