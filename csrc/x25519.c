/* Curve25519 for the Sphinx core; see x25519.h. Field elements are five 51-bit limbs (radix 2^51)
 * multiplied with 128-bit products. Limb bounds are noted where they matter: every input of fe_mul and
 * fe_sq has limbs below 2^54, which keeps each 128-bit column sum below 2^116 and the top carry times
 * 19 below 2^64. Built with -O3: at -O2 gcc neither unrolls the limb loops nor keeps the ladder state
 * in registers, and the ladder costs 1.5x as much. */
#include "x25519.h"

#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include <sodium.h>

typedef unsigned __int128 u128;
typedef uint64_t fe[5];

#define MASK51 ((UINT64_C(1) << 51) - 1)

static inline uint64_t load64(const uint8_t *p) {
    uint64_t v;
    memcpy(&v, p, 8); /* x86-64 and every target we build for are little-endian */
    return v;
}

static inline void store64(uint8_t *p, uint64_t v) { memcpy(p, &v, 8); }

/* Bit 255 is dropped, as RFC 7748 asks for u-coordinates; a value >= p is used as is (it is the
 * same residue), the arithmetic never needs canonical inputs. */
static inline void fe_frombytes(fe h, const uint8_t s[32]) {
    uint64_t w0 = load64(s), w1 = load64(s + 8), w2 = load64(s + 16), w3 = load64(s + 24);
    h[0] = w0 & MASK51;
    h[1] = ((w0 >> 51) | (w1 << 13)) & MASK51;
    h[2] = ((w1 >> 38) | (w2 << 26)) & MASK51;
    h[3] = ((w2 >> 25) | (w3 << 39)) & MASK51;
    h[4] = (w3 >> 12) & MASK51;
}

/* Fully reduced (canonical) little-endian bytes. */
static void fe_tobytes(uint8_t s[32], const fe f) {
    uint64_t h0 = f[0], h1 = f[1], h2 = f[2], h3 = f[3], h4 = f[4], q;
    /* two carry passes: limbs below 2^51 and the value below 2^255 + 19*2^13 */
    for (int pass = 0; pass < 2; pass++) {
        h1 += h0 >> 51; h0 &= MASK51;
        h2 += h1 >> 51; h1 &= MASK51;
        h3 += h2 >> 51; h2 &= MASK51;
        h4 += h3 >> 51; h3 &= MASK51;
        h0 += 19 * (h4 >> 51); h4 &= MASK51;
    }
    /* q = 1 iff h >= p, i.e. h + 19 carries out of bit 255; then h - p = h + 19 - 2^255 */
    q = (h0 + 19) >> 51;
    q = (h1 + q) >> 51;
    q = (h2 + q) >> 51;
    q = (h3 + q) >> 51;
    q = (h4 + q) >> 51;
    h0 += 19 * q;
    h1 += h0 >> 51; h0 &= MASK51;
    h2 += h1 >> 51; h1 &= MASK51;
    h3 += h2 >> 51; h2 &= MASK51;
    h4 += h3 >> 51; h3 &= MASK51;
    h4 &= MASK51; /* drops the 2^255 of h + 19 */
    store64(s, h0 | (h1 << 51));
    store64(s + 8, (h1 >> 13) | (h2 << 38));
    store64(s + 16, (h2 >> 26) | (h3 << 25));
    store64(s + 24, (h3 >> 39) | (h4 << 12));
}

static inline void fe_copy(fe h, const fe f) { memcpy(h, f, sizeof(fe)); }

static inline void fe_add(fe h, const fe f, const fe g) {
    for (int i = 0; i < 5; i++) h[i] = f[i] + g[i];
}

/* f + 2p - g: g's limbs must be below 2^52 - 38 (any mul/sq output is below 2^51 + 2^17), so no
 * limb goes negative; the result's limbs stay below f's + 2^52. */
static inline void fe_sub(fe h, const fe f, const fe g) {
    h[0] = f[0] + UINT64_C(0xFFFFFFFFFFFDA) - g[0];
    h[1] = f[1] + UINT64_C(0xFFFFFFFFFFFFE) - g[1];
    h[2] = f[2] + UINT64_C(0xFFFFFFFFFFFFE) - g[2];
    h[3] = f[3] + UINT64_C(0xFFFFFFFFFFFFE) - g[3];
    h[4] = f[4] + UINT64_C(0xFFFFFFFFFFFFE) - g[4];
}

/* Column sums t0..t4 (each below 2^115) to limbs. The five carries out of the columns are taken
 * at once rather than chained through 128-bit adds: that shortens the dependency chain, which the
 * ladder is bound by. The column carries are below 2^64 (t4's, times 19, too, since t4 has no
 * 19-fold products), so each limb holds its column's low 51 bits plus one carry; a second 64-bit pass
 * then leaves h[0] below 2^51 + 2^17 and the others below 2^51. */
#define FE_CARRY(h, t0, t1, t2, t3, t4)                                                  \
    do {                                                                                  \
        uint64_t r0 = (uint64_t)(t0) & MASK51, r1 = (uint64_t)(t1) & MASK51;             \
        uint64_t r2 = (uint64_t)(t2) & MASK51, r3 = (uint64_t)(t3) & MASK51;             \
        uint64_t r4 = (uint64_t)(t4) & MASK51;                                            \
        r0 += 19 * (uint64_t)((t4) >> 51);                                                \
        r1 += (uint64_t)((t0) >> 51);                                                     \
        r2 += (uint64_t)((t1) >> 51);                                                     \
        r3 += (uint64_t)((t2) >> 51);                                                     \
        r4 += (uint64_t)((t3) >> 51);                                                     \
        r1 += r0 >> 51; r0 &= MASK51;                                                     \
        r2 += r1 >> 51; r1 &= MASK51;                                                     \
        r3 += r2 >> 51; r2 &= MASK51;                                                     \
        r4 += r3 >> 51; r3 &= MASK51;                                                     \
        r0 += 19 * (r4 >> 51); r4 &= MASK51;                                              \
        (h)[0] = r0; (h)[1] = r1; (h)[2] = r2; (h)[3] = r3; (h)[4] = r4;                  \
    } while (0)

static inline void fe_mul(fe h, const fe f, const fe g) {
    const uint64_t f0 = f[0], f1 = f[1], f2 = f[2], f3 = f[3], f4 = f[4];
    const uint64_t g0 = g[0], g1 = g[1], g2 = g[2], g3 = g[3], g4 = g[4];
    const uint64_t g1_19 = 19 * g1, g2_19 = 19 * g2, g3_19 = 19 * g3, g4_19 = 19 * g4;
    u128 t0 = (u128)f0 * g0 + (u128)f1 * g4_19 + (u128)f2 * g3_19 + (u128)f3 * g2_19 + (u128)f4 * g1_19;
    u128 t1 = (u128)f0 * g1 + (u128)f1 * g0 + (u128)f2 * g4_19 + (u128)f3 * g3_19 + (u128)f4 * g2_19;
    u128 t2 = (u128)f0 * g2 + (u128)f1 * g1 + (u128)f2 * g0 + (u128)f3 * g4_19 + (u128)f4 * g3_19;
    u128 t3 = (u128)f0 * g3 + (u128)f1 * g2 + (u128)f2 * g1 + (u128)f3 * g0 + (u128)f4 * g4_19;
    u128 t4 = (u128)f0 * g4 + (u128)f1 * g3 + (u128)f2 * g2 + (u128)f3 * g1 + (u128)f4 * g0;
    FE_CARRY(h, t0, t1, t2, t3, t4);
}

/* f * g where g19 = 19 * g limb by limb, precomputed: the ladder multiplies by the same x1 every step */
static inline void fe_mul_pre(fe h, const fe f, const fe g, const fe g19) {
    const uint64_t f0 = f[0], f1 = f[1], f2 = f[2], f3 = f[3], f4 = f[4];
    u128 t0 = (u128)f0 * g[0] + (u128)f1 * g19[4] + (u128)f2 * g19[3] + (u128)f3 * g19[2] + (u128)f4 * g19[1];
    u128 t1 = (u128)f0 * g[1] + (u128)f1 * g[0] + (u128)f2 * g19[4] + (u128)f3 * g19[3] + (u128)f4 * g19[2];
    u128 t2 = (u128)f0 * g[2] + (u128)f1 * g[1] + (u128)f2 * g[0] + (u128)f3 * g19[4] + (u128)f4 * g19[3];
    u128 t3 = (u128)f0 * g[3] + (u128)f1 * g[2] + (u128)f2 * g[1] + (u128)f3 * g[0] + (u128)f4 * g19[4];
    u128 t4 = (u128)f0 * g[4] + (u128)f1 * g[3] + (u128)f2 * g[2] + (u128)f3 * g[1] + (u128)f4 * g[0];
    FE_CARRY(h, t0, t1, t2, t3, t4);
}

static inline void fe_sq(fe h, const fe f) {
    const uint64_t f0 = f[0], f1 = f[1], f2 = f[2], f3 = f[3], f4 = f[4];
    const uint64_t d0 = 2 * f0, d1 = 2 * f1, d2 = 2 * f2, d3 = 2 * f3;
    const uint64_t f3_19 = 19 * f3, f4_19 = 19 * f4;
    u128 t0 = (u128)f0 * f0 + (u128)d1 * f4_19 + (u128)d2 * f3_19;
    u128 t1 = (u128)d0 * f1 + (u128)d2 * f4_19 + (u128)f3 * f3_19;
    u128 t2 = (u128)d0 * f2 + (u128)f1 * f1 + (u128)d3 * f4_19;
    u128 t3 = (u128)d0 * f3 + (u128)d1 * f2 + (u128)f4 * f4_19;
    u128 t4 = (u128)d0 * f4 + (u128)d1 * f3 + (u128)f2 * f2;
    FE_CARRY(h, t0, t1, t2, t3, t4);
}

static inline void fe_sq_n(fe h, const fe f, int n) {
    fe_sq(h, f);
    while (--n > 0) fe_sq(h, h);
}

/* times (A - 2) / 4 = 121665, the ladder's doubling constant */
static inline void fe_mul_a24(fe h, const fe f) {
    u128 t0 = (u128)f[0] * 121665, t1 = (u128)f[1] * 121665, t2 = (u128)f[2] * 121665;
    u128 t3 = (u128)f[3] * 121665, t4 = (u128)f[4] * 121665;
    FE_CARRY(h, t0, t1, t2, t3, t4);
}

/* Swaps f and g iff swap == 1, with a mask instead of a branch. */
static inline void fe_cswap(fe f, fe g, uint64_t swap) {
    const uint64_t mask = 0 - swap;
    for (int i = 0; i < 5; i++) {
        uint64_t x = mask & (f[i] ^ g[i]);
        f[i] ^= x;
        g[i] ^= x;
    }
}

/* z^(p-2) = z^(2^255 - 21): 254 squarings and 11 multiplications; 0 maps to 0. */
static void fe_invert(fe out, const fe z) {
    fe z2, z9, z11, z5_0, z10_0, z20_0, z50_0, z100_0, t;
    fe_sq(z2, z);
    fe_sq_n(t, z2, 2);
    fe_mul(z9, t, z);
    fe_mul(z11, z9, z2);
    fe_sq(t, z11);
    fe_mul(z5_0, t, z9);            /* 2^5 - 1 */
    fe_sq_n(t, z5_0, 5);
    fe_mul(z10_0, t, z5_0);         /* 2^10 - 1 */
    fe_sq_n(t, z10_0, 10);
    fe_mul(z20_0, t, z10_0);        /* 2^20 - 1 */
    fe_sq_n(t, z20_0, 20);
    fe_mul(t, t, z20_0);            /* 2^40 - 1 */
    fe_sq_n(t, t, 10);
    fe_mul(z50_0, t, z10_0);        /* 2^50 - 1 */
    fe_sq_n(t, z50_0, 50);
    fe_mul(z100_0, t, z50_0);       /* 2^100 - 1 */
    fe_sq_n(t, z100_0, 100);
    fe_mul(t, t, z100_0);           /* 2^200 - 1 */
    fe_sq_n(t, t, 50);
    fe_mul(t, t, z50_0);            /* 2^250 - 1 */
    fe_sq_n(t, t, 5);
    fe_mul(out, t, z11);            /* 2^255 - 32 + 11 */
}

/* Constant-time: 1 iff the 32 bytes are all zero. */
static int bytes_are_zero(const uint8_t *b, size_t n) {
    uint8_t acc = 0;
    for (size_t i = 0; i < n; i++) acc |= b[i];
    return (int)((((unsigned)acc) - 1U) >> 8) & 1;
}

/* The ladder of RFC 7748 section 5 on the projective pair (x2:z2) = k*P, (x3:z3) = (k+1)*P, over
 * the low `bits` bits of k. The loop count and every memory access depend on `bits` only. */
static void ladder(fe out_x, fe out_z, const uint8_t *k, const fe in_x1, unsigned bits) {
    /* locals only: the compiler keeps them in registers instead of reloading through pointers */
    fe x1, x1_19, x2 = {1}, z2 = {0}, x3, z3 = {1}, a, b, aa, bb, e, c, d, da, cb, t;
    uint64_t swap = 0;
    fe_copy(x1, in_x1);
    for (int i = 0; i < 5; i++) x1_19[i] = 19 * x1[i];
    fe_copy(x3, x1);
    for (unsigned pos = bits; pos-- > 0;) {
        uint64_t bit = (k[pos >> 3] >> (pos & 7)) & 1;
        swap ^= bit; /* swap only when the bit differs from the previous one */
        fe_cswap(x2, x3, swap);
        fe_cswap(z2, z3, swap);
        swap = bit;
        fe_add(a, x2, z2);
        fe_sub(b, x2, z2);
        fe_add(c, x3, z3);
        fe_sub(d, x3, z3);
        fe_sq(aa, a);
        fe_sq(bb, b);
        fe_mul(da, d, a);
        fe_mul(cb, c, b);
        fe_sub(e, aa, bb);
        fe_add(t, da, cb);
        fe_sq(x3, t);
        fe_sub(t, da, cb);
        fe_sq(t, t);
        fe_mul_pre(z3, t, x1, x1_19);
        fe_mul(x2, aa, bb);
        fe_mul_a24(t, e);
        fe_add(t, t, aa);
        fe_mul(z2, e, t);
    }
    fe_cswap(x2, x3, swap);
    fe_cswap(z2, z3, swap);
    fe_copy(out_x, x2);
    fe_copy(out_z, z2);
    /* the ladder state and temporaries are functions of the secret scalar */
    fe *wipe[] = {&x2, &z2, &x3, &z3, &a, &b, &aa, &bb, &e, &c, &d, &da, &cb, &t};
    for (size_t i = 0; i < sizeof wipe / sizeof wipe[0]; i++) sodium_memzero(wipe[i], sizeof(fe));
}

int lx_x25519_ladder(uint8_t out[32], const uint8_t *scalar, const uint8_t point[32], unsigned bits) {
    fe x1, x2, z2, zi;
    if (bits < 1 || bits > 256) {
        memset(out, 0, 32);
        return -1;
    }
    fe_frombytes(x1, point);
    ladder(x2, z2, scalar, x1, bits);
    fe_invert(zi, z2);
    fe_mul(x2, x2, zi);
    fe_tobytes(out, x2);
    sodium_memzero(x2, sizeof x2);
    sodium_memzero(z2, sizeof z2);
    sodium_memzero(zi, sizeof zi);
    return bytes_are_zero(out, 32) ? -1 : 0;
}

int lx_x25519(uint8_t out[32], const uint8_t scalar[32], const uint8_t point[32]) {
    uint8_t k[32];
    memcpy(k, scalar, 32);
    k[0] &= 248;
    k[31] &= 127;
    k[31] |= 64;
    int rc = lx_x25519_ladder(out, k, point, 255); /* bit 255 is clear: 255 steps suffice */
    sodium_memzero(k, sizeof k);
    return rc;
}

int lx_x25519_keyed(uint8_t out[32], const uint8_t k[32], const uint8_t pk[32]);

int lx_x25519_base_edwards(uint8_t out[32], const uint8_t scalar[32]) {
    uint8_t k[32], ed[32];
    fe y, num, den;
    memcpy(k, scalar, 32);
    k[0] &= 248;
    k[31] &= 127;
    k[31] |= 64;
    /* A clamped scalar is never 0 mod l (it is a multiple of 8 below 8l), so this cannot fail; check
     * anyway rather than use an undefined output. */
    int rc = crypto_scalarmult_ed25519_base_noclamp(ed, k);
    sodium_memzero(k, sizeof k);
    if (rc != 0) {
        memset(out, 0, 32);
        return -1;
    }
    /* Edwards y (bit 255 is the sign of x, which fe_frombytes drops) to Montgomery u */
    fe_frombytes(y, ed);
    memset(num, 0, sizeof num);
    num[0] = 1;
    fe_sub(den, num, y);
    fe_add(num, num, y);
    fe_invert(den, den);
    fe_mul(num, num, den);
    fe_tobytes(out, num);
    sodium_memzero(ed, sizeof ed);
    sodium_memzero(y, sizeof y);
    sodium_memzero(num, sizeof num);
    return 0;
}

int lx_x25519_keyed(uint8_t out[32], const uint8_t k[32], const uint8_t pk[32]);

int lx_x25519_base(uint8_t out[32], const uint8_t scalar[32]) {
    static const uint8_t NINE[32] = {9};
    uint8_t k[32];
    memcpy(k, scalar, 32);
    k[0] &= 248;
    k[31] &= 127;
    k[31] |= 64;
    /* the base point's own table (see below) is the fastest; libsodium's if it cannot be had */
    int rc = lx_x25519_keyed(out, k, NINE);
    sodium_memzero(k, sizeof k);
    return rc == 0 ? 0 : lx_x25519_base_edwards(out, scalar);
}

void lx_scalar_mul(uint8_t z[32], const uint8_t x[32], const uint8_t y[32]) {
    /* ref10's sc_mul as libsodium ships it (constant-time, reduces the 512-bit product mod l);
     * tests/test_x25519.py checks it against Python integers for inputs below 2^256. A copy, because
     * its documentation does not promise that z may alias x. */
    uint8_t r[32];
    crypto_core_ed25519_scalar_mul(r, x, y);
    memcpy(z, r, 32);
    sodium_memzero(r, sizeof r);
}

/* l = 2^252 + 27742317777372353535851937790883648493, little-endian */
static const uint8_t ELL[32] = {0xed, 0xd3, 0xf5, 0x5c, 0x1a, 0x63, 0x12, 0x58, 0xd6, 0x9c, 0xf7,
                                0xa2, 0xde, 0xf9, 0xde, 0x14, 0,    0,    0,    0,    0,    0,
                                0,    0,    0,    0,    0,    0,    0,    0,    0,    0x10};

/* u-coordinates of every point of order dividing 8 on the curve or its twist, canonical. */
static const uint8_t LOW_ORDER[5][32] = {
    {0},
    {1},
    {0xec, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
     0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f},
    {0xe0, 0xeb, 0x7a, 0x7c, 0x3b, 0x41, 0xb8, 0xae, 0x16, 0x56, 0xe3, 0xfa, 0xf1, 0x9f, 0xc4, 0x6a,
     0xda, 0x09, 0x8d, 0xeb, 0x9c, 0x32, 0xb1, 0xfd, 0x86, 0x62, 0x05, 0x16, 0x5f, 0x49, 0xb8, 0x00},
    {0x5f, 0x9c, 0x95, 0xbc, 0xa3, 0x50, 0x8c, 0x24, 0xb1, 0xd0, 0xb1, 0x55, 0x9c, 0x83, 0xef, 0x5b,
     0x04, 0x44, 0x5c, 0xc4, 0x58, 0x1c, 0x8e, 0x86, 0xd8, 0x22, 0x4e, 0xdd, 0xd0, 0x9f, 0x11, 0x57},
};

int lx_is_low_order(const uint8_t u[32]) {
    /* u may be a shared secret: compare against all five without an early exit */
    unsigned hit = 0;
    for (int i = 0; i < 5; i++) {
        uint8_t diff = 0;
        for (int j = 0; j < 32; j++) diff |= u[j] ^ LOW_ORDER[i][j];
        hit |= (((unsigned)diff) - 1U) >> 8;
    }
    return (int)(hit & 1);
}

int lx_check_public_key(const uint8_t pk[32]) {
    fe x1, x2, z2;
    uint8_t xb[32], zb[32], canon[32];
    fe_frombytes(x1, pk);
    fe_tobytes(canon, x1);
    /* canonical: bit 255 clear and below p (then reduction leaves the bytes unchanged) */
    if (memcmp(canon, pk, 32) != 0) return 0;
    /* u = 0 is the point of order two; the ladder's differential addition degenerates on it */
    if (bytes_are_zero(pk, 32)) return 0;
    ladder(x2, z2, ELL, x1, 253);
    fe_tobytes(xb, x2);
    fe_tobytes(zb, z2);
    /* l*P is the identity (x:0) with x != 0; anything else (including a degenerate (0:0)) fails */
    return bytes_are_zero(zb, 32) && !bytes_are_zero(xb, 32);
}

/* ---- per-key tables: k * PK for a node key seen before ----
 *
 * A sender multiplies the same few hundred node keys over and over, by a fresh scalar each time. For
 * such a key we keep, once, the multiples (j+1) * 256^i * PK (i < 32, j < 8) on the twisted Edwards
 * form of the curve, and a multiplication is then 64 additions of table entries plus 4 doublings, as
 * ref10 does for its base point: about a quarter of a ladder. Only the u-coordinate of the result is
 * used, and it is the same whichever method computes k * PK. Each table entry is read by scanning
 * the whole row with masks, so which entry a secret digit picks does not show in memory accesses. */

typedef struct {
    fe X, Y, Z, T; /* extended coordinates: x = X/Z, y = Y/Z, xy = T/Z */
} ge_p3;

typedef struct {
    fe X, Y, Z, T; /* "completed": x = X/Z, y = Y/T */
} ge_p1p1;

typedef struct {
    fe yplusx, yminusx, xy2d; /* affine, for the mixed addition */
} ge_precomp;

struct lx_key_table {
    uint8_t pk[32];
    ge_precomp row[32][8];
};

static const fe ED_D = {UINT64_C(929955233495203), UINT64_C(466365720129213), UINT64_C(1662059464998953),
                        UINT64_C(2033849074728123), UINT64_C(1442794654840575)};
static const fe ED_D2 = {UINT64_C(1859910466990425), UINT64_C(932731440258426), UINT64_C(1072319116312658),
                         UINT64_C(1815898335770999), UINT64_C(633789495995903)};
static const fe SQRT_M1 = {UINT64_C(1718705420411056), UINT64_C(234908883556509), UINT64_C(2233514472574048),
                           UINT64_C(2117202627021982), UINT64_C(765476049583133)};

/* f + 4p - g, for a g up to 2^53 - 76 (a sum or a difference), where fe_sub's 2p would underflow */
static inline void fe_sub4(fe h, const fe f, const fe g) {
    h[0] = f[0] + UINT64_C(0x1FFFFFFFFFFFB4) - g[0];
    h[1] = f[1] + UINT64_C(0x1FFFFFFFFFFFFC) - g[1];
    h[2] = f[2] + UINT64_C(0x1FFFFFFFFFFFFC) - g[2];
    h[3] = f[3] + UINT64_C(0x1FFFFFFFFFFFFC) - g[3];
    h[4] = f[4] + UINT64_C(0x1FFFFFFFFFFFFC) - g[4];
}

static inline void fe_0(fe h) { memset(h, 0, sizeof(fe)); }

static inline void fe_1(fe h) {
    memset(h, 0, sizeof(fe));
    h[0] = 1;
}

static inline void fe_cmov(fe f, const fe g, uint64_t b) {
    const uint64_t mask = 0 - b;
    for (int i = 0; i < 5; i++) f[i] ^= mask & (f[i] ^ g[i]);
}

static int fe_equal(const fe f, const fe g) {
    uint8_t a[32], b[32];
    fe_tobytes(a, f);
    fe_tobytes(b, g);
    return memcmp(a, b, 32) == 0; /* public data only (table construction) */
}

/* z^(2^252 - 3) = z^((p-5)/8), for square roots */
static void fe_pow22523(fe out, const fe z) {
    fe z2, z9, z11, z5_0, z10_0, z20_0, z50_0, z100_0, t;
    fe_sq(z2, z);
    fe_sq_n(t, z2, 2);
    fe_mul(z9, t, z);
    fe_mul(z11, z9, z2);
    fe_sq(t, z11);
    fe_mul(z5_0, t, z9);
    fe_sq_n(t, z5_0, 5);
    fe_mul(z10_0, t, z5_0);
    fe_sq_n(t, z10_0, 10);
    fe_mul(z20_0, t, z10_0);
    fe_sq_n(t, z20_0, 20);
    fe_mul(t, t, z20_0);
    fe_sq_n(t, t, 10);
    fe_mul(z50_0, t, z10_0);
    fe_sq_n(t, z50_0, 50);
    fe_mul(z100_0, t, z50_0);
    fe_sq_n(t, z100_0, 100);
    fe_mul(t, t, z100_0);
    fe_sq_n(t, t, 50);
    fe_mul(t, t, z50_0);            /* 2^250 - 1 */
    fe_sq_n(t, t, 2);
    fe_mul(out, t, z);              /* 2^252 - 4 + 1 */
}

static inline void ge_p1p1_to_p3(ge_p3 *r, const ge_p1p1 *p) {
    fe_mul(r->X, p->X, p->T);
    fe_mul(r->Y, p->Y, p->Z);
    fe_mul(r->Z, p->Z, p->T);
    fe_mul(r->T, p->X, p->Y);
}

/* the same without T, when the next operation is a doubling */
static inline void ge_p1p1_to_p2(ge_p3 *r, const ge_p1p1 *p) {
    fe_mul(r->X, p->X, p->T);
    fe_mul(r->Y, p->Y, p->Z);
    fe_mul(r->Z, p->Z, p->T);
}

/* 2p (T of p unused): "dbl-2008-hwcd" for a = -1 */
static inline void ge_dbl(ge_p1p1 *r, const ge_p3 *p) {
    fe t0;
    fe_sq(r->X, p->X);              /* A = X^2 */
    fe_sq(r->Z, p->Y);              /* B = Y^2 */
    fe_sq(r->T, p->Z);
    fe_add(r->T, r->T, r->T);       /* C = 2 Z^2 */
    fe_add(r->Y, p->X, p->Y);
    fe_sq(t0, r->Y);                /* (X + Y)^2 */
    fe_add(r->Y, r->Z, r->X);       /* B + A */
    fe_sub(r->Z, r->Z, r->X);       /* B - A */
    fe_sub4(r->X, t0, r->Y);        /* (X+Y)^2 - A - B */
    fe_sub4(r->T, r->T, r->Z);      /* C - (B - A) */
}

/* p + q with q affine: "madd-2008-hwcd-3" for a = -1 */
static inline void ge_madd(ge_p1p1 *r, const ge_p3 *p, const ge_precomp *q) {
    fe t0;
    fe_add(r->X, p->Y, p->X);
    fe_sub(r->Y, p->Y, p->X);
    fe_mul(r->Z, r->X, q->yplusx);  /* A */
    fe_mul(r->Y, r->Y, q->yminusx); /* B */
    fe_mul(r->T, q->xy2d, p->T);    /* C */
    fe_add(t0, p->Z, p->Z);         /* D */
    fe_sub(r->X, r->Z, r->Y);       /* E = A - B */
    fe_add(r->Y, r->Z, r->Y);       /* H = A + B */
    fe_add(r->Z, t0, r->T);         /* G = D + C */
    fe_sub(r->T, t0, r->T);         /* F = D - C */
}

/* p + q, both extended (table construction only): "add-2008-hwcd-3" */
static void ge_add(ge_p1p1 *r, const ge_p3 *p, const ge_p3 *q) {
    fe a, b, c, d, t;
    fe_sub(a, p->Y, p->X);
    fe_sub(t, q->Y, q->X);
    fe_mul(a, a, t);
    fe_add(b, p->Y, p->X);
    fe_add(t, q->Y, q->X);
    fe_mul(b, b, t);
    fe_mul(c, p->T, q->T);
    fe_mul(c, c, ED_D2);
    fe_mul(d, p->Z, q->Z);
    fe_add(d, d, d);
    fe_sub(r->X, b, a);
    fe_sub(r->T, d, c);
    fe_add(r->Z, d, c);
    fe_add(r->Y, b, a);
}

/* The Edwards point whose Montgomery u-coordinate is u (either sign of x): y = (u - 1)/(u + 1),
 * x^2 = (y^2 - 1)/(d y^2 + 1). 0 on success, -1 if u is not on the curve. Public input. */
static int ge_from_montgomery(ge_p3 *h, const uint8_t u_bytes[32]) {
    fe u, one, num, den, y, y2, v, v3, x, check, t;
    fe_frombytes(u, u_bytes);
    fe_1(one);
    fe_sub(num, u, one);
    fe_add(den, u, one);
    fe_invert(den, den);
    fe_mul(y, num, den);
    fe_sq(y2, y);
    fe_sub(num, y2, one);           /* y^2 - 1 */
    fe_mul(v, y2, ED_D);
    fe_add(v, v, one);              /* d y^2 + 1 */
    /* x = num v^3 (num v^7)^((p-5)/8), the square root trick of ref10's decompression */
    fe_sq(v3, v);
    fe_mul(v3, v3, v);
    fe_sq(x, v3);
    fe_mul(x, x, v);
    fe_mul(x, x, num);
    fe_pow22523(x, x);
    fe_mul(x, x, v3);
    fe_mul(x, x, num);
    fe_sq(check, x);
    fe_mul(check, check, v);
    if (!fe_equal(check, num)) {
        fe_0(t);
        fe_sub4(t, t, num); /* num is a difference: up to 2^53 */
        if (!fe_equal(check, t)) return -1;
        fe_mul(x, x, SQRT_M1);
    }
    fe_copy(h->X, x);
    fe_copy(h->Y, y);
    fe_1(h->Z);
    fe_mul(h->T, x, y);
    return 0;
}

/* Fills t->row from the key; the key must already have passed lx_check_public_key. */
static int table_build(struct lx_key_table *t, const uint8_t pk[32]) {
    ge_p3 base, pts[8];
    ge_p1p1 r;
    fe zs[32 * 8], acc[32 * 8], inv;
    static const size_t n = 32 * 8;
    if (ge_from_montgomery(&base, pk) != 0) return -1;
    ge_p3 *all = malloc(n * sizeof(ge_p3));
    if (!all) return -1;
    for (int i = 0; i < 32; i++) {
        pts[0] = base;
        for (int j = 1; j < 8; j++) {
            ge_add(&r, &pts[j - 1], &base);
            ge_p1p1_to_p3(&pts[j], &r);
        }
        memcpy(&all[i * 8], pts, sizeof pts);
        /* next row's base: 256 * base */
        for (int k = 0; k < 8; k++) {
            ge_dbl(&r, &base);
            ge_p1p1_to_p3(&base, &r);
        }
    }
    /* one inversion for all 256 Z (Montgomery's trick) */
    for (size_t i = 0; i < n; i++) {
        fe_copy(zs[i], all[i].Z);
        if (i == 0) fe_copy(acc[0], zs[0]);
        else fe_mul(acc[i], acc[i - 1], zs[i]);
    }
    fe_invert(inv, acc[n - 1]);
    for (size_t i = n; i-- > 0;) {
        fe zi, x, y;
        if (i > 0) {
            fe_mul(zi, inv, acc[i - 1]);
            fe_mul(inv, inv, zs[i]);
        } else {
            fe_copy(zi, inv);
        }
        fe_mul(x, all[i].X, zi);
        fe_mul(y, all[i].Y, zi);
        ge_precomp *e = &t->row[i / 8][i % 8];
        fe_add(e->yplusx, y, x);
        fe_sub(e->yminusx, y, x);
        fe_mul(e->xy2d, x, y);
        fe_mul(e->xy2d, e->xy2d, ED_D2);
    }
    free(all);
    memcpy(t->pk, pk, 32);
    return 0;
}

/* Constant-time: 1 if a == b (small non-negative values). */
static inline uint64_t eq_small(uint64_t a, uint64_t b) { return ((a ^ b) - 1) >> 63; }

/* t = b * 256^pos * PK for a digit b in -8..8, reading every entry of the row */
static inline void table_select(ge_precomp *t, const struct lx_key_table *tab, int pos, int8_t b) {
    const uint64_t neg = (uint64_t)((uint8_t)b >> 7);
    const uint64_t babs = (uint64_t)(b - (int8_t)(((-(int)neg) & b) * 2)); /* |b| */
    ge_precomp minus;
    fe_1(t->yplusx);
    fe_1(t->yminusx);
    fe_0(t->xy2d);
    for (uint64_t j = 0; j < 8; j++) {
        const ge_precomp *e = &tab->row[pos][j];
        const uint64_t m = eq_small(babs, j + 1);
        fe_cmov(t->yplusx, e->yplusx, m);
        fe_cmov(t->yminusx, e->yminusx, m);
        fe_cmov(t->xy2d, e->xy2d, m);
    }
    /* -(x, y) = (-x, y): swap y+x and y-x, negate xy2d */
    fe_copy(minus.yplusx, t->yminusx);
    fe_copy(minus.yminusx, t->yplusx);
    fe_0(minus.xy2d);
    fe_sub(minus.xy2d, minus.xy2d, t->xy2d);
    fe_cmov(t->yplusx, minus.yplusx, neg);
    fe_cmov(t->yminusx, minus.yminusx, neg);
    fe_cmov(t->xy2d, minus.xy2d, neg);
}

/* out = u(k * PK) from PK's table; k below 2^255. */
static void table_mul(uint8_t out[32], const struct lx_key_table *tab, const uint8_t k[32]) {
    int8_t e[64];
    int8_t carry = 0;
    ge_p3 h;
    ge_p1p1 r;
    ge_precomp t;
    fe num, den;
    /* signed radix 16: k = sum e[i] 16^i with e[i] in -8..8 (ref10's recoding) */
    for (int i = 0; i < 32; i++) {
        e[2 * i] = (int8_t)(k[i] & 15);
        e[2 * i + 1] = (int8_t)((k[i] >> 4) & 15);
    }
    for (int i = 0; i < 63; i++) {
        e[i] = (int8_t)(e[i] + carry);
        carry = (int8_t)((e[i] + 8) >> 4);
        e[i] = (int8_t)(e[i] - carry * 16);
    }
    e[63] = (int8_t)(e[63] + carry);
    fe_0(h.X);
    fe_1(h.Y);
    fe_1(h.Z);
    fe_0(h.T);
    for (int i = 1; i < 64; i += 2) {
        table_select(&t, tab, i / 2, e[i]);
        ge_madd(&r, &h, &t);
        ge_p1p1_to_p3(&h, &r);
    }
    for (int i = 0; i < 4; i++) { /* times 16 */
        ge_dbl(&r, &h);
        if (i < 3) ge_p1p1_to_p2(&h, &r);
        else ge_p1p1_to_p3(&h, &r);
    }
    for (int i = 0; i < 64; i += 2) {
        table_select(&t, tab, i / 2, e[i]);
        ge_madd(&r, &h, &t);
        ge_p1p1_to_p3(&h, &r);
    }
    /* Montgomery u = (Z + Y) / (Z - Y) */
    fe_add(num, h.Z, h.Y);
    fe_sub(den, h.Z, h.Y);
    fe_invert(den, den);
    fe_mul(num, num, den);
    fe_tobytes(out, num);
    sodium_memzero(e, sizeof e);
    sodium_memzero(&h, sizeof h);
    sodium_memzero(&r, sizeof r);
    sodium_memzero(&t, sizeof t);
}

/* Tables live in a per-thread cache (cffi drops the GIL around calls, so builds may run on several
 * threads at once; per-thread needs no lock): an open-addressed hash table of keys (public data, so
 * probing may depend on them). A key that fails the subgroup check is remembered without a table, so
 * it is not checked again on every packet; past TABLE_MAX tables a new key is remembered without one
 * too, and the ladder serves it: same bytes, slower. */
#define CACHE_SLOTS 4096 /* a power of two */
#define CACHE_MAX 3072   /* keys remembered, at most 3/4 of the slots */
#define TABLE_MAX 1024   /* keys with a table: up to 30 MB per thread */

typedef struct {
    uint8_t pk[32];
    struct lx_key_table *table; /* NULL: a bad key, or no room; use the ladder */
} cache_entry;

typedef struct {
    cache_entry *slot[CACHE_SLOTS];
    size_t keys, tables;
} table_cache;

static pthread_key_t cache_key;
static pthread_once_t cache_once = PTHREAD_ONCE_INIT;
static int cache_ok;

static void cache_empty(table_cache *c) {
    for (size_t i = 0; i < CACHE_SLOTS; i++) {
        if (c->slot[i]) free(c->slot[i]->table);
        free(c->slot[i]);
        c->slot[i] = NULL;
    }
    c->keys = c->tables = 0;
}

static void cache_free(void *p) {
    cache_empty(p);
    free(p);
}

static void cache_init(void) { cache_ok = pthread_key_create(&cache_key, cache_free) == 0; }

static table_cache *cache_get(int create) {
    pthread_once(&cache_once, cache_init);
    if (!cache_ok) return NULL;
    table_cache *c = pthread_getspecific(cache_key);
    if (!c && create) {
        if (!(c = calloc(1, sizeof *c))) return NULL;
        if (pthread_setspecific(cache_key, c) != 0) {
            free(c);
            return NULL;
        }
    }
    return c;
}

void lx_key_cache_clear(void) {
    table_cache *c = cache_get(0);
    if (c) cache_empty(c);
}

static const struct lx_key_table *table_for(const uint8_t pk[32]) {
    table_cache *c = cache_get(1);
    if (!c) return NULL;
    size_t i = (size_t)(load64(pk) ^ load64(pk + 8)) & (CACHE_SLOTS - 1);
    while (c->slot[i]) {
        if (memcmp(c->slot[i]->pk, pk, 32) == 0) return c->slot[i]->table;
        i = (i + 1) & (CACHE_SLOTS - 1);
    }
    if (c->keys >= CACHE_MAX) return NULL; /* full: no new entries; the ladder serves the key */
    cache_entry *e = calloc(1, sizeof *e);
    if (!e) return NULL;
    memcpy(e->pk, pk, 32);
    c->slot[i] = e;
    c->keys++;
    if (c->tables >= TABLE_MAX || lx_check_public_key(pk) != 1) return NULL;
    struct lx_key_table *t = malloc(sizeof *t);
    if (!t) return NULL;
    if (table_build(t, pk) != 0) {
        free(t);
        return NULL;
    }
    e->table = t;
    c->tables++;
    return t;
}

int lx_x25519_keyed(uint8_t out[32], const uint8_t k[32], const uint8_t pk[32]) {
    if (k[31] & 0x80) return 1; /* the recoding needs k < 2^255 */
    const struct lx_key_table *t = table_for(pk);
    if (!t) return 1;
    table_mul(out, t, k);
    return 0;
}
