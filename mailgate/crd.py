"""Render the SmtpAccount CustomResourceDefinition from the pydantic models.

A CRD needs a *structural* OpenAPI schema: no ``$ref``, no ``anyOf`` with
null, no titles, no null in defaults. Optional sub-objects default to their
model's defaults (``Field(default=PoolSpec())``), so the apiserver fills in
``spec.pool`` whole when it is left out, and a default passes the CEL rules. This
module turns pydantic's JSON Schema into that shape, so ``mailgate/spec.py``
stays the single source of truth (a test proves the checked-in file matches).
"""

from __future__ import annotations

import copy
from typing import Any

import yaml

from . import spec

_DROP = {"title", "additionalProperties"}


def _inline(node: Any, defs: dict[str, Any]) -> Any:
    """Resolve ``$ref``s and null unions recursively; keep sibling keys (description, default)."""
    if isinstance(node, list):
        return [_inline(item, defs) for item in node]
    if not isinstance(node, dict):
        return node
    node = dict(node)
    if "anyOf" in node:
        options = [option for option in node["anyOf"] if option.get("type") != "null"]
        if len(options) == 1:
            merged = dict(options[0])
            merged.update({k: v for k, v in node.items() if k != "anyOf"})
            node = merged
    if "$ref" in node:
        target = copy.deepcopy(defs[node.pop("$ref").rsplit("/", 1)[-1]])
        target.update(node)
        node = target
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key in _DROP or (key == "default" and value is None):
            continue
        if key == "properties":
            out[key] = {name: _inline(prop, defs) for name, prop in value.items()}
        elif key == "default":
            out[key] = _without_nulls(value)
        else:
            out[key] = _inline(value, defs)
    return out


def _without_nulls(value: Any) -> Any:
    """A default is validated like any value, and CRD fields are not nullable: drop unset members."""
    if isinstance(value, dict):
        return {k: _without_nulls(v) for k, v in value.items() if v is not None}
    return value


def structural_schema(model: type[spec.BaseModel]) -> dict[str, Any]:
    raw = model.model_json_schema(by_alias=True)
    defs = raw.pop("$defs", {})
    return _inline(raw, defs)


def _condition_column(name: str, condition: str) -> dict[str, Any]:
    return {
        "name": name,
        "type": "string",
        "jsonPath": f'.status.conditions[?(@.type=="{condition}")].status',
        "description": f"The {condition} condition.",
    }


def render_crd() -> dict[str, Any]:
    """The CustomResourceDefinition object, ready for ``kubectl apply``."""
    spec_schema = structural_schema(spec.SmtpAccountSpec)
    status_schema = structural_schema(spec.SmtpAccountStatus)
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{spec.PLURAL}.{spec.GROUP}"},
        "spec": {
            "group": spec.GROUP,
            "scope": "Namespaced",
            "names": {
                "plural": spec.PLURAL,
                "singular": "smtpaccount",
                "kind": spec.KIND,
                "listKind": f"{spec.KIND}List",
                "shortNames": ["smtpacct"],
                "categories": ["mailgate"],
            },
            "versions": [
                {
                    "name": spec.VERSION,
                    "served": True,
                    "storage": True,
                    "subresources": {"status": {}},
                    "additionalPrinterColumns": [
                        {
                            "name": "Server",
                            "type": "string",
                            "jsonPath": ".spec.server.host",
                            "description": "Upstream SMTP server.",
                        },
                        _condition_column("Ready", "Ready"),
                        _condition_column("Synced", "Synced"),
                        _condition_column("Healthy", "UpstreamHealthy"),
                        {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
                        # Queue-mode accounts only, so shown by `kubectl get -o wide` (priority 1).
                        {
                            "name": "Queued",
                            "type": "integer",
                            "priority": 1,
                            "jsonPath": ".status.delivery.queued",
                            "description": "Queued messages never attempted yet (largest count among gateways).",
                        },
                        {
                            "name": "Deferred",
                            "type": "integer",
                            "priority": 1,
                            "jsonPath": ".status.delivery.deferred",
                            "description": "Queued messages waiting for their next attempt.",
                        },
                    ],
                    "schema": {
                        "openAPIV3Schema": {
                            "type": "object",
                            "description": "An upstream SMTP account that mailgate gateways relay mail through.",
                            "required": ["spec"],
                            "properties": {
                                "apiVersion": {"type": "string", "description": "mailgate.dev/v1alpha1"},
                                "kind": {"type": "string", "description": "SmtpAccount"},
                                "metadata": {"type": "object"},
                                "spec": spec_schema,
                                "status": status_schema,
                            },
                        }
                    },
                }
            ],
        },
    }


def render_crd_yaml() -> str:
    header = "# Generated by `mailgate crd` from mailgate/spec.py. Do not edit by hand.\n"
    return header + yaml.safe_dump(render_crd(), sort_keys=False, width=120)
