"""The Dockerfile and .dockerignore, checked without a Docker engine (there is none here).

What can be proved without building: the instructions are well formed and
follow the promises (two stages on python:3.11-slim, a numeric non-root user
that matches the chart, `mailgate` as entry point), and the build context that
.dockerignore lets through is enough for the Dockerfile's `pip install .` to
produce a package with every file of `mailgate/` (a real wheel build).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tomllib
import zipfile
from dataclasses import dataclass
from pathlib import Path

import yaml

from tests.k8s.helm.helm import CHART, REPO_ROOT

DOCKERFILE = REPO_ROOT / "Dockerfile"
DOCKERIGNORE = REPO_ROOT / ".dockerignore"
# Not walked when building the context; the tests assert none of them may be in it.
LOCAL_ONLY_DIRS = {".git", ".venv", ".mypy_cache", ".ruff_cache", ".pytest_cache", ".hypothesis", "__pycache__"}


@dataclass(frozen=True)
class Instruction:
    keyword: str
    value: str


def parse_dockerfile(text: str) -> list[Instruction]:
    """Instructions with line continuations joined and comments dropped
    (the subset of the Dockerfile grammar this project's Dockerfile uses)."""
    instructions: list[Instruction] = []
    pending = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        keyword, _, value = (pending + line).partition(" ")
        instructions.append(Instruction(keyword.upper(), value.strip()))
        pending = ""
    assert not pending, "Dockerfile ends inside a line continuation"
    return instructions


def stages(instructions: list[Instruction]) -> list[list[Instruction]]:
    """The build stages, each starting with its FROM."""
    result: list[list[Instruction]] = []
    for ins in instructions:
        if ins.keyword == "FROM":
            result.append([])
        if result:
            result[-1].append(ins)
    return result


def _glob_regex(pattern: str) -> re.Pattern[str]:
    """A .dockerignore pattern (Go filepath.Match plus `**`) as a regex on slash paths."""
    out, i = "", 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out, i = out + "(?:.*/)?", i + 3
        elif pattern.startswith("**", i):
            out, i = out + ".*", i + 2
        elif pattern[i] == "*":
            out, i = out + "[^/]*", i + 1
        elif pattern[i] == "?":
            out, i = out + "[^/]", i + 1
        else:
            out, i = out + re.escape(pattern[i]), i + 1
    return re.compile(out + r"\Z")


def dockerignore_excludes(patterns: list[str], path: str) -> bool:
    """Docker's rule: the last pattern that matches the path or one of its parent
    directories decides; a `!` pattern re-includes."""
    parts = path.split("/")
    candidates = ["/".join(parts[: n + 1]) for n in range(len(parts))]
    excluded = False
    for pattern in patterns:
        negated = pattern.startswith("!")
        regex = _glob_regex(pattern.lstrip("!").strip("/"))
        if any(regex.match(c) for c in candidates):
            excluded = not negated
    return excluded


def _dockerignore_patterns() -> list[str]:
    lines = (line.strip() for line in DOCKERIGNORE.read_text().splitlines())
    return [line for line in lines if line and not line.startswith("#")]


def build_context(dest: Path) -> tuple[list[str], list[str]]:
    """Copy the files .dockerignore lets through into ``dest``; returns the paths
    kept and the paths left out (one walk, so both describe the same moment)."""
    patterns = _dockerignore_patterns()
    kept: list[str] = []
    left_out: list[str] = []
    for root, dirs, files in os.walk(REPO_ROOT):
        dirs[:] = [d for d in dirs if d not in LOCAL_ONLY_DIRS]  # big, and local state only
        for name in files:
            rel = (Path(root) / name).relative_to(REPO_ROOT).as_posix()
            if dockerignore_excludes(patterns, rel):
                left_out.append(rel)
                continue
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO_ROOT / rel, dest / rel)
            kept.append(rel)
    return kept, left_out


# --------------------------------------------------------------------------- tests


def test_dockerignore_matcher_follows_docker_semantics() -> None:
    """The matcher the other tests rely on: allow-list, parent directories, `**`."""
    patterns = ["*", "!mailgate", "**/__pycache__", "!README.md"]
    assert dockerignore_excludes(patterns, ".venv/bin/python")
    for local in LOCAL_ONLY_DIRS:
        assert dockerignore_excludes(_dockerignore_patterns(), f"{local}/x"), f"{local} must stay out of the image"
    assert dockerignore_excludes(patterns, "secrets.env")
    assert not dockerignore_excludes(patterns, "mailgate/pool/pool.py")
    assert dockerignore_excludes(patterns, "mailgate/pool/__pycache__/pool.cpython-311.pyc")
    assert not dockerignore_excludes(patterns, "README.md")


def test_dockerfile_two_slim_stages_non_root_user_matching_the_chart() -> None:
    instructions = parse_dockerfile(DOCKERFILE.read_text())
    args = dict(ins.value.split("=", 1) for ins in instructions if ins.keyword == "ARG" and "=" in ins.value)
    build, runtime = stages(instructions)

    for stage in (build, runtime):
        image = re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], stage[0].value.split()[0])
        assert image == "python:3.11-slim"

    runtime_copies = [ins.value for ins in runtime if ins.keyword in ("COPY", "ADD")]
    assert runtime_copies and all(value.startswith("--from=build ") for value in runtime_copies), (
        "the runtime stage takes only the built virtualenv, never the source tree"
    )
    assert any("pip install ." in ins.value for ins in build if ins.keyword == "RUN")

    (user,) = [ins.value for ins in runtime if ins.keyword == "USER"]
    uid, gid = (int(x) for x in user.split(":"))
    assert uid > 0 and gid > 0, "numeric and non-root, so runAsNonRoot can be verified"
    security = yaml.safe_load((CHART / "values.yaml").read_text())["podSecurityContext"]
    assert (security["runAsUser"], security["runAsGroup"]) == (uid, gid)
    assert [ins.keyword for ins in runtime].index("USER") > max(
        i for i, ins in enumerate(runtime) if ins.keyword in ("RUN", "COPY")
    ), "USER after the install steps: the runtime user cannot modify the installed code"

    (entrypoint,) = [ins.value for ins in runtime if ins.keyword == "ENTRYPOINT"]
    assert json.loads(entrypoint) == ["mailgate"]
    scripts = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert "mailgate" in scripts


def test_build_context_installs_every_package_file(tmp_path: Path) -> None:
    """`pip install .` on exactly the files .dockerignore admits yields a package
    with every file of mailgate/ (a data file that setuptools would leave out,
    or a context that lacks the readme, fails here instead of in the image)."""
    context = tmp_path / "context"
    context.mkdir()
    kept, left_out = build_context(context)
    assert [p for p in left_out if p.startswith("mailgate/")] == [], ".dockerignore leaves package files out"
    instructions = parse_dockerfile(DOCKERFILE.read_text())
    for ins in instructions:
        if ins.keyword == "COPY" and not ins.value.startswith("--from"):
            for copied in ins.value.split()[:-1]:  # the last word is the destination
                assert (context / copied).exists(), f"COPY {copied}: not in the build context"
    assert not [p for p in kept if p.endswith((".pyc", ".env")) or "__pycache__" in p]

    wheel_dir = tmp_path / "wheel"
    result = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "-w", str(wheel_dir), str(context)],
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert result.returncode == 0, result.stderr
    (wheel,) = wheel_dir.glob("mailgate-*.whl")
    with zipfile.ZipFile(wheel) as zf:
        packaged = {n for n in zf.namelist() if n.startswith("mailgate/")}
    source = {p for p in kept if p.startswith("mailgate/")}
    assert source - packaged == set(), "files of mailgate/ that `pip install .` would leave out of the image"
