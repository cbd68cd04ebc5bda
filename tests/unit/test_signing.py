from pathlib import Path

import msgspec
import pytest

from shared.signing import SignatureError, generate_keypair, load_private_key, load_public_key, sign_plan, verify_plan
from tests.unit.test_contracts import _body


@pytest.fixture()
def keys(tmp_path: Path) -> tuple[Path, Path]:
    private, public = tmp_path / "k" / "risk.key", tmp_path / "k" / "risk.pub"
    assert generate_keypair(private, public) is True
    assert generate_keypair(private, public) is False  # idempotent: never replaces a key
    assert private.stat().st_mode & 0o777 == 0o600
    return private, public


def test_signed_plan_verifies(keys: tuple[Path, Path]) -> None:
    plan = sign_plan(_body(), load_private_key(keys[0]))
    verify_plan(plan, load_public_key(keys[1]))


def test_tampered_leg_fails(keys: tuple[Path, Path]) -> None:
    plan = sign_plan(_body(), load_private_key(keys[0]))
    legs = [msgspec.structs.replace(plan.plan.legs[0], qty=10.0)]
    forged = msgspec.structs.replace(plan, plan=msgspec.structs.replace(plan.plan, legs=legs))
    with pytest.raises(SignatureError):
        verify_plan(forged, load_public_key(keys[1]))


def test_plan_signed_by_another_key_fails(keys: tuple[Path, Path], tmp_path: Path) -> None:
    other_private, other_public = tmp_path / "o.key", tmp_path / "o.pub"
    generate_keypair(other_private, other_public)
    plan = sign_plan(_body(), load_private_key(other_private))
    with pytest.raises(SignatureError, match="unknown key"):
        verify_plan(plan, load_public_key(keys[1]))
    # Even claiming the right key id does not help without the private key.
    spoofed = msgspec.structs.replace(plan, key_id=sign_plan(_body(), load_private_key(keys[0])).key_id)
    with pytest.raises(SignatureError, match="does not verify"):
        verify_plan(spoofed, load_public_key(keys[1]))
