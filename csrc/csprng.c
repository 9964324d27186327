/* loopix CSPRNG; see csprng.h and docs/randomness.md. */
#include "csprng.h"

#include <math.h>
#include <string.h>
#include <time.h>

#include <openssl/evp.h>
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

/* Two implementations of the same keystream: libsodium's ChaCha20 and OpenSSL's, each picking its
 * SIMD code at run time. Same cipher, key and nonce, block counter from 0: the same bytes (OpenSSL's
 * 16-byte IV is the 64-bit block counter then the 64-bit nonce). Which is faster depends on the
 * machine: OpenSSL 3's AVX2 code runs at ~3.4 GB/s here, libsodium 1.0.18's at ~0.9-1.5 GB/s, but
 * OpenSSL's AVX-512 code, which it prefers where AVX-512 exists, at ~0.6 GB/s on this VM. So the
 * first long output times both on a few blocks and keeps the faster; short outputs, and any OpenSSL
 * failure, use libsodium. */
#define OPENSSL_MIN 256
static _Thread_local EVP_CIPHER_CTX *chacha_ctx;

static int keystream_openssl(const uint8_t *key, uint8_t *out, size_t n) {
    static const uint8_t iv[16] = {0}; /* counter 0, nonce 0 */
    int outl = 0;
    if (n > (size_t)1 << 30) return -1;
    if (!chacha_ctx) { /* the cipher is fetched once per thread; each refill sets only key and IV */
        if (!(chacha_ctx = EVP_CIPHER_CTX_new())) return -1;
        if (EVP_EncryptInit_ex(chacha_ctx, EVP_chacha20(), NULL, NULL, NULL) != 1) {
            EVP_CIPHER_CTX_free(chacha_ctx);
            chacha_ctx = NULL;
            return -1;
        }
    }
    if (EVP_EncryptInit_ex(chacha_ctx, NULL, NULL, key, iv) != 1) return -1;
    memset(out, 0, n);
    if (EVP_EncryptUpdate(chacha_ctx, out, &outl, out, (int)n) != 1 || (size_t)outl != n) return -1;
    return 0;
}

static int use_openssl = -1; /* -1: not measured yet; lx_rng_set_path sets it for tests */

void lx_rng_set_path(int path) { use_openssl = path == 0 || path == 1 ? path : -1; }

int lx_rng_path(void) { return use_openssl; }

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

/* The faster implementation on this machine, best of 5 runs of 16 KiB each (~0.1 ms once). */
static int measure_openssl(void) {
    static uint8_t buf[16384];
    static const uint8_t key[32] = {1};
    double best_ossl = 1e9, best_sodium = 1e9;
    for (int i = 0; i < 5; i++) {
        double t0 = now_s();
        if (keystream_openssl(key, buf, sizeof buf) != 0) return 0;
        double t1 = now_s();
        crypto_stream_chacha20(buf, sizeof buf, ZERO_NONCE, key);
        double t2 = now_s();
        if (t1 - t0 < best_ossl) best_ossl = t1 - t0;
        if (t2 - t1 < best_sodium) best_sodium = t2 - t1;
    }
    return best_ossl < best_sodium;
}

void lx_rng_bytes(lx_rng *r, uint8_t *out, size_t n) {
    uint8_t next[32];
    if (n >= OPENSSL_MIN && use_openssl < 0) use_openssl = measure_openssl();
    if (n && !(use_openssl == 1 && n >= OPENSSL_MIN && keystream_openssl(r->key, out, n) == 0))
        crypto_stream_chacha20(out, n, ZERO_NONCE, r->key);
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
