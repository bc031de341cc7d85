"""From an SmtpAccount's ``auth`` and its Secret to a token grant: the one place that knows the providers.

The operator (in a cluster) and the gateway (standalone) both build grants
here, so the provider defaults, the Secret keys read and the messages for a
broken credential are the same in both modes. Messages name Secret keys and
spec fields, never a value.
"""

from __future__ import annotations

from collections.abc import Mapping

from ..spec import AuthMethod, AuthSpec, OAuth2ClientAuthentication, OAuth2Provider, OAuth2Spec
from .grants import ClientAssertionGrant, ClientSecretGrant, Grant, GrantError, check_grant, google_service_account_grant

CLIENT_SECRET = "clientSecret"
PRIVATE_KEY = "tls.key"  # the keys of a kubernetes.io/tls Secret, so `kubectl create secret tls` makes one
CERTIFICATE = "tls.crt"
SERVICE_ACCOUNT_KEY = "serviceAccountKey"

MICROSOFT_TOKEN_URL = "https://login.microsoftonline.com/{tenant}/oauth2/v2.0/token"
MICROSOFT_SCOPE = "https://outlook.office365.com/.default"
GOOGLE_SCOPE = "https://mail.google.com/"

_STATIC_KEYS = {
    AuthMethod.login: ("username", "password"),
    AuthMethod.xoauth2: ("username", "token"),
    AuthMethod.none: (),
}

# Every key any method reads: what the operator keeps of a Secret (nothing else costs it memory).
WEBHOOK_SECRET = "webhookSecret"  # spec.delivery.webhook.secretRef's key
SECRET_KEYS = ("username", "password", "token", CLIENT_SECRET, PRIVATE_KEY, CERTIFICATE, SERVICE_ACCOUNT_KEY, WEBHOOK_SECRET)


def client_authentication(oauth2: OAuth2Spec) -> OAuth2ClientAuthentication | None:
    """The client authentication in effect (None for google, which signs its own assertion)."""
    if oauth2.provider is OAuth2Provider.google:
        return None
    if oauth2.client_authentication is not None:
        return oauth2.client_authentication
    if oauth2.provider is OAuth2Provider.microsoft:
        return OAuth2ClientAuthentication.client_secret_post
    return OAuth2ClientAuthentication.client_secret_basic


def secret_keys(auth: AuthSpec) -> tuple[str, ...]:
    """The keys of ``auth.secretRef`` the account needs."""
    if auth.method is not AuthMethod.oauth2:
        return _STATIC_KEYS[auth.method]
    assert auth.oauth2 is not None  # the model (and the CRD's CEL rule) require it
    method = client_authentication(auth.oauth2)
    if method is None:
        return (SERVICE_ACCOUNT_KEY,)
    if method is OAuth2ClientAuthentication.certificate:
        return (PRIVATE_KEY, CERTIFICATE)
    return (CLIENT_SECRET,)


def token_url(oauth2: OAuth2Spec) -> str | None:
    """The token endpoint; None for google without an override (the key's ``token_uri`` decides)."""
    if oauth2.token_url is not None:
        return oauth2.token_url
    if oauth2.provider is OAuth2Provider.microsoft:
        return MICROSOFT_TOKEN_URL.format(tenant=oauth2.tenant_id)
    return None


def grant_for(oauth2: OAuth2Spec, secret: Mapping[str, str]) -> Grant:
    """The grant for an account; ``secret`` holds at least ``secret_keys``. Raises GrantError naming the key at fault."""
    method = client_authentication(oauth2)
    if method is None:
        grant: Grant = google_service_account_grant(
            secret[SERVICE_ACCOUNT_KEY], oauth2.mailbox, oauth2.scope or GOOGLE_SCOPE, token_url=oauth2.token_url
        )
    else:
        url = token_url(oauth2)
        assert url is not None and oauth2.client_id is not None  # the model requires both for these providers
        scope = oauth2.scope or (MICROSOFT_SCOPE if oauth2.provider is OAuth2Provider.microsoft else None)
        if method is OAuth2ClientAuthentication.certificate:
            grant = ClientAssertionGrant(
                token_url=url,
                client_id=oauth2.client_id,
                private_key_pem=secret[PRIVATE_KEY],
                certificate_pem=secret[CERTIFICATE],
                scope=scope,
                audience=oauth2.audience,
            )
        else:
            grant = ClientSecretGrant(
                token_url=url,
                client_id=oauth2.client_id,
                client_secret=secret[CLIENT_SECRET],
                scope=scope,
                audience=oauth2.audience,
                method="post" if method is OAuth2ClientAuthentication.client_secret_post else "basic",
            )
    try:
        check_grant(grant)
    except GrantError as error:  # the grant's own words for the parts, as the Secret's keys are named
        raise GrantError(str(error).replace("privateKey", PRIVATE_KEY).replace("certificate", CERTIFICATE)) from None
    return grant
