"""The checked-in CRD is exactly what spec.py renders, and documents every field."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from mailgate.crd import render_crd, render_crd_yaml
from mailgate.spec import SmtpAccount

ROOT = Path(__file__).resolve().parents[1]
CRD_FILE = ROOT / "crds" / "smtpaccounts.mailgate.dev.yaml"


def test_checked_in_crd_matches_spec_py() -> None:
    assert CRD_FILE.read_text() == render_crd_yaml(), "run `make crd` after changing mailgate/spec.py"


def _undocumented(schema: dict[str, Any], path: str) -> list[str]:
    missing = []
    for name, prop in schema.get("properties", {}).items():
        here = f"{path}.{name}"
        if not prop.get("description"):
            missing.append(here)
        missing += _undocumented(prop, here)
        if prop.get("type") == "array" and isinstance(prop.get("items"), dict):
            missing += _undocumented(prop["items"], here + "[]")
    return missing


def test_every_spec_and_status_field_has_a_description() -> None:
    schema = render_crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    for part in ("spec", "status"):
        assert _undocumented(schema["properties"][part], part) == []


def test_schema_is_structural() -> None:
    text = yaml.safe_dump(render_crd())
    for forbidden in ("$ref", "anyOf", "title:", "additionalProperties"):
        assert forbidden not in text


@pytest.mark.parametrize("path", sorted((ROOT / "examples").glob("*.yaml")), ids=lambda p: p.name)
def test_examples_parse_with_the_model(path: Path) -> None:
    accounts = [doc for doc in yaml.safe_load_all(path.read_text()) if doc and doc.get("kind") == "SmtpAccount"]
    assert accounts, f"{path.name} has no SmtpAccount"
    for doc in accounts:
        SmtpAccount.model_validate(doc)
