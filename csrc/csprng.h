/* loopix CSPRNG: a fast-key-erasure ChaCha20 stream for every value an adversary can observe
 * (routes, per-hop delays, the Poisson send schedule, drop-cover payloads). See docs/randomness.md.
 *
 * Each refill hands out ChaCha20 keystream of the current key (nonce 0) and replaces the key with 32
 * bytes of its keystream under nonce 1 (fast key erasure): a copy of the state taken later does not
 * reveal earlier outputs.
 * The key comes from the OS (libsodium's randombytes, i.e. getrandom) unless a seed is given (tests). */
#ifndef LOOPIX_CSPRNG_H
#define LOOPIX_CSPRNG_H

#include <stddef.h>
#include <stdint.h>

typedef struct {
    uint8_t key[32];
} lx_rng;

/* Keys the stream from the OS (seed NULL) or from 32 seed bytes (deterministic: tests only). */
int lx_rng_seed(lx_rng *r, const uint8_t *seed);
/* n random bytes. */
void lx_rng_bytes(lx_rng *r, uint8_t *out, size_t n);
/* Which implementation long outputs use from now on: 0 libsodium, 1 OpenSSL, -1 measure both on the
 * next long output and keep the faster (the default). Tests hold both to the same bytes. Process-wide. */
void lx_rng_set_path(int path);
/* Which implementation long outputs use: 1 OpenSSL, 0 libsodium, -1 not measured yet. */
int lx_rng_path(void);
/* n doubles uniform on [0, 1), 53 random bits each. */
void lx_rng_doubles(lx_rng *r, double *out, size_t n);
/* n draws of Exp(1) (mean 1): -log(1 - U). */
void lx_rng_exponentials(lx_rng *r, double *out, size_t n);
/* n integers uniform on [0, bound) without bias (bound >= 1), by Lemire's multiply-and-reject. */
int lx_rng_below(lx_rng *r, uint32_t bound, uint32_t *out, size_t n);

#endif
