"""API key files: hashed entries, constant-time lookup, errors that name the field, the CLI helper."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from mailgate.cli import main
from mailgate.gateway.apikeys import KEY_PREFIX, generate_key, hash_key, load_keys
from mailgate.standalone.loader import ConfigError


def test_generated_key_line_loads_and_matches_only_its_key(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["apikey", "--name", "ci", "--account", "shop/billing", "--account", "ops/*"]) == 0
    lines = capsys.readouterr().out.splitlines()
    [key] = [line for line in lines if line.startswith(KEY_PREFIX)]
    [entry] = [line for line in lines if line.lstrip().startswith("- ")]
    path = tmp_path / "keys.yaml"
    path.write_text("keys:\n" + entry + "\n")

    ring = load_keys(path)

    matched = ring.match(key)
    assert matched is not None and matched.name == "ci" and matched.accounts == ["shop/billing", "ops/*"]
    assert ring.match(generate_key()) is None
    assert ring.match(key[:-1]) is None
    assert key not in path.read_text()  # only the digest is stored


def test_apikey_refuses_bad_patterns_before_printing_a_key(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["apikey", "--name", "ci", "--account", "billing"]) == 2
    out, err = capsys.readouterr()
    assert KEY_PREFIX not in out
    assert "mailgate apikey: accounts[0]: expected namespace/name" in err


def test_keys_file_problems_name_the_field(tmp_path: Path) -> None:
    digest = hash_key(generate_key())
    path = tmp_path / "keys.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "keys": [
                    {"name": "ci", "sha256": digest, "accounts": ["shop/*"]},
                    {"name": "ci", "sha256": "ABC", "accounts": ["shop"]},
                    {"name": "other", "sha256": digest, "accounts": []},
                ]
            }
        )
    )
    with pytest.raises(ConfigError) as caught:
        load_keys(path)
    problems = caught.value.problems
    assert f"{path}: keys[1].sha256: String should match pattern '^[0-9a-f]{{64}}$'" in problems
    assert any(p.startswith(f"{path}: keys[1].accounts[0]: expected namespace/name") for p in problems)
    assert any(p.startswith(f"{path}: keys[2].accounts: List should have at least 1 item") for p in problems)

    path.write_text(
        yaml.safe_dump(
            {"keys": [{"name": "ci", "sha256": digest, "accounts": ["*"]}, {"name": "ci", "sha256": digest, "accounts": ["*"]}]}
        )
    )
    with pytest.raises(ConfigError) as caught:
        load_keys(path)
    assert caught.value.problems == [
        f"{path}: keys[1].name: same as keys[0].name",
        f"{path}: keys[1].sha256: same as keys[0].sha256",
    ]


def test_empty_keys_file_lets_nobody_in(tmp_path: Path) -> None:
    path = tmp_path / "keys.yaml"
    path.write_text("")
    assert load_keys(path).match(generate_key()) is None


@pytest.mark.parametrize(
    ("tagged", "tag"),
    [
        ("!!int mgk_a-pasted-key-not-a-digest", "!!int"),
        ("!!float mgk_a-pasted-key-not-a-digest", "!!float"),
        ("!!timestamp 2024-13-45", "!!timestamp"),
        ('!!binary "mgk_sécret***"', "!!binary"),
        ("!!bool mgk_a-pasted-key-not-a-digest", "!!bool"),
    ],
)
def test_a_badly_tagged_value_is_a_positioned_problem_without_the_value(tmp_path: Path, tagged: str, tag: str) -> None:
    """``!!int`` on a string made PyYAML raise a ValueError quoting it, which crashed the load (and a reload's log)."""
    path = tmp_path / "keys.yaml"
    path.write_text(f"keys:\n  - name: ci\n    sha256: {tagged}\n    accounts: ['*']\n")

    with pytest.raises(ConfigError) as caught:
        load_keys(path)

    assert caught.value.problems == [f"{path}: invalid YAML: line 3, column 13: expected a valid {tag} value"]
    value = tagged.split(" ", 1)[1].strip('"')
    assert not any(part in str(caught.value) for part in (value, "mgk_", "sécret", "2024-13"))
