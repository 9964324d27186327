/* loopix CSPRNG; see csprng.h and docs/randomness.md. */
#include "csprng.h"

#include <math.h>
#include <string.h>

#include <sodium.h>

#define CHUNK 4096 /* bytes of keystream per refill for the typed draws (on the stack) */

static const uint8_t ZERO_NONCE[8] = {0};

int lx_rng_seed(lx_rng *r, const uint8_t *seed) {
    if (!r) return -1;
    if (seed) memcpy(r->key, seed, 32);
    else randombytes_buf(r->key, 32);
    return 0;
}

/* One refill: the output is the keystream of the current key under nonce 0, written straight into
 * out; the next key is the first 32 bytes of the keystream under nonce 1. Two nonces of one key are
 * independent streams, and no key is ever used for a second refill. */
static const uint8_t KEY_NONCE[8] = {1, 0, 0, 0, 0, 0, 0, 0};

void lx_rng_bytes(lx_rng *r, uint8_t *out, size_t n) {
    uint8_t next[32];
    if (n) crypto_stream_chacha20(out, n, ZERO_NONCE, r->key);
    crypto_stream_chacha20(next, sizeof next, KEY_NONCE, r->key);
    memcpy(r->key, next, sizeof next);
    sodium_memzero(next, sizeof next);
}

static void words(lx_rng *r, uint64_t *out, size_t n) {
    lx_rng_bytes(r, (uint8_t *)out, n * sizeof *out);
}

void lx_rng_doubles(lx_rng *r, double *out, size_t n) {
    uint64_t w[CHUNK / 8];
    while (n) {
        size_t take = n < CHUNK / 8 ? n : CHUNK / 8;
        words(r, w, take);
        for (size_t i = 0; i < take; i++) out[i] = (double)(w[i] >> 11) * 0x1.0p-53;
        out += take;
        n -= take;
    }
    sodium_memzero(w, sizeof w);
}

void lx_rng_exponentials(lx_rng *r, double *out, size_t n) {
    lx_rng_doubles(r, out, n);
    for (size_t i = 0; i < n; i++) out[i] = -log1p(-out[i]); /* 1 - U is in (0, 1]: finite */
}

int lx_rng_below(lx_rng *r, uint32_t bound, uint32_t *out, size_t n) {
    if (bound == 0) return -1;
    const uint32_t threshold = (uint32_t)(-bound) % bound; /* 2^32 mod bound */
    uint32_t w[CHUNK / 4];
    size_t have = 0, used = 0;
    for (size_t i = 0; i < n;) {
        if (used == have) {
            have = n - i + 8 < CHUNK / 4 ? n - i + 8 : CHUNK / 4; /* a few spare for rejections */
            lx_rng_bytes(r, (uint8_t *)w, have * sizeof *w);
            used = 0;
        }
        uint64_t m = (uint64_t)w[used++] * bound;
        if ((uint32_t)m < threshold) continue; /* rejected: keeps every value equally likely */
        out[i++] = (uint32_t)(m >> 32);
    }
    sodium_memzero(w, sizeof w);
    return 0;
}
