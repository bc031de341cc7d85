"""The message builder and the raw-body parser, proven by parsing every result back with the stdlib.

``policy.default`` is the strict, modern parser: a message this module writes
must parse without defects, and what the parser reads back (text, names,
subjects, attachment bytes and filenames) must equal what the request said.
"""

from __future__ import annotations

import base64
import email
import os
import re
from email import policy
from email.errors import NonASCIILocalPartDefect
from email.header import decode_header
from email.message import EmailMessage, MIMEPart
from email.utils import parsedate_to_datetime
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from mailgate.gateway.compose import SendRequest, compose_message, describe_validation_error
from mailgate.relay.envelope import MessageError, OutgoingMessage
from mailgate.relay.rfc822 import parse_raw_message

HOST = "gw.test.example"


def request(**fields: Any) -> SendRequest:
    body: dict[str, Any] = {"from": "Billing <billing@shop.example>", "to": ["ann@example.com"], "subject": "Hi"}
    body.update(fields)
    if "text" not in body and "html" not in body and "attachments" not in body:
        body["text"] = "hello"
    return SendRequest.model_validate(body)


def build(**fields: Any) -> OutgoingMessage:
    return compose_message(request(**fields), hostname=HOST)


def parse(data: bytes, *, utf8: bool = False) -> EmailMessage:
    """Parse with the strict stdlib parser and insist on zero defects anywhere."""
    if utf8:  # RFC 6532 headers: the parser needs them as text
        msg = email.message_from_string(data.decode("utf-8"), policy=policy.default)
    else:
        msg = email.message_from_bytes(data, policy=policy.default)
    assert isinstance(msg, EmailMessage)
    for part in msg.walk():
        assert part.defects == []
        for name in part.keys():
            header = part[name]
            defects = [d for d in header.defects if not (utf8 and isinstance(d, NonASCIILocalPartDefect))]
            assert defects == [], (name, defects)
    return msg


def lines_of(data: bytes) -> list[bytes]:
    assert data.endswith(b"\r\n")
    assert b"\r\n" not in data.replace(b"\r\n", b"")  # no bare CR or LF anywhere
    return data[:-2].split(b"\r\n")


def assert_short_lines(data: bytes, limit: int = 78) -> None:
    assert max(len(line) for line in lines_of(data)) <= limit


def crlf(text: str) -> str:
    """What a text body becomes: CRLF line endings and a final line break."""
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    return (text if text.endswith("\n") else text + "\n").replace("\n", "\r\n")


def exact_display_name(data: bytes, field: str) -> str:
    """The display name of the single mailbox in ``field``, decoded exactly per RFC 2047.

    The stdlib's modern parser reads display names as RFC 5322 phrases: it
    collapses runs of spaces and puts a space between adjacent encoded words
    (RFC 2047 says to drop it). So names are compared two ways: exactly with
    the RFC 2047 decoder (``decode_header``), and, for the modern parser,
    ignoring whitespace.
    """
    head = data.split(b"\r\n\r\n", 1)[0].decode("utf-8").replace("\r\n ", " ")
    value = next(line.split(": ", 1)[1] for line in head.split("\r\n") if line.startswith(field + ": "))
    phrase = value[: value.rindex(" <")]
    if phrase.startswith("=?"):
        ((decoded, charset),) = decode_header(phrase)
        assert isinstance(decoded, bytes) and charset == "utf-8"
        return decoded.decode("utf-8")
    msg = parse(data)
    return str(msg[field].addresses[0].display_name)


def fields_of(exc: pytest.ExceptionInfo[ValidationError]) -> set[str]:
    return {problem["field"] for problem in describe_validation_error(exc.value)}


def body_text(part: MIMEPart) -> str:
    payload = part.get_payload(decode=True)
    assert isinstance(payload, bytes)
    return payload.decode(part.get_content_charset() or "ascii")


# --------------------------------------------------------------------------- MIME structure


def test_text_only_is_a_single_text_plain_part_with_standard_headers() -> None:
    out = build(text="Hello Ann,\nyour invoice is attached.\n\n-- \nBilling")
    msg = parse(out.data)
    assert msg.get_content_type() == "text/plain"
    assert msg.get_content_charset() == "utf-8"
    assert msg["Content-Transfer-Encoding"] == "7bit"
    assert msg["MIME-Version"] == "1.0"
    assert body_text(msg) == crlf("Hello Ann,\nyour invoice is attached.\n\n-- \nBilling")
    assert msg["From"].addresses[0].display_name == "Billing"
    assert msg["From"].addresses[0].addr_spec == "billing@shop.example"
    assert [a.addr_spec for a in msg["To"].addresses] == ["ann@example.com"]
    assert msg["Subject"] == "Hi"
    assert out.sender == "billing@shop.example"
    assert out.recipients == ["ann@example.com"]
    assert out.header_from == ["billing@shop.example"]
    assert out.smtputf8 is False
    assert_short_lines(out.data)


def test_message_id_and_date_are_generated_and_well_formed() -> None:
    first, second = build(), build()
    msg = parse(first.data)
    assert re.fullmatch(r"<[0-9a-f]{32}@gw\.test\.example>", first.message_id)
    assert msg["Message-ID"] == first.message_id
    assert first.message_id != second.message_id
    date = parsedate_to_datetime(str(msg["Date"]))
    assert date.tzinfo is not None
    assert msg["Date"].datetime == date


def test_message_id_and_date_given_in_headers_are_kept() -> None:
    out = build(headers={"Message-ID": "<order-42@shop.example>", "Date": "Tue, 01 Jul 2025 10:00:00 +0200"})
    msg = parse(out.data)
    assert out.message_id == "<order-42@shop.example>"
    assert msg.get_all("Message-ID") == ["<order-42@shop.example>"]
    assert msg.get_all("Date") == ["Tue, 01 Jul 2025 10:00:00 +0200"]


def test_html_only_is_text_html() -> None:
    out = build(html="<p>Hello <b>Ann</b></p>")
    msg = parse(out.data)
    assert msg.get_content_type() == "text/html"
    assert body_text(msg) == crlf("<p>Hello <b>Ann</b></p>")


def test_text_and_html_make_multipart_alternative_plain_first() -> None:
    out = build(text="plain version", html="<p>rich version</p>")
    msg = parse(out.data)
    assert msg.get_content_type() == "multipart/alternative"
    parts = list(msg.iter_parts())
    assert [p.get_content_type() for p in parts] == ["text/plain", "text/html"]
    assert body_text(parts[0]) == crlf("plain version")
    assert body_text(parts[1]) == crlf("<p>rich version</p>")
    assert_short_lines(out.data)


def test_attachments_round_trip_byte_exact_with_their_filenames() -> None:
    blob = os.urandom(100_000)
    csv = b"id;name\r\n1;caf\xc3\xa9\n2;bare-lf\r3;bare-cr\r\n"  # line endings inside a file are the file's business
    long_name = "Rechnung für März \u2013 Übersicht der Positionen und Zahlungen 2025 (endgültig).pdf"
    attachments = [
        {"filename": "random.bin", "content": base64.b64encode(blob).decode()},
        {"filename": "data.csv", "contentType": "text/csv; charset=utf-8", "content": base64.b64encode(csv).decode()},
        {"filename": long_name, "contentType": "application/pdf", "content": base64.encodebytes(b"%PDF-1.7").decode()},
        {"filename": 'say "hi" \\ there.txt', "contentType": "text/plain", "content": ""},
    ]
    out = build(text="see attached", attachments=attachments)
    msg = parse(out.data)
    assert msg.get_content_type() == "multipart/mixed"
    body, *files = msg.iter_parts()
    assert body.get_content_type() == "text/plain"
    assert [f.get_filename() for f in files] == ["random.bin", "data.csv", long_name, 'say "hi" \\ there.txt']
    assert [f.get_content_type() for f in files] == ["application/octet-stream", "text/csv", "application/pdf", "text/plain"]
    assert [f.get_payload(decode=True) for f in files] == [blob, csv, b"%PDF-1.7", b""]
    assert all(f.get_content_disposition() == "attachment" for f in files)
    assert all(f["Content-Transfer-Encoding"] == "base64" for f in files)
    assert_short_lines(out.data, limit=78)
    base64_lines = [line for line in lines_of(out.data) if len(line) == 76]
    assert len(base64_lines) > 1000  # 100 kB as 76-character lines


def test_attachments_without_a_body_are_a_mixed_message_of_files() -> None:
    out = build(attachments=[{"filename": "a.bin", "content": "AAEC"}])
    msg = parse(out.data)
    assert msg.get_content_type() == "multipart/mixed"
    (only,) = msg.iter_parts()
    assert only.get_payload(decode=True) == b"\x00\x01\x02"


def test_inline_parts_sit_in_multipart_related_next_to_the_html() -> None:
    png = os.urandom(300)
    out = build(
        text="logo below",
        html='<img src="cid:logo@shop.example">',
        attachments=[
            {"filename": "logo.png", "contentType": "image/png", "content": base64.b64encode(png).decode(),
             "contentId": "<logo@shop.example>"},
            {"filename": "terms.pdf", "contentType": "application/pdf", "content": "JVBERg=="},
        ],
    )
    msg = parse(out.data)
    assert msg.get_content_type() == "multipart/mixed"
    alternative, terms = msg.iter_parts()
    assert alternative.get_content_type() == "multipart/alternative"
    plain, related = alternative.iter_parts()
    assert plain.get_content_type() == "text/plain"
    assert related.get_content_type() == "multipart/related"
    assert related.get_param("type") == "text/html"
    html, logo = related.iter_parts()
    assert html.get_content_type() == "text/html"
    assert logo["Content-ID"] == "<logo@shop.example>"
    assert logo.get_content_disposition() == "inline"
    assert logo.get_payload(decode=True) == png
    assert terms.get_filename() == "terms.pdf"
    assert terms.get_content_disposition() == "attachment"


def test_content_id_without_html_is_an_ordinary_attachment() -> None:
    out = build(text="no html", attachments=[{"filename": "x.png", "content": "AA==", "contentId": "x@y"}])
    msg = parse(out.data)
    _, part = msg.iter_parts()
    assert part.get_content_disposition() == "attachment"
    assert part["Content-ID"] == "<x@y>"


# --------------------------------------------------------------------------- bodies and line lengths


def test_long_ascii_lines_become_quoted_printable_within_78() -> None:
    text = "word " * 400 + "\n" + "x" * 2000
    out = build(text=text, html="<div>" + "y" * 5000 + "</div>")
    msg = parse(out.data)
    plain, html = msg.iter_parts()
    assert plain["Content-Transfer-Encoding"] == "quoted-printable"
    assert body_text(plain) == crlf(text)
    assert body_text(html) == crlf("<div>" + "y" * 5000 + "</div>")
    assert_short_lines(out.data)


def test_mostly_ascii_text_is_quoted_printable_and_mostly_non_ascii_is_base64() -> None:
    latin = "Grüße aus Köln, the invoice is attached.\n" * 5
    cyrillic = "Здравствуйте, счёт во вложении.\n" * 5
    for text, encoding in ((latin, "quoted-printable"), (cyrillic, "base64")):
        msg = parse(build(text=text).data)
        assert msg["Content-Transfer-Encoding"] == encoding
        assert body_text(msg) == crlf(text)
        assert msg.get_content() == crlf(text)


def test_line_endings_are_normalised_and_dots_and_dashes_survive() -> None:
    text = "one\r\ntwo\rthree\nfour\n.\n--\n--=_not-a-boundary\nFrom me\n"
    out = build(text=text)
    assert body_text(parse(out.data)) == "one\r\ntwo\r\nthree\r\nfour\r\n.\r\n--\r\n--=_not-a-boundary\r\nFrom me\r\n"
    lines_of(out.data)


def test_control_characters_in_ascii_text_are_not_sent_as_7bit() -> None:
    msg = parse(build(text="null\x00byte and bell\x07").data)
    assert msg["Content-Transfer-Encoding"] == "quoted-printable"
    assert body_text(msg) == crlf("null\x00byte and bell\x07")


def test_empty_and_huge_parts() -> None:
    blob = os.urandom(2 * 1024 * 1024)
    big_text = ("lorem ipsum dolor sit amet " * 2 + "\n") * 20_000
    out = build(text="", html=big_text, attachments=[{"filename": "big.bin", "content": base64.b64encode(blob).decode()}])
    msg = parse(out.data)
    alternative, attachment = msg.iter_parts()
    plain, html = alternative.iter_parts()
    assert body_text(plain) == "\r\n"
    assert body_text(html) == crlf(big_text)
    assert attachment.get_payload(decode=True) == blob
    assert_short_lines(out.data)


# --------------------------------------------------------------------------- headers, names, addresses


def test_non_ascii_subject_and_display_names_round_trip_as_encoded_words() -> None:
    subject = "Grüße \u2013 Ihre Rechnung Nr. 42 für März ist da ✉️ " * 4
    out = build(
        **{"from": {"name": "Bücherstube Müller & Söhne", "address": "shop@example.com"}},
        to=["Ann O'Neil <ann@example.com>", {"name": "Dr. José \"Pepe\" Ñúñez, PhD", "address": "jose@example.es"}],
        cc=['"Smith, John" <john@example.com>'],
        reply_to=["Støtte <support@example.com>"],
        subject=subject,
    )
    assert out.data.isascii()
    assert out.smtputf8 is False
    msg = parse(out.data)
    assert msg["Subject"] == subject
    assert msg["From"].addresses[0].display_name == "Bücherstube Müller & Söhne"
    assert [(a.display_name, a.addr_spec) for a in msg["To"].addresses] == [
        ("Ann O'Neil", "ann@example.com"),
        ('Dr. José "Pepe" Ñúñez, PhD', "jose@example.es"),
    ]
    assert [a.display_name for a in msg["Cc"].addresses] == ["Smith, John"]
    assert msg["Reply-To"].addresses[0].display_name == "Støtte"
    assert "=?utf-8?b?" in out.data.decode()
    long_name = "Anwaltskanzlei Döring, Weiß & Partner \u2013 Rechtsanwälte und Notare"
    out = build(**{"from": {"name": long_name, "address": "kanzlei@example.de"}})
    assert exact_display_name(out.data, "From") == long_name
    assert_short_lines(out.data)


def test_long_ascii_subject_folds_at_spaces_and_unfolds_exactly() -> None:
    subject = "Your  order  " + " ".join(f"item-{i}" for i in range(60)) + " =not?encoded"
    out = build(subject=subject)
    msg = parse(out.data)
    assert msg["Subject"] == subject
    assert "=?utf-8" not in out.data.decode()
    assert_short_lines(out.data)


def test_many_recipients_fold_between_addresses() -> None:
    to = [f"Person Number {i} <person.{i}@example.com>" for i in range(40)]
    out = build(to=to)
    msg = parse(out.data)
    assert [a.addr_spec for a in msg["To"].addresses] == [f"person.{i}@example.com" for i in range(40)]
    assert_short_lines(out.data)


def test_idn_domain_becomes_punycode_so_no_smtputf8_is_needed() -> None:
    out = build(**{"from": "Shop <info@bücher.example>"}, to=["kunde@münchen.example"])
    assert out.sender == "info@xn--bcher-kva.example"
    assert out.recipients == ["kunde@xn--mnchen-3ya.example"]
    assert out.header_from == ["info@xn--bcher-kva.example"]
    assert out.smtputf8 is False
    assert out.data.isascii()
    assert parse(out.data)["To"].addresses[0].domain == "xn--mnchen-3ya.example"


def test_utf8_local_part_sets_smtputf8_and_keeps_unicode() -> None:
    out = build(to=["Jörg <jörg@bücher.example>", "plain@bücher.example"])
    assert out.smtputf8 is True
    assert out.recipients == ["jörg@bücher.example", "plain@xn--bcher-kva.example"]
    msg = parse(out.data, utf8=True)
    assert [a.addr_spec for a in msg["To"].addresses] == ["jörg@bücher.example", "plain@xn--bcher-kva.example"]
    assert msg["To"].addresses[0].display_name == "Jörg"


def test_reply_to_with_utf8_local_part_also_needs_smtputf8() -> None:
    assert build(reply_to=["δοκιμή@example.gr"]).smtputf8 is True


def test_bcc_is_in_the_envelope_only_and_recipients_are_deduplicated() -> None:
    out = build(
        to=["ann@example.com", "Bob <bob@Example.COM>"],
        cc=["bob@example.com", "carol@example.com"],
        bcc=["audit@shop.example", "ann@EXAMPLE.com"],
    )
    assert out.recipients == ["ann@example.com", "bob@Example.COM", "carol@example.com", "audit@shop.example"]
    assert b"audit" not in out.data
    assert parse(out.data)["Bcc"] is None


def test_bcc_only_gets_an_undisclosed_recipients_group() -> None:
    out = build(to=[], bcc=["hidden@example.com"])
    msg = parse(out.data)
    assert msg["To"].addresses == ()
    assert b"hidden" not in out.data
    assert out.recipients == ["hidden@example.com"]


def test_extra_headers_are_written_and_non_ascii_values_encoded() -> None:
    out = build(headers={"X-Campaign": "spring  sale", "List-Unsubscribe": "<https://shop.example/u/1>", "X-Note": "für Sie"})
    msg = parse(out.data)
    assert msg["X-Campaign"] == "spring  sale"
    assert msg["List-Unsubscribe"] == "<https://shop.example/u/1>"
    assert msg["X-Note"] == "für Sie"


# --------------------------------------------------------------------------- validation: the field is named


INJECTIONS = ["x\r\nBcc: victim@example.com", "x\nX-Evil: 1", "x\rfoo", "\r\n", "trailing\n"]


@pytest.mark.parametrize("payload", INJECTIONS)
@pytest.mark.parametrize(
    ("fields", "where"),
    [
        (lambda v: {"subject": v}, "subject"),
        (lambda v: {"from": f"{v} <a@example.com>"}, "from"),
        (lambda v: {"from": {"name": v, "address": "a@example.com"}}, "from"),
        (lambda v: {"to": ["ok@example.com", {"name": v, "address": "b@example.com"}]}, "to[1]"),
        (lambda v: {"cc": [f"a{v}@example.com"]}, "cc[0]"),
        (lambda v: {"replyTo": [f"{v} <r@example.com>"]}, "replyTo[0]"),
        (lambda v: {"headers": {"X-Foo": v}}, "headers.X-Foo"),
        (lambda v: {"attachments": [{"filename": f"a{v}.txt", "content": ""}]}, "attachments[0].filename"),
    ],
)
def test_cr_or_lf_in_any_header_value_is_refused_with_the_field_named(fields: Any, where: str, payload: str) -> None:
    with pytest.raises(ValidationError) as exc:
        request(**fields(payload))
    assert fields_of(exc) == {where}
    assert any("CR and LF" in p["message"] for p in describe_validation_error(exc.value))


@pytest.mark.parametrize("name", ["From", "bcc", "TO", "Reply-To", "Subject", "Sender", "Content-Type",
                                  "content-transfer-encoding", "MIME-Version", "Content-Disposition"])
def test_reserved_headers_are_refused(name: str) -> None:
    with pytest.raises(ValidationError) as exc:
        request(headers={name: "x"})
    assert fields_of(exc) == {f"headers.{name}"}
    assert "reserved" in describe_validation_error(exc.value)[0]["message"]


@pytest.mark.parametrize("name", ["X Foo", "X:Foo", "", "X-Ünicode", "X-\x00"])
def test_invalid_header_names_are_refused(name: str) -> None:
    with pytest.raises(ValidationError) as exc:
        request(headers={name: "x"})
    assert fields_of(exc) == {f"headers.{name}"}


def test_duplicate_header_names_differing_in_case_are_refused() -> None:
    with pytest.raises(ValidationError) as exc:
        request(headers={"X-Tag": "a", "x-tag": "b"})
    assert fields_of(exc) == {"headers.x-tag"}


@pytest.mark.parametrize(
    ("headers", "field"),
    [({"Message-ID": "no-brackets@x"}, "headers.Message-ID"), ({"Date": "yesterday"}, "headers.Date")],
)
def test_given_message_id_and_date_must_be_well_formed(headers: dict[str, str], field: str) -> None:
    with pytest.raises(ValidationError) as exc:
        request(headers=headers)
    assert fields_of(exc) == {field}


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"to": [], "cc": [], "bcc": []}, "to"),
        ({"text": None}, "text"),
        ({"to": ["ok@example.com", "not-an-address"]}, "to[1]"),
        ({"to": ["two@at@example.com"]}, "to[0]"),
        ({"to": ['"quoted local"@example.com']}, "to[0]"),
        ({"to": ["a@exa_mple.com"]}, "to[0]"),
        ({"to": ["a@-bad-.example"]}, "to[0]"),
        ({"to": ["a@example.com", "b@bü\u200dcher.example"]}, "to[1]"),
        ({"to": ["a b@example.com"]}, "to[0]"),
        ({"to": ["a..b@example.com"]}, "to[0]"),
        ({"to": [f"{'x' * 65}@example.com"]}, "to[0]"),
        ({"to": "ann@example.com"}, "to"),
        ({"to": [{"address": "a@example.com", "email": "x"}]}, "to[0]"),
        ({"from": 42}, "from"),
        ({"from": {"name": "n" * 257, "address": "a@example.com"}}, "from"),
        ({"bodyText": "typo"}, "bodyText"),
        ({"attachments": [{"filename": "a", "content": "not base64!"}]}, "attachments[0].content"),
        ({"attachments": [{"filename": "a", "content": "QUJD"}, {"filename": "b", "content": "QUJ"}]}, "attachments[1].content"),
        ({"attachments": [{"filename": "a", "content": "", "contentType": "multipart/mixed"}]}, "attachments[0].contentType"),
        ({"attachments": [{"filename": "a", "content": "", "contentType": "text"}]}, "attachments[0].contentType"),
        ({"attachments": [{"filename": "a", "content": "", "contentId": "has space"}]}, "attachments[0].contentId"),
        ({"attachments": [{"filename": " ", "content": ""}]}, "attachments[0].filename"),
        ({"subject": "lone \ud800 surrogate"}, "subject"),
        ({"text": "lone \udfff surrogate"}, "text"),
        ({"subject": "bell\x07"}, "subject"),
    ],
)
def test_invalid_requests_name_the_field(fields: dict[str, Any], field: str) -> None:
    with pytest.raises(ValidationError) as exc:
        request(**fields)
    assert fields_of(exc) == {field}
    assert all(p["message"] for p in describe_validation_error(exc.value))


def test_invalid_json_is_reported_against_the_body() -> None:
    with pytest.raises(ValidationError) as exc:
        SendRequest.model_validate_json(b'{"from": ')
    assert fields_of(exc) == {"body"}


def test_address_literals_and_single_label_domains_are_accepted() -> None:
    out = build(to=["root@[192.0.2.1]", "ops@[IPv6:2001:db8::1]", "dev@localhost"])
    assert out.recipients == ["root@[192.0.2.1]", "ops@[IPv6:2001:db8::1]", "dev@localhost"]


def test_the_json_schema_documents_both_address_forms() -> None:
    schema = SendRequest.model_json_schema(by_alias=True)
    assert {"from", "to", "replyTo", "attachments"} <= set(schema["properties"])
    assert schema["required"] == ["from"]
    dumped = request(to=["Ann <ann@example.com>"]).model_dump(by_alias=True)
    assert dumped["to"] == [{"name": "Ann", "address": "ann@example.com"}]


# --------------------------------------------------------------------------- raw message/rfc822 bodies

RAW = (
    b"From: Billing <billing@shop.example>\n"
    b"To: Ann <ann@example.com>, undisclosed:;\n"
    b"Cc: bob@example.com\n"
    b"Bcc: audit@shop.example,\n"
    b"  second-audit@shop.example\n"
    b"Subject: raw\n"
    b"X-Signed: keep  these   spaces\n"
    b"\n"
    b"body line 1\n"
    b"body line 2 with trailing spaces   \n"
)


def test_raw_envelope_comes_from_the_headers_and_bcc_is_stripped() -> None:
    out = parse_raw_message(RAW, mail_from=None, rcpt_to=None)
    assert out.sender == "billing@shop.example"
    assert out.header_from == ["billing@shop.example"]
    assert out.recipients == ["ann@example.com", "bob@example.com", "audit@shop.example", "second-audit@shop.example"]
    assert b"audit" not in out.data
    assert b"Bcc" not in out.data
    assert out.smtputf8 is False
    msg = parse(out.data)
    assert msg["Bcc"] is None
    assert msg["Subject"] == "raw"
    assert msg["Message-ID"] == out.message_id
    assert out.message_id.endswith("@shop.example>")
    assert parsedate_to_datetime(str(msg["Date"])).tzinfo is not None


def test_raw_bytes_are_preserved_apart_from_line_endings() -> None:
    out = parse_raw_message(RAW, mail_from=None, rcpt_to=None)
    assert b"X-Signed: keep  these   spaces\r\n" in out.data
    assert out.data.endswith(b"\r\n\r\nbody line 1\r\nbody line 2 with trailing spaces   \r\n")
    lines_of(out.data)
    head = out.data.split(b"\r\n\r\n", 1)[0]
    assert head.startswith(b"From: Billing <billing@shop.example>\r\nTo: Ann <ann@example.com>, undisclosed:;\r\n")


def test_raw_line_endings_are_normalised_to_crlf() -> None:
    raw = b"From: a@example.com\r\nTo: b@example.com\nSubject: mixed\r\rone\rtwo\r\nthree\nfour"
    out = parse_raw_message(raw, mail_from=None, rcpt_to=None)
    assert out.data.endswith(b"\r\n\r\none\r\ntwo\r\nthree\r\nfour\r\n")
    lines_of(out.data)
    assert parse(out.data)["Subject"] == "mixed"


def test_raw_existing_message_id_and_date_are_kept() -> None:
    raw = b"From: a@example.com\nTo: b@example.com\nMessage-ID: <mine@example.com>\nDate: Tue, 01 Jul 2025 10:00:00 +0000\n\nhi\n"
    out = parse_raw_message(raw, mail_from=None, rcpt_to=None)
    assert out.message_id == "<mine@example.com>"
    msg = parse(out.data)
    assert msg.get_all("Message-ID") == ["<mine@example.com>"]
    assert msg.get_all("Date") == ["Tue, 01 Jul 2025 10:00:00 +0000"]
    assert out.data == raw.replace(b"\n", b"\r\n")


def test_raw_overrides_replace_the_envelope_but_bcc_is_still_stripped() -> None:
    out = parse_raw_message(RAW, mail_from="bounces@shop.example", rcpt_to=["only@example.com", "kunde@münchen.example"])
    assert out.sender == "bounces@shop.example"
    assert out.recipients == ["only@example.com", "kunde@xn--mnchen-3ya.example"]
    assert out.header_from == ["billing@shop.example"]
    assert b"Bcc" not in out.data


def test_raw_sender_header_is_the_envelope_sender() -> None:
    raw = b"From: a@example.com, b@example.com\nSender: assistant@example.com\nTo: c@example.com\n\nhi\n"
    out = parse_raw_message(raw, mail_from=None, rcpt_to=None)
    assert out.sender == "assistant@example.com"
    assert out.header_from == ["a@example.com", "b@example.com"]


def test_raw_utf8_headers_and_idn_recipients() -> None:
    raw = "From: Jörg <jörg@bücher.example>\nTo: kunde@münchen.example\nSubject: Grüße\n\nhallo\n".encode()
    out = parse_raw_message(raw, mail_from=None, rcpt_to=None)
    assert out.smtputf8 is True
    assert out.sender == "jörg@bücher.example"
    assert out.recipients == ["kunde@xn--mnchen-3ya.example"]
    assert out.message_id.endswith("@xn--bcher-kva.example>")
    assert parse(out.data, utf8=True)["Subject"] == "Grüße"


@pytest.mark.parametrize(
    ("raw", "kwargs", "field"),
    [
        (b"", {}, "body"),
        (b"To: b@example.com\n\nno from\n", {}, "headers.From"),
        (b"From: a@example.com\nFrom: b@example.com\nTo: c@example.com\n\nx\n", {}, "headers.From"),
        (b"From: undisclosed:;\nTo: c@example.com\n\nx\n", {}, "headers.From"),
        (b"From: a@example.com\nSubject: nobody\n\nx\n", {}, "to"),
        (b"From: a@example.com\nTo: not an address\n\nx\n", {}, "headers.To"),
        (b"From: a@example.com\nTo: b@example.com c@example.com\n\nx\n", {}, "headers.To"),
        (b"From: a@example.com\nTo: b@example.com\nCc: b@example.com;c@example.com\n\nx\n", {}, "headers.Cc"),
        (b"From: a@example.com\nTo: <b@example.com\n\nx\n", {}, "headers.To"),
        (b"From a@example.com Mon Jan 1\nTo: c@example.com\n\nx\n", {}, "body"),
        (b" folded first\nFrom: a@example.com\n\nx\n", {}, "body"),
        (b"From: a@example.com\nTo: c@example.com\n\nx\n", {"mail_from": "bad"}, "from"),
        (b"From: a@example.com\nTo: c@example.com\n\nx\n", {"rcpt_to": ["ok@example.com", "x\r\n@y"]}, "to[1]"),
        (b"From: a@example.com\nTo: c@example.com\n\nx\n", {"rcpt_to": []}, "to"),
        (b"From: \xff@example.com\nTo: c@example.com\n\nx\n", {}, "headers.From"),
    ],
)
def test_raw_errors_name_the_field(raw: bytes, kwargs: dict[str, Any], field: str) -> None:
    with pytest.raises(MessageError) as exc:
        parse_raw_message(raw, mail_from=kwargs.get("mail_from"), rcpt_to=kwargs.get("rcpt_to"))
    assert exc.value.field == field
    assert exc.value.detail


# --------------------------------------------------------------------------- properties (issue 8)

QUICK = settings(max_examples=100, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
ANY_TEXT = st.text(st.characters(codec=None, exclude_categories=()), max_size=200)
SAFE_TEXT = st.text(st.characters(exclude_categories=("Cs", "Cc")) | st.just(" "), max_size=200)
FORBIDDEN = re.compile(r"[\x00-\x1f\x7f\ud800-\udfff]")


@QUICK
@given(subject=ANY_TEXT, name=ANY_TEXT)
def test_property_any_subject_and_name_round_trip_or_are_refused(subject: str, name: str) -> None:
    fields = {"subject": subject, "from": {"name": name, "address": "a@example.com"}}
    bad = {f for f, v in (("subject", subject), ("from", name)) if FORBIDDEN.search(v)}
    if bad:
        with pytest.raises(ValidationError) as exc:
            request(**fields)
        assert fields_of(exc) == bad
        return
    out = build(**fields)
    msg = parse(out.data)
    assert msg["Subject"] == subject
    (mailbox,) = msg["From"].addresses
    assert mailbox.addr_spec == "a@example.com"
    if name:
        assert exact_display_name(out.data, "From") == name
        assert "".join(mailbox.display_name.split()) == "".join(name.split())
    assert_short_lines(out.data)


@QUICK
@given(
    before=SAFE_TEXT,
    after=SAFE_TEXT,
    newline=st.sampled_from(["\r", "\n", "\r\n"]),
    where=st.sampled_from(["subject", "name", "header", "filename", "address"]),
)
def test_property_cr_or_lf_anywhere_is_always_refused(before: str, after: str, newline: str, where: str) -> None:
    value = before + newline + after
    cases: dict[str, dict[str, Any]] = {
        "subject": {"subject": value},
        "name": {"to": [{"name": value, "address": "b@example.com"}]},
        "header": {"headers": {"X-Any": value}},
        "filename": {"attachments": [{"filename": value, "content": ""}]},
        "address": {"cc": [value + "@example.com"]},
    }
    expected = {"subject": "subject", "name": "to[0]", "header": "headers.X-Any",
                "filename": "attachments[0].filename", "address": "cc[0]"}[where]
    with pytest.raises(ValidationError) as exc:
        request(**cases[where])
    assert fields_of(exc) == {expected}


@QUICK
@given(text=ANY_TEXT.filter(lambda t: not re.search(r"[\ud800-\udfff]", t)), html=st.none() | SAFE_TEXT)
def test_property_bodies_round_trip(text: str, html: str | None) -> None:
    out = build(text=text, html=html)
    msg = parse(out.data)
    plain = msg if html is None else next(msg.iter_parts())
    assert body_text(plain) == crlf(text)
    assert max(len(line) for line in lines_of(out.data)) <= 998


@QUICK
@given(
    files=st.lists(st.tuples(SAFE_TEXT.filter(str.strip), st.binary(max_size=3000), st.booleans()), min_size=1, max_size=4),
    html=st.booleans(),
)
def test_property_attachments_round_trip_byte_exact(files: list[tuple[str, bytes, bool]], html: bool) -> None:
    attachments = [
        {"filename": name, "content": base64.b64encode(data).decode(), **({"contentId": f"part{i}@x"} if inline else {})}
        for i, (name, data, inline) in enumerate(files)
    ]
    out = build(text="t", html="<p>h</p>" if html else None, attachments=attachments)
    msg = parse(out.data)
    received = [(p.get_filename(), p.get_payload(decode=True), p["Content-ID"]) for p in msg.walk() if p.get_filename()]
    sent = [(name.strip(), data, f"<part{i}@x>" if inline else None) for i, (name, data, inline) in enumerate(files)]
    if html:  # inline parts travel next to the HTML, ahead of the other files
        sent = [s for s in sent if s[2] is not None] + [s for s in sent if s[2] is None]
    assert received == sent
    assert_short_lines(out.data)


LOCAL = st.text(st.sampled_from("abcxyz019.-_+äöüéßжд中文"), min_size=1, max_size=20)
LABEL = st.text(st.sampled_from("abcxyz019-äöüéжд中文"), min_size=1, max_size=15)


@QUICK
@given(local=LOCAL, labels=st.lists(LABEL, min_size=1, max_size=3))
def test_property_idn_and_smtputf8_addresses(local: str, labels: list[str]) -> None:
    address = f"{local}@{'.'.join(labels)}.example"
    try:
        out = build(to=[address])
    except ValidationError as exc:
        assert {p["field"] for p in describe_validation_error(exc)} == {"to[0]"}
        return
    (recipient,) = out.recipients
    rcpt_local, _, rcpt_domain = recipient.rpartition("@")
    assert rcpt_local == local
    assert out.smtputf8 is (not local.isascii())
    assert rcpt_domain.isascii() or not local.isascii()
    msg = parse(out.data, utf8=out.smtputf8)
    assert [a.addr_spec for a in msg["To"].addresses] == [recipient]


@QUICK
@given(body=st.binary(max_size=2000), bcc=st.booleans())
def test_property_raw_body_bytes_survive_apart_from_line_endings(body: bytes, bcc: bool) -> None:
    head = b"From: a@example.com\nTo: b@example.com\n" + (b"Bcc: hidden-bcc@example.com\n" if bcc else b"")
    out = parse_raw_message(head + b"\n" + body, mail_from=None, rcpt_to=None)
    normalised = body.replace(b"\r\n", b"\n").replace(b"\r", b"\n").replace(b"\n", b"\r\n")
    expected = normalised + (b"\r\n" if normalised and not normalised.endswith(b"\r\n") else b"")
    sent_head, sent_body = out.data.split(b"\r\n\r\n", 1)
    assert sent_body == expected
    assert out.recipients == (["b@example.com", "hidden-bcc@example.com"] if bcc else ["b@example.com"])
    assert b"hidden-bcc" not in sent_head
