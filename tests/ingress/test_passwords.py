"""Client password hashes: salted, verifiable, and safe to hand to a gateway."""

from __future__ import annotations

import pytest

from mailgate.passwords import DUMMY_HASH, hash_password, is_password_hash, verify_password


def test_a_hash_verifies_its_password_and_nothing_else() -> None:
    encoded = hash_password("correct horse", log2_n=4)
    assert verify_password("correct horse", encoded)
    assert not verify_password("correct hors", encoded)
    assert not verify_password("", encoded)
    assert "correct horse" not in encoded


def test_every_hash_has_its_own_salt() -> None:
    first, second = hash_password("same", log2_n=4), hash_password("same", log2_n=4)
    assert first != second
    assert verify_password("same", first) and verify_password("same", second)


def test_default_cost_is_scrypt_16384() -> None:
    encoded = hash_password("pw")
    assert encoded.startswith("scrypt$14$8$1$")
    assert verify_password("pw", encoded)


def test_non_ascii_passwords() -> None:
    encoded = hash_password("pässwörd-日本", log2_n=4)
    assert verify_password("pässwörd-日本", encoded)
    assert not verify_password("passwort-日本", encoded)


@pytest.mark.parametrize(
    "encoded",
    [
        "",
        "plaintext",
        "bcrypt$14$8$1$c2FsdA$a2V5",
        "scrypt$14$8$1$!!!$a2V5a2V5a2V5a2V5a2V5a2V5",
        "scrypt$40$8$1$c2FsdHNhbHQ$a2V5a2V5a2V5a2V5a2V5a2V5",  # 2**40: a crafted hash must not allocate terabytes
        "scrypt$14$8$1$c2FsdHNhbHQ$a2V5",  # key too short
    ],
)
def test_malformed_or_dangerous_hashes_never_match(encoded: str) -> None:
    assert not is_password_hash(encoded)
    assert not verify_password("anything", encoded)


def test_the_dummy_hash_is_well_formed_and_matches_nothing_likely() -> None:
    assert is_password_hash(DUMMY_HASH)
    assert not verify_password("", DUMMY_HASH)
    assert not verify_password("password", DUMMY_HASH)


def test_cost_bounds_are_checked_when_hashing() -> None:
    with pytest.raises(ValueError):
        hash_password("pw", log2_n=0)
    with pytest.raises(ValueError):
        hash_password("pw", log2_n=21)
