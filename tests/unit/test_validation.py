"""One format for pydantic validation errors, whoever reports them (issue 16).

The same malformed SmtpAccount spec is read by standalone mode's loader, the
operator's engine and a gateway's admin API (real HTTP); each names the same
field paths with the same messages. The API key CLI and the keys file agree
likewise. Paths are dotted names with ``[n]`` for list items
(``spec.access.smtpClients[0].secretRef.name``); a validator's ``ValueError``
reads as its own text, without pydantic's ``Value error, `` prefix.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Annotated, Any

import aiohttp
import pytest
import yaml
from pydantic import BaseModel, Field, ValidationError, model_validator

from mailgate.cli import main
from mailgate.gateway.apikeys import generate_key, hash_key, load_keys
from mailgate.gateway.app import Gateway, GatewayOptions
from mailgate.gateway.auth import AllowAnyone
from mailgate.operator.admin import AdminClient
from mailgate.operator.engine import Engine, InvalidSpec
from mailgate.operator.metrics import OperatorMetrics
from mailgate.standalone.loader import ConfigError, load_snapshot
from mailgate.validation import FieldProblem, field_error, field_path, field_problems

ADMIN_TOKEN = "validation-test-admin-token"

# A malformed spec and the (field, message) pairs every reader must report for it.
CASES: list[tuple[dict[str, Any], set[tuple[str, str]]]] = [
    (
        {"server": {"host": "h"}, "pool": {"maxConnections": 0}},
        {("spec.pool.maxConnections", "Input should be greater than or equal to 1")},
    ),
    (
        {"server": {"host": "h", "tls": "sometimes"}, "colour": "blue"},
        {
            ("spec.server.tls", "Input should be 'implicit', 'starttls' or 'none'"),
            ("spec.colour", "Extra inputs are not permitted"),
        },
    ),
    (
        {"server": {"host": "h"}, "auth": {"method": "login"}},
        {("spec.auth", "secretRef is required unless method is none")},
    ),
    (
        {"server": {"host": "h"}, "senders": ["ops@shop.example", 5]},
        {("spec.senders[1]", "Input should be a valid string")},
    ),
    (
        {"server": {"host": "h"}, "access": {"smtpClients": [{"secretRef": {}}]}},
        {("spec.access.smtpClients[0].secretRef.name", "Field required")},
    ),
]


def _split(line: str) -> tuple[str, str]:
    field, _, message = line.partition(": ")
    return field, message


def loader_problems(tmp_path: Path, spec: dict[str, Any]) -> set[tuple[str, str]]:
    document = {"apiVersion": "mailgate.dev/v1alpha1", "kind": "SmtpAccount", "metadata": {"name": "a", "namespace": "shop"}}
    path = tmp_path / "accounts.yaml"
    path.write_text(yaml.safe_dump({**document, "spec": spec}))
    with pytest.raises(ConfigError) as caught:
        load_snapshot([path])
    origin = f"{path}: document 1 (SmtpAccount shop/a): "
    assert all(line.startswith(origin) for line in caught.value.problems), caught.value.problems
    return {_split(line.removeprefix(origin)) for line in caught.value.problems}


async def engine_problems(spec: dict[str, Any]) -> set[tuple[str, str]]:
    engine = Engine(client=AdminClient("unused", 1), send_port=1, resync_seconds=60, metrics=OperatorMetrics())
    body = {"metadata": {"namespace": "shop", "name": "a", "generation": 1, "uid": "u"}, "spec": spec}
    with pytest.raises(InvalidSpec) as caught:
        await engine.upsert(body, lambda namespace, name: None)
    message = str(caught.value)
    assert message.startswith("invalid spec: "), message
    return {_split(part) for part in message.removeprefix("invalid spec: ").split("; ")}


@pytest.fixture
async def admin_put() -> AsyncIterator[Any]:
    gateway = Gateway(AllowAnyone(), GatewayOptions(port=0, admin_port=0, admin_token=ADMIN_TOKEN, shutdown_grace=2.0))
    await gateway.start()
    async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}) as http:

        async def put(spec: dict[str, Any]) -> set[tuple[str, str]]:
            snapshot = {"revision": 1, "accounts": [{"namespace": "shop", "name": "a", "spec": spec}]}
            async with http.put(f"{gateway.admin_url}/v1/config", json=snapshot) as response:
                assert response.status == 400
                errors = (await response.json(content_type=None))["errors"]
            assert all(error["field"].startswith("accounts[0].") for error in errors), errors
            return {(error["field"].removeprefix("accounts[0]."), error["message"]) for error in errors}

        try:
            yield put
        finally:
            await gateway.stop()


@pytest.mark.parametrize(("spec", "expected"), CASES)
async def test_a_malformed_spec_reads_alike_in_the_loader_the_engine_and_the_admin_api(
    tmp_path: Path, admin_put: Any, spec: dict[str, Any], expected: set[tuple[str, str]]
) -> None:
    assert loader_problems(tmp_path, spec) == expected
    assert await engine_problems(spec) == expected
    assert await admin_put(spec) == expected


def test_the_apikey_command_and_the_keys_file_name_a_bad_pattern_alike(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["apikey", "--name", "ci", "--account", "billing"]) == 2
    [printed] = capsys.readouterr().err.splitlines()
    path = tmp_path / "keys.yaml"
    path.write_text(yaml.safe_dump({"keys": [{"name": "ci", "sha256": hash_key(generate_key()), "accounts": ["billing"]}]}))
    with pytest.raises(ConfigError) as caught:
        load_keys(path)
    [problem] = caught.value.problems
    message = "expected namespace/name, namespace/* or * (glob patterns)"
    assert printed == f"mailgate apikey: accounts[0]: {message}"
    assert problem == f"{path}: keys[0].accounts[0]: {message}"


# ----------------------------------------------------------------------------- the formatter itself


class _Headers(BaseModel):
    headers: dict[Annotated[str, Field(max_length=8)], str]
    items: list[int] = []

    @model_validator(mode="after")
    def _named(self) -> _Headers:
        if "Bad" in self.headers:
            raise field_error("headers.Bad", "not this one")
        return self


class _Outer(BaseModel):
    inner: _Headers


def problems_of(model: type[BaseModel], data: Any, **options: Any) -> list[FieldProblem]:
    with pytest.raises(ValidationError) as caught:
        model.model_validate(data)
    return field_problems(caught.value, **options)


def test_paths_use_dots_for_names_and_brackets_for_items() -> None:
    assert field_path(("spec", "senders", 0)) == "spec.senders[0]"
    assert field_path((0, "name")) == "[0].name"
    assert field_path(()) == ""


def test_a_dict_key_error_names_the_entry_and_the_whole_input_has_a_caller_given_name() -> None:
    assert problems_of(_Headers, {"headers": {"Too-Long-Name": "x"}, "items": ["a"]}, whole="body") == [
        FieldProblem("headers.Too-Long-Name", "String should have at most 8 characters"),
        FieldProblem("items[0]", "Input should be a valid integer, unable to parse string as an integer"),
    ]
    [problem] = problems_of(_Headers, [], whole="body")
    assert problem.field == "body"
    [problem] = problems_of(_Headers, [], within=("spec",), whole="body")
    assert problem.field == "spec"


def test_a_validator_may_name_a_field_below_where_it_runs() -> None:
    assert problems_of(_Headers, {"headers": {"Bad": "x"}}, whole="body") == [FieldProblem("headers.Bad", "not this one")]
    assert problems_of(_Outer, {"inner": {"headers": {"Bad": "x"}}}, whole="body") == [
        FieldProblem("inner.headers.Bad", "not this one")
    ]
