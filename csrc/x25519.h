/* Curve25519 arithmetic the Sphinx core needs beyond libsodium: a Montgomery ladder that takes an
 * arbitrary (unclamped) scalar, the fixed-base X25519 through libsodium's Edwards tables, products of
 * scalars mod l, and the prime-order-subgroup check of a node key.
 *
 * Everything that touches a secret is constant-time: no branch or memory index depends on it. */
#ifndef LOOPIX_X25519_H
#define LOOPIX_X25519_H

#include <stddef.h>
#include <stdint.h>

/* out = u(k * P) where P has u-coordinate `point` (bit 255 ignored, values >= p taken mod p, as RFC
 * 7748) and k is the little-endian scalar's low `bits` bits, used as given: no clamping. `bits` is
 * public (1..256); the ladder always runs that many steps. Returns 0, or -1 if the result is all
 * zero (the identity or the point of order two). */
int lx_x25519_ladder(uint8_t out[32], const uint8_t *scalar, const uint8_t point[32], unsigned bits);

/* X25519(k, u) with RFC 7748 clamping, i.e. crypto_scalarmult on this ladder. */
int lx_x25519(uint8_t out[32], const uint8_t scalar[32], const uint8_t point[32]);

/* X25519(k, 9): through the base point's table (lx_x25519_keyed), or, if that cannot be had, clamp(k)
 * times the Ed25519 base point with libsodium's precomputed tables and the birational map
 * u = (1 + y) / (1 - y). A third, or half, of the cost of a ladder. */
int lx_x25519_base(uint8_t out[32], const uint8_t scalar[32]);
int lx_x25519_base_edwards(uint8_t out[32], const uint8_t scalar[32]); /* the fallback alone */

/* z = x * y mod l (l = 2^252 + 27742317777372353535851937790883648493), all little-endian. x and y
 * may be any values below 2^255. */
void lx_scalar_mul(uint8_t z[32], const uint8_t x[32], const uint8_t y[32]);

/* 1 if pk is a canonical u-coordinate (below p, bit 255 clear) of a point of order l: a point in the
 * prime-order subgroup, as every honest X25519 public key is. 0 for low-order points, points with a
 * low-order component, points on the twist and non-canonical encodings. Public input: not
 * constant-time in pk. */
int lx_check_public_key(const uint8_t pk[32]);

/* out = u(k * PK) for k < 2^255 used as given, through a table of multiples of PK kept per thread
 * (built on first use of the key: one subgroup check and about the cost of 10 ladders; then each
 * multiplication costs about a quarter of a ladder). Only for keys that pass lx_check_public_key:
 * returns 1 without writing out for any other key, for k >= 2^255 or when memory runs out, and the
 * caller uses the ladder instead. Up to 1024 tables of 30 KB each per thread. */
int lx_x25519_keyed(uint8_t out[32], const uint8_t k[32], const uint8_t pk[32]);

/* Frees this thread's tables (tests and benchmarks measure the cold path with it). */
void lx_key_cache_clear(void);

/* 1 if u (a ladder output, fully reduced) is the u-coordinate of a point of order dividing 8. */
int lx_is_low_order(const uint8_t u[32]);

#endif
