"""The C core's Curve25519 code (csrc/x25519.c) against libsodium and against Python integers."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from loopix import sphinx
from loopix.sphinx import _sphinx_c, pure

ffi, lib = _sphinx_c.ffi, _sphinx_c.lib

P = 2**255 - 19
A = 486662
ELL = 2**252 + 27742317777372353535851937790883648493

scalars32 = st.binary(min_size=32, max_size=32)


# ---- big-integer references ----

def ladder_ref(k: int, u: int, bits: int) -> int:
    """RFC 7748 section 5 ladder over the low `bits` bits of k, no clamping; u(k*P), 0 for the
    identity."""
    x1 = u % P
    x2, z2, x3, z3, swap = 1, 0, x1, 1, 0
    for t in reversed(range(bits)):
        bit = (k >> t) & 1
        swap ^= bit
        if swap:
            x2, x3, z2, z3 = x3, x2, z3, z2
        swap = bit
        a, b, c, d = x2 + z2, x2 - z2, x3 + z3, x3 - z3
        aa, bb = a * a % P, b * b % P
        e = aa - bb
        da, cb = d * a % P, c * b % P
        x3, z3 = (da + cb) ** 2 % P, x1 * (da - cb) ** 2 % P
        x2, z2 = aa * bb % P, e * (aa + 121665 * e) % P
    if swap:
        x2, z2 = x3, z3
    return x2 * pow(z2, P - 2, P) % P


def clamp(k: bytes) -> int:
    v = int.from_bytes(k, "little")
    return (v & ~7 & ((1 << 255) - 1)) | (1 << 254)


def sqrt_mod_p(a: int) -> int | None:
    r = pow(a, (P + 3) // 8, P)
    if r * r % P != a % P:
        r = r * pow(2, (P - 1) // 4, P) % P
    return r if r * r % P == a % P else None


def curve_y(u: int) -> int | None:
    """A y with (u, y) on Curve25519, None if u is on the twist."""
    return sqrt_mod_p((u**3 + A * u * u + u) % P)


def add(p1, p2):
    """Affine addition on y^2 = x^3 + A x^2 + x; None is the identity."""
    if p1 is None:
        return p2
    if p2 is None:
        return p1
    (x1, y1), (x2, y2) = p1, p2
    if x1 == x2:
        if (y1 + y2) % P == 0:
            return None
        lam = (3 * x1 * x1 + 2 * A * x1 + 1) * pow(2 * y1, -1, P) % P
    else:
        lam = (y2 - y1) * pow(x2 - x1, -1, P) % P
    x3 = (lam * lam - A - x1 - x2) % P
    return x3, (lam * (x1 - x3) - y1) % P


def mul(k: int, pt):
    acc = None
    while k:
        if k & 1:
            acc = add(acc, pt)
        pt = add(pt, pt)
        k >>= 1
    return acc


def torsion_points() -> list:
    """The 8 points of order dividing 8 on the curve (None is the identity)."""
    u = 9
    while True:
        u += 1
        y = curve_y(u)
        if y is None:
            continue
        t = mul(ELL, (u, y))
        pts = [mul(i, t) for i in range(8)]
        if len({p for p in pts if p is not None}) == 7:  # t has order exactly 8
            return pts


TORSION = torsion_points()
LOW_ORDER_U = sorted({0 if q is None else q[0] for q in TORSION} | {P - 1})  # -1 is of order 4 on the twist


def b32(v: int) -> bytes:
    return v.to_bytes(32, "little")


# ---- C wrappers ----

def c_ladder(k: bytes, u: bytes, bits: int) -> tuple[int, bytes]:
    out = ffi.new("uint8_t[32]")
    rc = lib.lx_x25519_ladder(out, k, u, bits)
    return rc, bytes(out)


def sodium_x25519(k: bytes, u: bytes) -> tuple[int, bytes]:
    out = ffi.new("unsigned char[32]")
    rc = lib.crypto_scalarmult(out, k, u)
    return rc, bytes(out)


# ---- tests ----

@given(k=scalars32, u=scalars32)
def test_clamped_ladder_equals_libsodium_for_any_point(k, u):
    out = ffi.new("uint8_t[32]")
    rc = lib.lx_x25519(out, k, u)
    s_rc, s_out = sodium_x25519(k, u)
    assert rc == s_rc
    if rc == 0:
        assert bytes(out) == s_out


@given(k=scalars32)
def test_clamped_ladder_equals_libsodium_on_public_keys(k):
    _, pk = sphinx.keypair()
    out = ffi.new("uint8_t[32]")
    assert lib.lx_x25519(out, k, pk) == 0
    assert bytes(out) == sodium_x25519(k, pk)[1]


@given(k=scalars32, u=scalars32, bits=st.sampled_from([256, 255, 253, 252, 200, 64, 8, 1]))
def test_unclamped_ladder_equals_big_integer_ladder(k, u, bits):
    rc, out = c_ladder(k, u, bits)
    expected = ladder_ref(int.from_bytes(k, "little"), int.from_bytes(u, "little") & ((1 << 255) - 1), bits)
    assert out == b32(expected)
    assert rc == (-1 if expected == 0 else 0)


@pytest.mark.parametrize("k", [0, 1, 2, 3, 8, ELL - 1, ELL, ELL + 1, 2**253 - 1, 2**256 - 1])
@pytest.mark.parametrize("u", [0, 1, 9, P - 1, P, P + 1, 2**255 - 1, 2**256 - 1])
def test_ladder_edge_scalars_and_points(k, u):
    _, pk = sphinx.keypair()
    for point in (u.to_bytes(32, "little"), pk):
        _, out = c_ladder(b32(k), point, 256)
        expected = ladder_ref(k, int.from_bytes(point, "little") & ((1 << 255) - 1), 256)
        assert out == b32(expected)


def test_ladder_rejects_bad_bit_counts():
    for bits in (0, 257, 10**6):
        assert c_ladder(bytes(32), b32(9), bits)[0] == -1


@given(k=scalars32)
def test_fixed_base_equals_libsodium(k):
    s = ffi.new("unsigned char[32]")
    lib.crypto_scalarmult_base(s, k)
    for fn in (lib.lx_x25519_base, lib.lx_x25519_base_edwards):  # the table path and its fallback
        out = ffi.new("uint8_t[32]")
        assert fn(out, k) == 0
        assert bytes(out) == bytes(s)


@given(x=st.integers(0, 2**256 - 1), y=st.integers(0, 2**256 - 1))
def test_scalar_product_mod_l(x, y):
    out = ffi.new("uint8_t[32]")
    lib.lx_scalar_mul(out, b32(x), b32(y))
    assert int.from_bytes(bytes(out), "little") == x * y % ELL


@given(x=scalars32, n=st.integers(1, 5))
def test_product_scalar_derivation_equals_the_crate_fold(x, n):
    """One ladder per hop with (clamp(x) clamp(b_0) ... mod l) gives the fold's expanded secrets."""
    keys = [sphinx.keypair()[1] for _ in range(n)]
    out = ffi.new("uint8_t[]", 288 * n)
    assert lib.lx_derive_hop_keys(x, b"".join(keys), n, out) == 0
    blinds: list[bytes] = []
    for i, pk in enumerate(keys):
        acc = pure.x25519(x, pk)
        for b in blinds:
            acc = pure.x25519(b, acc)
        expanded = pure.expand_secret(acc)
        assert bytes(out[288 * i : 288 * (i + 1)]) == expanded
        blinds.append(expanded[224:256])


def test_product_scalar_matches_big_integers():
    """The derivation's algebra in Python: the fold equals one multiplication by the product mod l."""
    _, pk = sphinx.keypair()
    factors = [bytes([i + 1]) * 32 for i in range(4)]
    acc = pk
    prod = 1
    for f in factors:
        acc = pure.x25519(f, acc)
        prod = prod * clamp(f) % ELL
    assert acc == b32(ladder_ref(prod, int.from_bytes(pk, "little"), 253))


def test_derivation_refuses_low_order_keys():
    out = ffi.new("uint8_t[]", 288 * 2)
    _, good = sphinx.keypair()
    for u in LOW_ORDER_U:
        assert lib.lx_derive_hop_keys(bytes(32), good + b32(u), 2, out) == lib.LX_ERR_KEY
        assert lib.lx_derive_hop_keys(bytes(32), b32(u), 1, out) == lib.LX_ERR_KEY


def test_low_order_table():
    assert len(LOW_ORDER_U) == 5
    for u in LOW_ORDER_U:
        assert lib.lx_is_low_order(b32(u)) == 1
    for _ in range(20):
        assert lib.lx_is_low_order(sphinx.keypair()[1]) == 0


# ---- the subgroup check ----

def test_honest_keys_pass():
    for _ in range(50):
        assert sphinx.check_public_key(sphinx.keypair()[1])
    assert sphinx.check_public_key(b32(9))  # the base point itself


@pytest.mark.parametrize("u", [*LOW_ORDER_U, P, P + 1, P + 9, 2**255 - 1])
def test_low_order_and_non_canonical_points_fail(u):
    assert not sphinx.check_public_key(u.to_bytes(32, "little"))


def test_bit_255_set_fails_even_on_a_good_key():
    _, pk = sphinx.keypair()
    assert not sphinx.check_public_key(pk[:31] + bytes([pk[31] | 0x80]))


def test_mixed_order_points_fail():
    """An honest key plus a torsion point: the fold ignores the torsion, the product would not."""
    _, pk = sphinx.keypair()
    u = int.from_bytes(pk, "little")
    base = (u, curve_y(u))
    for t in TORSION[1:]:
        mixed = add(base, t)
        assert not sphinx.check_public_key(b32(mixed[0]))


@settings(deadline=None, max_examples=40)
@given(u=st.integers(2, P - 1))
def test_check_agrees_with_affine_arithmetic(u):
    y = curve_y(u)
    expected = y is not None and mul(ELL, (u, y)) is None
    assert sphinx.check_public_key(b32(u)) == expected


@settings(deadline=None, max_examples=20)
@given(k=st.integers(1, ELL - 1))
def test_every_multiple_of_the_base_point_passes(k):
    # order-l points from unclamped scalars too, which keypair() never makes
    assert sphinx.check_public_key(b32(ladder_ref(k, 9, 256)))


def test_twist_points_fail():
    seen = 0
    for u in range(2, 200):
        if curve_y(u) is None:
            assert not sphinx.check_public_key(b32(u))
            seen += 1
    assert seen > 50


def test_validate_node_key_names_the_node():
    _, pk = sphinx.keypair()
    assert sphinx.validate_node_key("mix-1", pk) == pk
    with pytest.raises(sphinx.PublicKeyError, match="node mix-7") as err:
        sphinx.validate_node_key("mix-7", b32(1))
    assert err.value.node == "mix-7"
    assert isinstance(err.value, sphinx.InvalidKeyError)
    with pytest.raises(sphinx.PublicKeyError):
        sphinx.validate_node_key("short", b"x" * 31)
    assert not sphinx.check_public_key(b"x" * 31)


def test_build_refuses_keys_outside_the_subgroup():
    _, pk = sphinx.keypair()
    u = int.from_bytes(pk, "little")
    mixed = b32(add((u, curve_y(u)), TORSION[1])[0])
    route = [sphinx.Hop(public_key=pk, address=bytes(32)), sphinx.Hop(public_key=mixed, address=bytes(32))]
    with pytest.raises(sphinx.PublicKeyError, match="hop 1"):
        sphinx.build_packet(route, bytes(32), b"m", [0, 0])
    with pytest.raises(sphinx.PublicKeyError):
        sphinx.PacketBuilder(1).set_packet(0, route, bytes(32), b"m", [0, 0])


# ---- per-key tables ----

KEYED_KEYS = [sphinx.keypair()[1] for _ in range(3)]


@given(k=st.integers(0, 2**255 - 1), which=st.integers(0, 2))
def test_keyed_multiplication_equals_the_ladder(k, which):
    pk = KEYED_KEYS[which]
    out = ffi.new("uint8_t[32]")
    assert lib.lx_x25519_keyed(out, b32(k), pk) == 0
    assert bytes(out) == b32(ladder_ref(k, int.from_bytes(pk, "little"), 255))


@pytest.mark.parametrize("k", [0, 1, 7, 8, 15, 16, ELL - 1, ELL, ELL + 1, 2**252, 2**255 - 1])
def test_keyed_edge_scalars(k):
    out = ffi.new("uint8_t[32]")
    for pk in (KEYED_KEYS[0], b32(9)):
        assert lib.lx_x25519_keyed(out, b32(k), pk) == 0
        assert bytes(out) == b32(ladder_ref(k, int.from_bytes(pk, "little"), 255))


def test_keyed_refuses_what_it_cannot_do():
    out = ffi.new("uint8_t[32]", b"\xaa" * 32)
    _, pk = sphinx.keypair()
    u = int.from_bytes(pk, "little")
    mixed = b32(add((u, curve_y(u)), TORSION[1])[0])
    for bad in [*(b32(v) for v in LOW_ORDER_U), mixed, b32(2), pk[:31] + bytes([pk[31] | 0x80])]:
        assert lib.lx_x25519_keyed(out, b32(5), bad) == 1
        assert lib.lx_x25519_keyed(out, b32(5), bad) == 1  # the remembered refusal
    assert lib.lx_x25519_keyed(out, b32(2**255), pk) == 1  # the recoding needs k < 2^255
    assert bytes(out) == b"\xaa" * 32


def test_key_cache_cold_and_warm_give_the_same_packets():
    route = [sphinx.Hop(public_key=pk, address=bytes([i]) * 32) for i, pk in enumerate(KEYED_KEYS)]
    args = (route, bytes(32), b"cache", [0, 0, 0], bytes(16), 2048, bytes(range(32)))
    lib.lx_key_cache_clear()
    cold = sphinx.build_packet(*args)
    warm = sphinx.build_packet(*args)
    assert cold == warm == pure.build_packet(*args)


def test_keys_that_share_a_hash_slot():
    """Two keys with the same home slot in the per-thread cache: both keep their tables."""
    def slot(pk: bytes) -> int:
        return (int.from_bytes(pk[:8], "little") ^ int.from_bytes(pk[8:16], "little")) % 4096

    seen: dict[int, bytes] = {}
    while True:
        _, pk = sphinx.keypair()
        if slot(pk) in seen:
            pair = (seen[slot(pk)], pk)
            break
        seen[slot(pk)] = pk
    lib.lx_key_cache_clear()
    x = bytes(range(32))
    out = ffi.new("uint8_t[]", 288)
    for pk in pair * 3:
        assert lib.lx_derive_hop_keys(x, pk, 1, out) == 0
        assert bytes(out) == pure.expand_secret(pure.x25519(x, pk))


def test_more_keys_than_tables():
    """Past 1024 tables a new key goes through the ladder: the same bytes."""
    lib.lx_key_cache_clear()
    x = bytes(range(32))
    out = ffi.new("uint8_t[]", 288)
    keys = [sphinx.keypair()[1] for _ in range(1100)]
    for i, pk in enumerate(keys):
        assert lib.lx_derive_hop_keys(x, pk, 1, out) == 0
        if i % 50 == 0 or i >= 1020:
            assert bytes(out) == pure.expand_secret(pure.x25519(x, pk))
    lib.lx_key_cache_clear()
