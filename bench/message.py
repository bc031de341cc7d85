"""Micro-benchmark: building a 2 KB text message, mailgate's builder vs the stdlib EmailMessage model.

Run ``python -m bench.message [--quick]``. Both sides build the same message
(From with a display name, To, Subject, Date, Message-ID, a 2 KB ASCII text
body) in interleaved rounds in one process; the table shows the median time
per message and the last line is JSON with the ratios. "with JSON" includes
turning the request body into the model (pydantic ``model_validate_json``)
versus ``json.loads`` for the stdlib side, which is what a request costs.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable
from datetime import UTC, datetime
from email import policy
from email.message import EmailMessage
from email.utils import format_datetime, make_msgid

from mailgate.gateway.compose import SendRequest, compose_message

HOST = "gw.bench.example"
LINE = "The quick brown fox jumps over the lazy dog, again and again and again.\n"
TEXT = (LINE * (2048 // len(LINE) + 1))[:2048]
BODY = json.dumps(
    {
        "from": "Billing <billing@shop.example>",
        "to": ["customer@example.com"],
        "subject": "Your invoice 2025-0042",
        "text": TEXT,
    }
).encode()


def stdlib_build(fields: dict[str, object]) -> bytes:
    """The baseline the issue measured: the EmailMessage object model, flattened for SMTP."""
    msg = EmailMessage()
    msg["From"] = fields["from"]
    msg["To"] = ", ".join(fields["to"])  # type: ignore[arg-type]
    msg["Subject"] = fields["subject"]
    msg["Date"] = format_datetime(datetime.now(UTC))
    msg["Message-ID"] = make_msgid(domain=HOST)
    msg.set_content(fields["text"])
    return msg.as_bytes(policy=policy.SMTP)


def time_per_call(fn: Callable[[], object], count: int) -> float:
    start = time.perf_counter()
    for _ in range(count):
        fn()
    return (time.perf_counter() - start) / count


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer rounds (about a second)")
    args = parser.parse_args()
    rounds, count = (5, 300) if args.quick else (15, 1000)

    fields = json.loads(BODY)
    request = SendRequest.model_validate_json(BODY)
    built = compose_message(request, hostname=HOST)
    assert len(built.data) > 2048 and built.data.endswith(b"\r\n")

    cases: dict[str, Callable[[], object]] = {
        "mailgate build": lambda: compose_message(request, hostname=HOST),
        "stdlib build": lambda: stdlib_build(fields),
        "mailgate with JSON": lambda: compose_message(SendRequest.model_validate_json(BODY), hostname=HOST),
        "stdlib with JSON": lambda: stdlib_build(json.loads(BODY)),
    }
    samples: dict[str, list[float]] = {name: [] for name in cases}
    deadline = time.monotonic() + (10 if args.quick else 60)
    for _ in range(rounds):  # interleaved, so drift in machine load hits every case alike
        for name, fn in cases.items():
            samples[name].append(time_per_call(fn, count))
        if time.monotonic() > deadline:
            break
    median_us = {name: statistics.median(values) * 1e6 for name, values in samples.items()}

    print(f"{'case':<22}{'us/message':>12}{'messages/s':>14}")
    for name, us in median_us.items():
        print(f"{name:<22}{us:>12.1f}{1e6 / us:>14.0f}")
    print(
        json.dumps(
            {
                "message_bytes": len(built.data),
                "mailgate_build_us": round(median_us["mailgate build"], 2),
                "stdlib_build_us": round(median_us["stdlib build"], 2),
                "build_speedup": round(median_us["stdlib build"] / median_us["mailgate build"], 1),
                "mailgate_with_json_us": round(median_us["mailgate with JSON"], 2),
                "stdlib_with_json_us": round(median_us["stdlib with JSON"], 2),
                "with_json_speedup": round(median_us["stdlib with JSON"] / median_us["mailgate with JSON"], 1),
            }
        )
    )


if __name__ == "__main__":
    main()
