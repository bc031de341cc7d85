"""``spec.server.host`` is a DNS name or an IP literal, in the model and in the CRD pattern alike (issue 18, item 5).

The CRD carries ``HOST_PATTERN`` to the apiserver (Go's RE2) and the model
checks the same pattern (Python's ``re``), so standalone files and the
cluster accept exactly the same hosts. IP literals are checked against
Python's ``ipaddress`` over the whole alphabet they are written in.
"""

from __future__ import annotations

import ipaddress
import re
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from mailgate.crd import render_crd
from mailgate.spec import HOST_MESSAGE, HOST_PATTERN, ServerSpec
from mailgate.standalone.loader import ConfigError, load_snapshot

HOST = re.compile(HOST_PATTERN)

ACCEPTED = [
    "127.0.0.1",
    "localhost",
    "smtp.office365.com",
    "email-smtp.eu-west-1.amazonaws.com",
    "SMTP.Example.COM",
    "postfix.mail.svc.cluster.local",
    "h",
    "xn--bcher-kva.example",
    "::1",
    "2001:db8::25",
    "::ffff:192.0.2.1",
    "0.0.0.0",
    "255.255.255.255",
]
REFUSED = [
    "smtp example.com",
    "",
    " smtp.example.com",
    "smtp.example.com ",
    "[::1]",  # IPv6 is written bare, as the socket layer takes it
    "smtp.example.com:587",
    "smtp://smtp.example.com",
    "-smtp.example.com",
    "smtp-.example.com",
    "smtp..example.com",
    ".example.com",
    "smtp.example.com.",
    "smtp_relay",
    "bücher.example",  # IDN in A-label form only
    "256.1.1.1",
    "1.2.3",
    "01.2.3.4",
    "12345",
    "fe80::1%eth0",
    "1:2:3:4:5:6:7:8:9",
    "a" * 64 + ".example.com",
    "smtp.example.com\n",
]


def host_error(host: str) -> list[Any]:
    try:
        ServerSpec.model_validate({"host": host})
    except ValidationError as error:
        return error.errors(include_url=False)
    return []


@pytest.mark.parametrize("host", ACCEPTED)
def test_names_and_addresses_are_accepted(host: str) -> None:
    assert host_error(host) == []
    assert HOST.fullmatch(host)


@pytest.mark.parametrize("host", REFUSED)
def test_anything_else_is_refused_naming_the_field(host: str) -> None:
    [error] = host_error(host)
    assert error["loc"] == ("host",)
    assert HOST.fullmatch(host) is None  # Go anchors `$` at the very end, as fullmatch does


def ipv6_text(address: ipaddress.IPv6Address, style: int, upper: bool) -> str:
    texts = [address.compressed, address.exploded, _mixed(address, compress=False), _mixed(address, compress=True)]
    text = texts[style % len(texts)]
    return text.upper() if upper else text


def _mixed(address: ipaddress.IPv6Address, *, compress: bool) -> str:
    """Six hex groups, then the last 32 bits as a dotted quad; ``compress``: the longest zero run as ``::``."""
    groups = [f"{int(address) >> (112 - 16 * index) & 0xFFFF:x}" for index in range(6)]
    quad = str(ipaddress.IPv4Address(int(address) & 0xFFFFFFFF))
    runs = [(end - start, start, end) for start in range(6) for end in range(start + 1, 7) if set(groups[start:end]) == {"0"}]
    if not compress or not runs:
        return ":".join(groups) + ":" + quad
    _, start, end = max(runs, key=lambda run: (run[0], -run[1]))
    right = ":".join(groups[end:])
    return ":".join(groups[:start]) + "::" + (right + ":" if right else "") + quad


GROUP = st.sampled_from([0, 0, 0, 1, 0xFFFF]) | st.integers(0, 0xFFFF)  # zero runs are what notations differ in


@given(st.lists(GROUP, min_size=8, max_size=8), st.integers(0, 3), st.booleans())
def test_every_ipv6_address_is_accepted_in_every_notation(groups: list[int], style: int, upper: bool) -> None:
    value = sum(group << (112 - 16 * index) for index, group in enumerate(groups))
    text = ipv6_text(ipaddress.IPv6Address(value), style, upper)
    assert ipaddress.IPv6Address(text) == ipaddress.IPv6Address(value)
    assert HOST.fullmatch(text), text


@given(st.integers(0, 2**32 - 1))
def test_every_ipv4_address_is_accepted(value: int) -> None:
    assert HOST.fullmatch(str(ipaddress.IPv4Address(value)))


@given(st.text(alphabet="0123456789abcdefABCDEF:.", max_size=45))
def test_ip_literals_match_exactly_what_ipaddress_parses(text: str) -> None:
    """Over the alphabet of IP literals the pattern and ``ipaddress`` agree (names need a letter-led last label)."""
    try:
        ipaddress.ip_address(text)
        parses = True
    except ValueError:
        parses = False
    last_label = text.rsplit(".", 1)[-1]
    looks_like_a_name = ":" not in text and bool(re.fullmatch(r"[a-fA-F][0-9a-fA-F]*", last_label))
    if not looks_like_a_name:
        assert bool(HOST.fullmatch(text)) == parses, text


@given(st.lists(st.from_regex(r"[a-z0-9]([a-z0-9-]{0,20}[a-z0-9])?", fullmatch=True), min_size=0, max_size=4),
       st.from_regex(r"[a-z]([a-z0-9-]{0,20}[a-z0-9])?", fullmatch=True))  # fmt: skip
def test_dns_names_are_accepted(labels: list[str], last: str) -> None:
    name = ".".join([*labels, last])
    assert host_error(name) == []


def test_the_crd_carries_the_same_pattern_and_message() -> None:
    schema = render_crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    host = schema["properties"]["spec"]["properties"]["server"]["properties"]["host"]
    [rule] = host["x-kubernetes-validations"]
    assert rule == {"rule": f"self.matches(r'{HOST_PATTERN}')", "message": HOST_MESSAGE}
    assert "'" not in HOST_PATTERN  # the CEL raw string cannot be closed early
    assert "IPv6" in host["description"]


def test_a_standalone_file_with_a_bad_host_names_the_file_and_field(tmp_path: Path) -> None:
    path = tmp_path / "accounts.yaml"
    path.write_text(
        "apiVersion: mailgate.dev/v1alpha1\nkind: SmtpAccount\nmetadata: {name: billing, namespace: shop}\n"
        "spec: {server: {host: smtp example.com, tls: none}}\n"
    )
    with pytest.raises(ConfigError) as raised:
        load_snapshot([path])
    [problem] = raised.value.problems
    assert problem.startswith(f"{path}: document 1 (SmtpAccount shop/billing): spec.server.host: ")
    assert problem.endswith(HOST_MESSAGE)
