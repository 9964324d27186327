"""PEM key files: the Go client's format, strict decoding, 0600 files, pair consistency."""

import base64
import os
import stat

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from nacl.bindings import crypto_scalarmult_base
from nacl.public import PrivateKey

from loopix import keys
from loopix.keys import KeyFileError, KeyPair

pem_types = st.sampled_from([keys.PEM_PRIVATE, keys.PEM_PUBLIC, "X", "SOME OTHER TYPE 2"])


@settings(deadline=None)
@given(pem_type=pem_types, body=st.binary(max_size=300))
def test_pem_round_trip(pem_type, body):
    text = keys.pem_encode(pem_type, body)
    lines = text.splitlines()
    assert lines[0] == f"-----BEGIN {pem_type}-----"
    assert lines[-1] == f"-----END {pem_type}-----"
    assert text.endswith("\n")
    assert all(len(line) <= 64 for line in lines[1:-1])
    assert all(len(line) == 64 for line in lines[1:-2])
    assert keys.pem_decode(text, pem_type) == body


@settings(deadline=None)
@given(body=st.binary(min_size=1, max_size=200), width=st.integers(1, 100), crlf=st.booleans())
def test_pem_decode_accepts_any_line_width_and_crlf(body, width, crlf):
    b64 = base64.b64encode(body).decode()
    lines = [b64[i : i + width] for i in range(0, len(b64), width)]
    nl = "\r\n" if crlf else "\n"
    text = nl.join(["-----BEGIN X-----", *lines, "-----END X-----"]) + nl
    assert keys.pem_decode(text, "X") == body


def test_pem_matches_go_encoding():
    # What Go's pem.EncodeToMemory writes for a 32-byte body.
    key = bytes(range(32))
    expected = (
        "-----BEGIN SPHINX CURVE25519 PUBLIC KEY-----\n"
        "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=\n"
        "-----END SPHINX CURVE25519 PUBLIC KEY-----\n"
    )
    assert keys.pem_encode(keys.PEM_PUBLIC, key) == expected


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("", "not a PEM file"),
        ("hello\n", "not a PEM file"),
        ("-----BEGIN X-----\nAAAA\n-----END Y-----\n", "does not match"),
        ("-----BEGIN OTHER-----\nAAAA\n-----END OTHER-----\n", "expected PEM type"),
        ("-----BEGIN X-----\nAA*A\n-----END X-----\n", "not valid base64"),
        ("-----BEGIN X-----\nAAA\n-----END X-----\n", "not valid base64"),
        ("-----BEGIN X-----\nProc-Type: 4\n\nAAAA\n-----END X-----\n", "not valid base64"),
        ("junk\n-----BEGIN X-----\nAAAA\n-----END X-----\n", "not a PEM file"),
    ],
)
def test_pem_decode_rejects(text, needle):
    with pytest.raises(KeyFileError, match=needle) as info:
        keys.pem_decode(text, "X", source="some/file.pem")
    assert str(info.value).startswith("some/file.pem: ")


def test_pem_decode_checks_size():
    text = keys.pem_encode("X", b"\x01" * 31)
    with pytest.raises(KeyFileError, match="must be 32 bytes, found 31"):
        keys.pem_decode(text, "X", size=32)


def test_pem_encode_rejects_bad_type():
    with pytest.raises(ValueError):
        keys.pem_encode("lower case", b"")
    with pytest.raises(ValueError):
        keys.pem_encode("A-----\nB", b"")


def test_generate_keypair_is_x25519():
    pair = keys.generate_keypair()
    assert len(pair.secret) == len(pair.public) == 32
    assert pair.public == crypto_scalarmult_base(pair.secret)
    assert pair.public == bytes(PrivateKey(pair.secret).public_key)
    assert keys.generate_keypair().secret != pair.secret


def test_keypair_from_nacl_key():
    sk = PrivateKey.generate()
    pair = KeyPair.from_secret(bytes(sk))
    assert pair.public == bytes(sk.public_key)


def test_keypair_repr_hides_secret():
    pair = keys.generate_keypair()
    text = repr(pair) + str(pair)
    assert repr(pair.secret) not in text
    assert pair.secret.hex() not in text
    assert "secret" not in text


def test_keypair_checks_lengths():
    with pytest.raises(ValueError, match="secret"):
        KeyPair(secret=b"x", public=bytes(32))
    with pytest.raises(ValueError, match="public"):
        KeyPair(secret=bytes(32), public=b"x" * 33)


def test_save_load_round_trip(tmp_path):
    pair = keys.generate_keypair()
    private_path, public_path = keys.save_keypair(pair, tmp_path)
    assert private_path == tmp_path / "private_key.pem"
    assert public_path == tmp_path / "public_key.pem"
    for p in (private_path, public_path):
        assert stat.S_IMODE(p.stat().st_mode) == 0o600
    assert keys.load_keypair(tmp_path) == pair
    assert keys.read_public_key(public_path) == pair.public
    assert keys.read_private_key(private_path) == pair.secret
    assert sorted(p.name for p in tmp_path.iterdir()) == ["private_key.pem", "public_key.pem"]


def test_save_with_custom_names_and_overwrite(tmp_path):
    first, second = keys.generate_keypair(), keys.generate_keypair()
    keys.save_keypair(first, tmp_path, private_name="a.pem", public_name="b.pem")
    os.chmod(tmp_path / "a.pem", 0o644)
    keys.save_keypair(second, tmp_path, private_name="a.pem", public_name="b.pem")
    assert stat.S_IMODE((tmp_path / "a.pem").stat().st_mode) == 0o600
    assert keys.load_keypair(tmp_path, private_name="a.pem", public_name="b.pem") == second


def test_write_private_key_mode_ignores_umask(tmp_path):
    old = os.umask(0)
    try:
        keys.write_private_key(tmp_path / "k.pem", bytes(32))
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "k.pem").stat().st_mode) == 0o600


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o644, 0o660, 0o601])
def test_private_key_readable_by_others_is_refused(tmp_path, mode):
    keys.save_keypair(keys.generate_keypair(), tmp_path)
    path = tmp_path / "private_key.pem"
    os.chmod(path, mode)
    with pytest.raises(KeyFileError, match="too open") as info:
        keys.load_keypair(tmp_path)
    assert str(path) in str(info.value)
    assert f"{mode:04o}" in str(info.value)


def test_owner_only_modes_are_accepted(tmp_path):
    pair = keys.generate_keypair()
    keys.save_keypair(pair, tmp_path)
    os.chmod(tmp_path / "private_key.pem", 0o400)
    assert keys.load_keypair(tmp_path) == pair


def test_public_key_may_be_world_readable(tmp_path):
    pair = keys.generate_keypair()
    keys.save_keypair(pair, tmp_path)
    os.chmod(tmp_path / "public_key.pem", 0o644)
    assert keys.load_keypair(tmp_path) == pair


def test_mismatched_pair_is_refused(tmp_path):
    keys.save_keypair(keys.generate_keypair(), tmp_path)
    keys.write_public_key(tmp_path / "public_key.pem", keys.generate_keypair().public)
    with pytest.raises(KeyFileError, match="does not match the private key"):
        keys.load_keypair(tmp_path)


def test_swapped_types_are_refused(tmp_path):
    pair = keys.generate_keypair()
    keys.write_public_key(tmp_path / "private_key.pem", pair.public)
    keys.write_private_key(tmp_path / "public_key.pem", pair.secret)
    with pytest.raises(KeyFileError, match="expected PEM type 'SPHINX CURVE25519 PRIVATE KEY'"):
        keys.load_keypair(tmp_path)
    with pytest.raises(KeyFileError, match="expected PEM type 'SPHINX CURVE25519 PUBLIC KEY'"):
        keys.read_public_key(tmp_path / "public_key.pem")


def test_wrong_length_key_file(tmp_path):
    path = tmp_path / "public_key.pem"
    path.write_text(keys.pem_encode(keys.PEM_PUBLIC, bytes(33)))
    with pytest.raises(KeyFileError, match="must be 32 bytes, found 33") as info:
        keys.read_public_key(path)
    assert str(path) in str(info.value)


def test_missing_and_odd_files(tmp_path):
    with pytest.raises(KeyFileError, match="cannot read key file") as info:
        keys.load_keypair(tmp_path)
    assert "private_key.pem" in str(info.value)
    (tmp_path / "dir.pem").mkdir()
    with pytest.raises(KeyFileError, match="not a regular file"):
        keys.read_public_key(tmp_path / "dir.pem")
    (tmp_path / "bin.pem").write_bytes(b"\xff\xfe")
    with pytest.raises(KeyFileError, match="non-ASCII"):
        keys.read_public_key(tmp_path / "bin.pem")
    (tmp_path / "big.pem").write_bytes(b"A" * 100_000)
    with pytest.raises(KeyFileError, match="too large"):
        keys.read_public_key(tmp_path / "big.pem")


def test_write_rejects_wrong_length(tmp_path):
    with pytest.raises(ValueError):
        keys.write_private_key(tmp_path / "k", bytes(31))
    with pytest.raises(ValueError):
        keys.write_public_key(tmp_path / "k", bytes(31))
    assert list(tmp_path.iterdir()) == []


@settings(deadline=None)
@given(key=st.binary(min_size=32, max_size=32))
def test_b64url_round_trip(key):
    text = keys.key_to_b64url(key)
    assert len(text) == 44 and text.endswith("=")
    assert keys.key_from_b64url(text) == key
    assert keys.key_from_b64url(text.rstrip("=")) == key


@pytest.mark.parametrize(
    "text",
    [
        "",
        "AAAA",
        base64.urlsafe_b64encode(bytes(31)).decode(),
        base64.urlsafe_b64encode(bytes(33)).decode(),
        base64.b64encode(b"\xfb" * 32).decode(),  # standard alphabet: '+' '/'
        "A" * 42 + "B=",  # non-zero trailing bits: not canonical
        " " + "A" * 43 + "=",
    ],
)
def test_b64url_rejects(text):
    with pytest.raises(ValueError):
        keys.key_from_b64url(text)
