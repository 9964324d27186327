"""Pure-Python reference of the Sphinx packet format (pynacl + cryptography + hashlib).

Slow on purpose-free grounds: it is written to be read next to the crate's source, and the C core
(loopix.sphinx) is tested byte for byte against it. Same API as loopix.sphinx.
"""

from __future__ import annotations

import hashlib
import hmac
import os

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from nacl.bindings import crypto_scalarmult, crypto_scalarmult_base
from nacl.exceptions import CryptoError
from nacl.exceptions import RuntimeError as NaclRuntimeError

from ._common import (
    EXPANDED_SECRET_HKDF_INFO,
    FINAL_PAD_PERSONAL,
    PAYLOAD_KEY_HKDF_INFO,
    PAYLOAD_KEY_HKDF_SALT,
    Final,
    Forward,
    HeaderError,
    Hop,
    InvalidKeyError,
    MacError,
    PayloadError,
    SphinxError,
    check_build_args,
    check_packet_length,
)
from .constants import (
    DELAY_SIZE,
    EXPANDED_SECRET_SIZE,
    FINAL_HOP,
    FINAL_META_SIZE,
    FORWARD_HOP,
    HEADER_SIZE,
    HOP_SLOT_SIZE,
    KEYSTREAM_SIZE,
    MAC_SIZE,
    PAYLOAD_KEY_SIZE,
    PAYLOAD_OVERHEAD,
    ROUTING_INFO_SIZE,
    SECURITY_PARAMETER,
    VERSION,
    VERSION_BYTES,
    VERSION_LEGACY_EXPLICIT_KEYS,
)

__all__ = ["Final", "Forward", "Hop", "SphinxError", "build_packet", "keypair", "process_packet"]


def keypair() -> tuple[bytes, bytes]:
    """A fresh X25519 (secret, public) pair; the secret is used clamped, as x25519-dalek does."""
    secret = os.urandom(32)
    return secret, crypto_scalarmult_base(secret)


def x25519(scalar: bytes, point: bytes) -> bytes:
    try:
        return crypto_scalarmult(bytes(scalar), bytes(point))
    except (CryptoError, NaclRuntimeError) as e:
        raise InvalidKeyError("X25519 gave the all-zero point (low-order public key or alpha)") from e


def hkdf_sha256(ikm: bytes, salt: bytes | None, info: bytes, length: int) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=length, salt=salt, info=info).derive(bytes(ikm))


def expand_secret(shared: bytes) -> bytes:
    """288 bytes: AES key [0,16), MAC key [16,32), payload-key seed [32,48) (legacy key [32,224)),
    blinding factor [224,256), replay tag [256,288)."""
    return hkdf_sha256(shared, b"", EXPANDED_SECRET_HKDF_INFO, EXPANDED_SECRET_SIZE)


def payload_key(expanded: bytes, version: int = VERSION) -> bytes:
    if version == VERSION_LEGACY_EXPLICIT_KEYS:
        return expanded[32 : 32 + PAYLOAD_KEY_SIZE]
    return hkdf_sha256(expanded[32:48], PAYLOAD_KEY_HKDF_SALT, PAYLOAD_KEY_HKDF_INFO, PAYLOAD_KEY_SIZE)


def aes_ctr_keystream(key: bytes, length: int = KEYSTREAM_SIZE) -> bytes:
    enc = Cipher(algorithms.AES(key), modes.CTR(bytes(16))).encryptor()
    return enc.update(bytes(length)) + enc.finalize()


def chacha20_xor(key: bytes, data: bytes) -> bytes:
    """DJB ChaCha20 with a zero 8-byte nonce and counter 0 (cryptography's 16-byte nonce is
    counter || nonce, so sixteen zeros is exactly that)."""
    enc = Cipher(algorithms.ChaCha20(bytes(key), bytes(16)), mode=None).encryptor()
    return enc.update(bytes(data))


def header_mac(key: bytes, beta: bytes) -> bytes:
    return hmac.new(key, beta, hashlib.sha256).digest()[:MAC_SIZE]


def xor(a: bytes, b: bytes) -> bytes:
    n = len(a)
    return (int.from_bytes(a, "little") ^ int.from_bytes(b[:n], "little")).to_bytes(n, "little")


def _lioness_hash(key: bytes, data: bytes) -> bytes:
    return hashlib.blake2b(data, key=key, digest_size=32).digest()


def lioness_encrypt(key: bytes, block: bytes) -> bytes:
    """LIONESS over ChaCha20 and keyed BLAKE2b-256, as the `lioness` crate (key = k1 32 ‖ k2 64 ‖
    k3 32 ‖ k4 64; L = the first 32 bytes)."""
    if len(block) <= 32:
        raise SphinxError("LIONESS block must be longer than 32 bytes")
    k1, k2, k3, k4 = key[:32], key[32:96], key[96:128], key[128:192]
    left, right = block[:32], block[32:]
    right = chacha20_xor(xor(left, k1), right)
    left = xor(left, _lioness_hash(k2, right))
    right = chacha20_xor(xor(left, k3), right)
    left = xor(left, _lioness_hash(k4, right))
    return left + right


def lioness_decrypt(key: bytes, block: bytes) -> bytes:
    if len(block) <= 32:
        raise SphinxError("LIONESS block must be longer than 32 bytes")
    k1, k2, k3, k4 = key[:32], key[32:96], key[96:128], key[128:192]
    left, right = block[:32], block[32:]
    left = xor(left, _lioness_hash(k4, right))
    right = chacha20_xor(xor(left, k3), right)
    left = xor(left, _lioness_hash(k2, right))
    right = chacha20_xor(xor(left, k1), right)
    return left + right


def final_hop_padding(ephemeral_secret: bytes, length: int) -> bytes:
    seed = hashlib.blake2b(FINAL_PAD_PERSONAL, key=ephemeral_secret, digest_size=32).digest()
    return chacha20_xor(seed, bytes(length))


def derive_hop_secrets(ephemeral_secret: bytes, route: list[Hop]) -> list[bytes]:
    """The crate's clamped fold: s_i = X25519(b_{i-1}, … X25519(b_0, X25519(x, PK_i)))."""
    expanded: list[bytes] = []
    factors = [ephemeral_secret]
    for hop in route:
        acc = hop.public_key
        for f in factors:
            acc = x25519(f, acc)
        e = expand_secret(acc)
        expanded.append(e)
        factors.append(e[224:256])
    return expanded


def build_packet(
    route,
    destination: bytes,
    message: bytes,
    delays_ns,
    identifier: bytes = bytes(16),
    payload_size: int = 2048,
    ephemeral_secret: bytes | None = None,
) -> bytes:
    """A Sphinx packet for `route` carrying `message` to `destination` (see loopix.sphinx)."""
    check_build_args(route, destination, message, delays_ns, identifier, payload_size, ephemeral_secret)
    x = os.urandom(32) if ephemeral_secret is None else bytes(ephemeral_secret)
    n = len(route)
    secrets = derive_hop_secrets(x, route)

    filler = b""
    for i in range(1, n):
        stream = aes_ctr_keystream(secrets[i - 1][:16])
        filler = xor(filler + bytes(HOP_SLOT_SIZE), stream[KEYSTREAM_SIZE - HOP_SLOT_SIZE * i :])

    pad_len = ROUTING_INFO_SIZE - HOP_SLOT_SIZE * (n - 1) - FINAL_META_SIZE
    final_plain = (
        bytes([FINAL_HOP]) + VERSION_BYTES + bytes(destination) + bytes(identifier)
        + final_hop_padding(x, pad_len)
    )
    beta = xor(final_plain, aes_ctr_keystream(secrets[n - 1][:16])) + filler
    gamma = header_mac(secrets[n - 1][16:32], beta)
    for i in range(n - 2, -1, -1):
        plain = (
            bytes([FORWARD_HOP]) + VERSION_BYTES + bytes(route[i + 1].address)
            + int(delays_ns[i]).to_bytes(DELAY_SIZE, "big") + gamma
            + beta[: ROUTING_INFO_SIZE - HOP_SLOT_SIZE]
        )
        beta = xor(plain, aes_ctr_keystream(secrets[i][:16]))
        gamma = header_mac(secrets[i][16:32], beta)
    header = crypto_scalarmult_base(x) + gamma + beta
    assert len(header) == HEADER_SIZE

    body = bytes(SECURITY_PARAMETER) + bytes(message) + b"\x01"
    body += bytes(payload_size + PAYLOAD_OVERHEAD - len(body))
    for e in reversed(secrets):
        body = lioness_encrypt(payload_key(e), body)
    return header + body


def recover_message(body: bytes) -> bytes:
    """Strip the `0^16 ‖ message ‖ 0x01 ‖ 0…` padding, or fail: the only body integrity check."""
    if any(body[:SECURITY_PARAMETER]):
        raise PayloadError("payload integrity check failed (tampered body or wrong route)")
    end = body.rfind(b"\x01")
    if end < SECURITY_PARAMETER or any(body[end + 1 :]):
        raise PayloadError("payload has no valid end marker")
    return body[SECURITY_PARAMETER:end]


def process_packet(secret: bytes, packet: bytes):
    """Unwrap one layer with this node's secret key: a Forward or a Final (see loopix.sphinx)."""
    check_packet_length(packet)
    if len(secret) != 32:
        raise InvalidKeyError(f"secret key must be 32 bytes, got {len(secret)}")
    packet = bytes(packet)
    alpha, gamma = packet[:32], packet[32:48]
    beta, body = packet[48:HEADER_SIZE], packet[HEADER_SIZE:]
    e = expand_secret(x25519(secret, alpha))
    if not hmac.compare_digest(header_mac(e[16:32], beta), gamma):
        raise MacError("header MAC mismatch (wrong key or tampered header)")
    plain = xor(beta + bytes(HOP_SLOT_SIZE), aes_ctr_keystream(e[:16]))
    flag = plain[0]
    version = (plain[2] << 8) | plain[3]
    if version not in (VERSION, VERSION_LEGACY_EXPLICIT_KEYS):
        raise HeaderError(f"unsupported Sphinx header version {version}")
    body = lioness_decrypt(payload_key(e, version), body)
    replay_tag = e[256:288]
    if flag == FORWARD_HOP:
        next_address = plain[4:36]
        delay_ns = int.from_bytes(plain[36:44], "big")
        alpha_next = x25519(e[224:256], alpha)
        return Forward(next_address, delay_ns, alpha_next + plain[44:60] + plain[60:360] + body, replay_tag)
    if flag == FINAL_HOP:
        return Final(plain[4:36], plain[36:52], recover_message(body), replay_tag)
    raise HeaderError(f"unknown routing flag {flag}")
