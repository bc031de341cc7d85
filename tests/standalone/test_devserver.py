"""The capture SMTP server of `mailgate dev`: real SMTP in, parsed messages out, bounded memory."""

from __future__ import annotations

from email.message import EmailMessage

import aiosmtplib

from mailgate.devserver import CaptureServer, CaptureStore


async def test_captures_envelope_headers_bodies_and_attachments() -> None:
    server = await CaptureServer().start()
    try:
        message = EmailMessage()
        message["From"] = "Shop <billing@shop.example>"
        message["To"] = "ana@example.com"
        message["Subject"] = "Grüße"
        message.set_content("plain body\n")
        message.add_alternative("<p>html body</p>\n", subtype="html")
        message.add_attachment(b"\x00\x01\x02", maintype="application", subtype="octet-stream", filename="a.bin")
        await aiosmtplib.send(
            message,
            hostname="127.0.0.1",
            port=server.port,
            sender="bounce@shop.example",
            recipients=["ana@example.com", "bo@example.com"],
            start_tls=False,
            use_tls=False,
        )
    finally:
        await server.stop()

    [captured] = server.store.messages()
    envelope = captured["envelope"]
    assert envelope["mailFrom"] == "bounce@shop.example"
    assert envelope["rcptTos"] == ["ana@example.com", "bo@example.com"]
    assert f"SIZE={captured['size']}" in envelope["mailOptions"]
    assert captured["subject"] == "Grüße"
    assert {"name": "From", "value": "Shop <billing@shop.example>"} in captured["headers"]
    assert captured["text"] == "plain body\n"
    assert captured["html"] == "<p>html body</p>\n"
    assert captured["attachments"] == [{"filename": "a.bin", "contentType": "application/octet-stream", "size": 3}]
    assert "Subject: =?utf-8?" in captured["raw"]


def test_store_drops_oldest_beyond_count_and_bytes() -> None:
    store = CaptureStore(max_messages=3, max_bytes=10_000)
    for index in range(5):
        store.add("a@x.example", ["b@x.example"], [], f"Subject: {index}\r\n\r\nbody\r\n".encode())
    assert [m["subject"] for m in store.messages()] == ["2", "3", "4"]

    store.add("a@x.example", ["b@x.example"], [], b"Subject: big\r\n\r\n" + b"x" * 9_990 + b"\r\n")
    assert [m["subject"] for m in store.messages()] == ["big"]  # the newest always stays, even alone over the cap
    store.clear()
    assert store.messages() == []
