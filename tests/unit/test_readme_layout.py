"""The README's layout lists every package and every top-level module: a newcomer's first map must be whole."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_the_readme_layout_names_every_package_and_module() -> None:
    readme = (ROOT / "README.md").read_text()
    layout = readme[readme.index("## Layout") :]
    layout = layout[: layout.index("\n## ", 1)]
    packages = sorted(p.parent.name for p in (ROOT / "mailgate").glob("*/__init__.py"))
    missing = [p for p in packages if f"mailgate/{p}/" not in layout]
    assert not missing, f"packages missing from the README layout: {missing}"
    modules = sorted(p.stem for p in (ROOT / "mailgate").glob("*.py") if not p.stem.startswith("_"))
    named = set(re.findall(r"mailgate/(\w+)\.py", layout)) | set(re.findall(r"\b(\w+)\b", layout.split("mailgate/*.py", 1)[1]))
    assert not [m for m in modules if m not in named], f"modules missing: {[m for m in modules if m not in named]}"


def test_the_architecture_map_names_only_files_that_exist() -> None:
    text = (ROOT / "docs" / "architecture.md").read_text()
    paths = set(re.findall(r"`((?:relay|gateway|ingress|pool|queue|operator|standalone|oauth2)/\w+\.py)`", text))
    assert len(paths) > 30
    assert not [p for p in sorted(paths) if not (ROOT / "mailgate" / p).exists()]
