"""Credentials from Secret values, and the conditions users see: pure functions, no apiserver."""

from __future__ import annotations

import base64
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta

from mailgate.operator.conditions import GatewayHealth, StatusInputs, build_status, status_body
from mailgate.operator.credentials import CredentialProblem, LoginHasher, Resolved, resolve, secret_names, secret_values
from mailgate.passwords import verify_password
from mailgate.secretrefs import SecretLookup, SecretValues
from mailgate.spec import EffectiveLimits, SmtpAccountSpec

NOW = datetime(2025, 1, 2, 3, 4, 5, tzinfo=UTC)


def spec(method: str = "login", clients: tuple[str, ...] = ()) -> SmtpAccountSpec:
    return SmtpAccountSpec.model_validate(
        {
            "server": {"host": "smtp.example.com"},
            "auth": {"method": method, **({"secretRef": {"name": "creds"}} if method != "none" else {})},
            "access": {"smtpClients": [{"secretRef": {"name": name}} for name in clients]},
        }
    )


def lookup(secrets: Mapping[tuple[str, str], SecretValues]) -> SecretLookup:
    return lambda namespace, name: secrets.get((namespace, name))


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def test_only_the_relevant_keys_are_decoded() -> None:
    data = {"username": b64("ann"), "password": b64("pässword"), ".dockerconfigjson": b64("{}"), "token": "***not base64"}
    assert secret_values(data) == {"username": "ann", "password": "pässword", "token": None}
    assert secret_values(None) == {}


def test_login_credentials_resolve() -> None:
    result = resolve("shop", spec(), lookup({("shop", "creds"): {"username": "ann", "password": "pw"}}))
    assert isinstance(result, Resolved)
    assert result.credentials.username == "ann"
    assert result.credentials.password is not None and result.credentials.password.get_secret_value() == "pw"
    assert "pw" not in repr(result)


def test_xoauth2_needs_a_token() -> None:
    problem = resolve("shop", spec("xoauth2"), lookup({("shop", "creds"): {"username": "ann", "password": "pw"}}))
    assert problem == CredentialProblem("KeyMissing", "Secret shop/creds has no key 'token' (needed for auth method xoauth2)")


def test_a_missing_secret_is_reported_by_name() -> None:
    problem = resolve("shop", spec(), lookup({}))
    assert isinstance(problem, CredentialProblem) and problem.reason == "SecretNotFound"
    assert "shop/creds" in problem.message


def test_an_empty_or_undecodable_key_is_reported_without_its_value() -> None:
    empty = resolve("shop", spec(), lookup({("shop", "creds"): {"username": "ann", "password": ""}}))
    assert isinstance(empty, CredentialProblem) and empty.reason == "KeyMissing"
    broken = resolve("shop", spec(), lookup({("shop", "creds"): {"username": "ann", "password": None}}))
    assert isinstance(broken, CredentialProblem) and broken.reason == "KeyInvalid"


def test_no_auth_needs_no_secret() -> None:
    result = resolve("shop", spec("none"), lookup({}))
    assert isinstance(result, Resolved) and result.credentials.username is None
    assert secret_names(spec("none")) == set()


def test_smtp_client_secrets_are_read_too() -> None:
    account = spec(clients=("app-a",))
    assert secret_names(account) == {"creds", "app-a"}
    secrets = {("shop", "creds"): {"username": "ann", "password": "pw"}}
    missing = resolve("shop", account, lookup(secrets))
    assert isinstance(missing, CredentialProblem) and "shop/app-a" in missing.message
    secrets[("shop", "app-a")] = {"username": "app", "password": "s3cret"}
    result = resolve("shop", account, lookup(secrets))
    assert isinstance(result, Resolved) and result.client_logins == (("app", "s3cret"),)


async def test_client_passwords_are_hashed_once_per_value() -> None:
    hasher = LoginHasher()
    first = await hasher.hash_all([("app", "s3cret")])
    again = await hasher.hash_all([("app", "s3cret")])
    rotated = await hasher.hash_all([("app", "n3w")])
    assert first == again  # stable digest while nothing changes
    assert first[0].password_hash != rotated[0].password_hash
    assert verify_password("s3cret", first[0].password_hash)
    assert "s3cret" not in first[0].password_hash


# ----------------------------------------------------------------------------- conditions


def conditions(inputs: StatusInputs, previous=(), now: datetime = NOW) -> dict[str, tuple[str, str]]:
    status = build_status(inputs, previous, now)
    return {c.type: (c.status, c.reason) for c in status.conditions}


def test_everything_fine_is_ready() -> None:
    inputs = StatusInputs(
        generation=4, pushed_generation=4, synced=3, total=3, health=[GatewayHealth("gw-0", True)],
        effective=EffectiveLimits(max_connections_per_gateway=[1, 1, 1]),
    )  # fmt: skip
    status = build_status(inputs, [], NOW)
    assert {c.type: c.status for c in status.conditions} == {
        "Ready": "True", "CredentialsResolved": "True", "Synced": "True", "UpstreamHealthy": "True",
        "SendersUnique": "True",
    }  # fmt: skip
    assert status.observed_generation == 4
    assert status.gateways.synced == 3 and status.gateways.total == 3
    body = status_body(status)
    assert body["conditions"][0]["lastTransitionTime"] == "2025-01-02T03:04:05Z"
    assert body["conditions"][2]["message"] == "3 of 3 gateways serve generation 4"
    assert body["effective"]["maxConnectionsPerGateway"] == [1, 1, 1]


def test_upstream_not_yet_checked_is_unknown_and_still_ready() -> None:
    result = conditions(StatusInputs(generation=1, pushed_generation=1, synced=2, total=2, health=[GatewayHealth("a", None)]))
    assert result["UpstreamHealthy"] == ("Unknown", "NotChecked")
    assert result["Ready"] == ("True", "Ready")


def test_a_missing_secret_keeps_the_old_config_and_says_so() -> None:
    problem = CredentialProblem("SecretNotFound", "Secret shop/creds not found (needed for auth method login)")
    status = build_status(StatusInputs(generation=5, problem=problem, pushed_generation=4, synced=2, total=2), [], NOW)
    by_type = {c.type: c for c in status.conditions}
    assert (by_type["CredentialsResolved"].status, by_type["CredentialsResolved"].reason) == ("False", "SecretNotFound")
    assert "last good configuration" in by_type["CredentialsResolved"].message
    assert (by_type["Ready"].status, by_type["Ready"].reason) == ("False", "CredentialsNotResolved")
    assert by_type["Synced"].status == "True"  # the old configuration is still served everywhere


def test_syncing_and_no_gateways() -> None:
    assert conditions(StatusInputs(generation=2, pushed_generation=2, synced=1, total=3))["Synced"] == ("False", "Syncing")
    assert conditions(StatusInputs(generation=2, pushed_generation=2))["Ready"] == ("False", "NoGateways")
    assert conditions(StatusInputs(generation=2, total=2))["Synced"] == ("False", "NotPushed")


def test_an_upstream_error_names_the_gateway() -> None:
    inputs = StatusInputs(
        generation=1, pushed_generation=1, synced=2, total=2,
        health=[GatewayHealth("gw-0", True), GatewayHealth("gw-1", False, "535 authentication failed")],
    )  # fmt: skip
    status = build_status(inputs, [], NOW)
    by_type = {c.type: c for c in status.conditions}
    assert by_type["UpstreamHealthy"].reason == "UpstreamError"
    assert "gw-1: 535 authentication failed" in by_type["UpstreamHealthy"].message
    assert (by_type["Ready"].status, by_type["Ready"].reason) == ("False", "UpstreamUnhealthy")


def test_suspended_is_not_ready() -> None:
    result = conditions(StatusInputs(generation=1, suspended=True, pushed_generation=1, synced=1, total=1))
    assert result["Ready"] == ("False", "Suspended")


def test_transition_time_changes_only_with_the_status() -> None:
    first = build_status(StatusInputs(generation=1, pushed_generation=1, synced=1, total=2), [], NOW)
    later = NOW + timedelta(minutes=5)
    same = build_status(StatusInputs(generation=2, pushed_generation=2, synced=0, total=2), first.conditions, later)
    flipped = build_status(StatusInputs(generation=2, pushed_generation=2, synced=2, total=2), same.conditions, later)
    synced = [next(c for c in s.conditions if c.type == "Synced") for s in (first, same, flipped)]
    assert synced[0].last_transition_time == synced[1].last_transition_time == NOW
    assert synced[1].message == "0 of 2 gateways serve generation 2"  # message and generation do move
    assert synced[1].observed_generation == 2
    assert synced[2].last_transition_time == later


def test_a_configuration_refused_by_a_gateway_is_not_synced() -> None:
    inputs = StatusInputs(generation=3, pushed_generation=3, synced=1, total=2, rejected=[("gw-1", "ca: not a PEM bundle")])
    status = build_status(inputs, [], NOW)
    synced = next(c for c in status.conditions if c.type == "Synced")
    assert (synced.status, synced.reason) == ("False", "Rejected")
    assert synced.message == "1 of 2 gateways serve generation 3; gateway gw-1 refused it: ca: not a PEM bundle"


def test_a_token_refusal_is_a_condition_with_the_endpoints_words_and_an_event_once() -> None:
    from mailgate.oauth2.endpoint import TokenError
    from mailgate.operator.conditions import token_event
    from mailgate.operator.engine import _token_problem

    def refusal(trace: str) -> TokenError:
        ids = f"Trace ID: {trace} Correlation ID: c-{trace} Timestamp: 2026-12-02 10:00:0{trace[-1]}Z"
        description = f"AADSTS7000215: Invalid client secret provided. {ids}"
        return TokenError("invalid_client", description, url="https://login.example/t/token", status=401, retryable=False)

    first, second = _token_problem(refusal("a1")), _token_problem(refusal("b2"))
    assert first == second, "per-request identifiers must not make every retry a new condition and Event"
    assert first.reason == "TokenRequestRefused" and "invalid_client" in first.message and "AADSTS7000215" in first.message
    assert "Trace ID" not in first.message
    ok = build_status(StatusInputs(generation=1, synced=1, total=1), [], NOW)
    failing = build_status(StatusInputs(generation=1, problem=first, synced=1, total=1), ok.conditions, NOW)
    credentials = next(c for c in failing.conditions if c.type == "CredentialsResolved")
    assert (credentials.status, credentials.reason) == ("False", "TokenRequestRefused")
    assert "keep the current token until it expires" in credentials.message
    assert token_event(ok.conditions, failing.conditions) == ("Warning", "TokenRequestRefused", credentials.message)
    again = build_status(StatusInputs(generation=1, problem=second, synced=1, total=1), failing.conditions, NOW)
    assert token_event(failing.conditions, again.conditions) is None
    recovered = build_status(StatusInputs(generation=1, synced=1, total=1), again.conditions, NOW)
    assert token_event(again.conditions, recovered.conditions) == (
        "Normal",
        "TokenIssued",
        "the token endpoint issues access tokens again",
    )
    assert token_event(recovered.conditions, recovered.conditions) is None
