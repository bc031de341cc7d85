"""docs/security.md's "promise → test" table names tests that exist: a renamed or deleted test fails here."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
TABLE = (ROOT / "docs" / "security.md").read_text().split("## Promise → test", 1)[1]


def _rows() -> list[str]:
    return [line for line in TABLE.splitlines() if line.startswith("| ") and not line.startswith("| promise")]


def _cited(row: str) -> tuple[list[str], list[str]]:
    """The test files a row names, and the test names it cites (qualified by ``::`` or bare)."""
    files = re.findall(r"`(tests/[\w/]+\.py)", row)
    names = re.findall(r"`(?:tests/[\w/]+\.py)?::(test_\w+)`|`(test_\w+)`", row)
    return files, [qualified or bare for qualified, bare in names]


def test_every_cited_file_and_test_exists() -> None:
    sources = {path.relative_to(ROOT).as_posix(): path.read_text() for path in (ROOT / "tests").rglob("test_*.py")}
    everything = "\n".join(sources.values())
    rows = _rows()
    assert len(rows) >= 10
    for row in rows:
        files, names = _cited(row)
        assert files, f"a promise without a test file: {row[:80]}"
        for file in files:
            assert file in sources, f"{file} does not exist"
        for name in names:
            assert re.search(rf"\bdef {name}\(", everything), f"{name} is cited in docs/security.md but not defined"
