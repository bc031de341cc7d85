"""OAuth2 access tokens for upstream XOAUTH2: grants (what to ask), the token endpoint (how), the keeper (when).

Protocol-free: nothing here knows SMTP, the CRDs or Kubernetes. The gateway
builds a ``Grant`` from an account's credentials, and a ``TokenKeeper`` per
account hands out fresh tokens to the pool.
"""

from .endpoint import AccessToken, TokenEndpoint, TokenError, token_fingerprint
from .grants import (
    ClientAssertionGrant,
    ClientSecretGrant,
    Grant,
    GrantError,
    JwtBearerGrant,
    TokenRequest,
    check_grant,
    google_service_account_grant,
    token_request,
)
from .keeper import TokenKeeper, TokenObserver, TokenUnavailable

__all__ = [
    "AccessToken",
    "ClientAssertionGrant",
    "ClientSecretGrant",
    "Grant",
    "GrantError",
    "JwtBearerGrant",
    "TokenEndpoint",
    "TokenError",
    "TokenKeeper",
    "TokenObserver",
    "TokenRequest",
    "TokenUnavailable",
    "check_grant",
    "google_service_account_grant",
    "token_fingerprint",
    "token_request",
]
