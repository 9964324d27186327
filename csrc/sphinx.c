/* loopix Sphinx core; see sphinx.h and docs/sphinx.md for the format. */
/* SHA256_Init and friends: deprecated in OpenSSL 3 in favour of EVP, which costs more per call than
 * a whole compression at these message sizes. */
#define OPENSSL_API_COMPAT 0x10100000L
#include "sphinx.h"
#include "x25519.h"

#include <string.h>

#include <openssl/evp.h>
#include <openssl/sha.h>
#include <sodium.h>

#define SLOT 60
#define BETA 300
#define KEYSTREAM 360
#define FINAL_META 52
#define PAYLOAD_KEY 192

static const uint8_t VERSION_BYTES[3] = {0, 0x01, 0x03}; /* 259 */
static const char HKDF_INFO[] =
    "Dwste mou enan moxlo arketa makru kai ena upomoxlio gia na ton topothetisw kai tha kinisw thn gh.";
static const char PKEY_SALT[] = "sphinx-payload-key-V01-CS01-HKDF:SHA256-SALT";
static const char PKEY_INFO[] = "sphinx-payload-key-V01-CS01-HKDF:SHA256-INFO";
static const char FINAL_PAD_PERSONAL[] = "loopix sphinx final-hop padding";
static const uint8_t ZERO_NONCE[8] = {0};

static const size_t PAYLOAD_SIZES[5] = {21, 2048, 8192, 16384, 32768};

long lx_packet_size(size_t payload_size) {
    for (int i = 0; i < 5; i++)
        if (PAYLOAD_SIZES[i] == payload_size)
            return (long)(LX_HEADER_SIZE + LX_PAYLOAD_OVERHEAD + payload_size);
    return LX_ERR_PARAM;
}

static int payload_size_of_packet(size_t len, size_t *payload_size) {
    for (int i = 0; i < 5; i++)
        if (LX_HEADER_SIZE + LX_PAYLOAD_OVERHEAD + PAYLOAD_SIZES[i] == len) {
            *payload_size = PAYLOAD_SIZES[i];
            return LX_OK;
        }
    return LX_ERR_SIZE;
}


/* ---- primitives ---- */

/* HMAC-SHA256 with the key's inner and outer hash states computed once and copied per message.
 * SHA-256 comes from libcrypto because it uses the CPU's SHA extensions: one compression costs about
 * 0.04 us there against 0.22 us in libsodium 1.0.18, and a hop needs about 80 of them. */
typedef struct {
    SHA256_CTX inner, outer;
} hmac_key;

static void hmac_key_init(hmac_key *k, const uint8_t *key, size_t len) {
    uint8_t block[64] = {0};
    if (len) memcpy(block, key, len); /* every key here is at most 64 bytes */
    for (int i = 0; i < 64; i++) block[i] ^= 0x36;
    SHA256_Init(&k->inner);
    SHA256_Update(&k->inner, block, 64);
    for (int i = 0; i < 64; i++) block[i] ^= 0x36 ^ 0x5c;
    SHA256_Init(&k->outer);
    SHA256_Update(&k->outer, block, 64);
    sodium_memzero(block, sizeof block);
}

static void hmac3(const hmac_key *k, const uint8_t *a, size_t alen, const uint8_t *b, size_t blen,
                  const uint8_t *c, size_t clen, uint8_t *out) {
    uint8_t t[32];
    SHA256_CTX ctx = k->inner;
    if (alen) SHA256_Update(&ctx, a, alen);
    if (blen) SHA256_Update(&ctx, b, blen);
    if (clen) SHA256_Update(&ctx, c, clen);
    SHA256_Final(t, &ctx);
    ctx = k->outer;
    SHA256_Update(&ctx, t, 32);
    SHA256_Final(out, &ctx);
    sodium_memzero(&ctx, sizeof ctx);
}

static hmac_key empty_salt_key, payload_salt_key;

/* RFC 5869 with a pre-keyed salt. */
static void hkdf_sha256(const hmac_key *salt, const uint8_t *ikm, size_t ikm_len, const uint8_t *info,
                        size_t info_len, uint8_t *out, size_t out_len) {
    uint8_t prk[32], t[32];
    hmac_key prk_key;
    hmac3(salt, ikm, ikm_len, NULL, 0, NULL, 0, prk);
    hmac_key_init(&prk_key, prk, sizeof prk);
    size_t done = 0;
    for (uint8_t counter = 1; done < out_len; counter++) {
        hmac3(&prk_key, t, counter > 1 ? 32 : 0, info, info_len, &counter, 1, t);
        size_t take = out_len - done < 32 ? out_len - done : 32;
        memcpy(out + done, t, take);
        done += take;
    }
    sodium_memzero(prk, sizeof prk);
    sodium_memzero(t, sizeof t);
    sodium_memzero(&prk_key, sizeof prk_key);
}

int lx_expand_secret(const uint8_t *shared, uint8_t *out) {
    hkdf_sha256(&empty_salt_key, shared, 32, (const uint8_t *)HKDF_INFO, sizeof HKDF_INFO - 1, out,
                LX_EXPANDED_SIZE);
    return LX_OK;
}

static void payload_key(const uint8_t *expanded, int legacy, uint8_t *key) {
    if (legacy) {
        memcpy(key, expanded + 32, PAYLOAD_KEY);
        return;
    }
    hkdf_sha256(&payload_salt_key, expanded + 32, 16, (const uint8_t *)PKEY_INFO, sizeof PKEY_INFO - 1,
                key, PAYLOAD_KEY);
}

int lx_init(void) {
    if (sodium_init() < 0) return LX_ERR_CRYPTO;
    hmac_key_init(&empty_salt_key, NULL, 0);
    hmac_key_init(&payload_salt_key, (const uint8_t *)PKEY_SALT, sizeof PKEY_SALT - 1);
    return LX_OK;
}

static _Thread_local EVP_CIPHER_CTX *aes_ctx;

/* AES-128-CTR keystream from a zero IV: the routing-info cipher. */
static int aes_keystream(const uint8_t *key, uint8_t *out, int len) {
    static const uint8_t zero_iv[16] = {0};
    static const uint8_t zeros[KEYSTREAM] = {0};
    int outl = 0;
    if (len > KEYSTREAM) return LX_ERR_PARAM;
    if (!aes_ctx) { /* the cipher is set once per thread: each call sets only key and IV (setting the
                     * cipher again made OpenSSL 3 look it up each time, ~8 % of an unwrap) */
        if (!(aes_ctx = EVP_CIPHER_CTX_new())) return LX_ERR_CRYPTO;
        if (EVP_EncryptInit_ex(aes_ctx, EVP_aes_128_ctr(), NULL, NULL, NULL) != 1) {
            EVP_CIPHER_CTX_free(aes_ctx);
            aes_ctx = NULL;
            return LX_ERR_CRYPTO;
        }
    }
    if (EVP_EncryptInit_ex(aes_ctx, NULL, NULL, key, zero_iv) != 1) return LX_ERR_CRYPTO;
    if (EVP_EncryptUpdate(aes_ctx, out, &outl, zeros, len) != 1 || outl != len) return LX_ERR_CRYPTO;
    return LX_OK;
}

static void header_mac(const uint8_t *key16, const uint8_t *beta, uint8_t *mac16) {
    uint8_t full[32];
    hmac_key k;
    hmac_key_init(&k, key16, 16);
    hmac3(&k, beta, BETA, NULL, 0, NULL, 0, full);
    memcpy(mac16, full, 16);
}

static void xor_into(uint8_t *dst, const uint8_t *src, size_t n) {
    for (size_t i = 0; i < n; i++) dst[i] ^= src[i];
}

/* ---- LIONESS (ChaCha20 + keyed BLAKE2b-256), as the lioness crate ---- */

static void lioness_round_stream(const uint8_t *left, const uint8_t *k, uint8_t *right, size_t rlen) {
    uint8_t key[32];
    for (int i = 0; i < 32; i++) key[i] = left[i] ^ k[i];
    crypto_stream_chacha20_xor(right, right, rlen, ZERO_NONCE, key);
    sodium_memzero(key, sizeof key);
}

static void lioness_round_hash(uint8_t *left, const uint8_t *k64, const uint8_t *right, size_t rlen) {
    uint8_t h[32];
    crypto_generichash(h, 32, right, rlen, k64, 64);
    xor_into(left, h, 32);
}

int lx_lioness_encrypt(const uint8_t *key, uint8_t *block, size_t len) {
    if (len <= 32) return LX_ERR_PARAM;
    uint8_t *l = block, *r = block + 32;
    size_t rl = len - 32;
    lioness_round_stream(l, key, r, rl);
    lioness_round_hash(l, key + 32, r, rl);
    lioness_round_stream(l, key + 96, r, rl);
    lioness_round_hash(l, key + 128, r, rl);
    return LX_OK;
}

int lx_lioness_decrypt(const uint8_t *key, uint8_t *block, size_t len) {
    if (len <= 32) return LX_ERR_PARAM;
    uint8_t *l = block, *r = block + 32;
    size_t rl = len - 32;
    lioness_round_hash(l, key + 128, r, rl);
    lioness_round_stream(l, key + 96, r, rl);
    lioness_round_hash(l, key + 32, r, rl);
    lioness_round_stream(l, key, r, rl);
    return LX_OK;
}

/* ---- build ---- */

typedef struct {
    uint8_t expanded[LX_MAX_HOPS][LX_EXPANDED_SIZE];
    uint8_t keystream[LX_MAX_HOPS][KEYSTREAM];
    uint8_t pkey[PAYLOAD_KEY];
    uint8_t x[32];
} build_scratch;

static void put_be64(uint8_t *p, uint64_t v) {
    for (int i = 7; i >= 0; i--, v >>= 8) p[i] = (uint8_t)v;
}

/* Hop i's shared secret. The crate folds X25519 over the clamped factors, s_i = X25519(b_{i-1}, ...
 * X25519(x, PK_i)): i+1 ladders for hop i. For PK_i in the prime-order subgroup (every honest key; see
 * lx_check_public_key) that is u((clamp(x) clamp(b_0) ... clamp(b_{i-1}) mod l) * PK_i): the u-coordinate
 * of a product does not depend on the order of the factors or on signs, and a point of order l only
 * sees its scalar mod l. So each hop costs one multiplication by the running product k_i. Hop 0 uses
 * clamp(x) itself (255 bits), exactly as X25519 does for any point; later k_i < l < 2^253.
 * A key outside the subgroup gives other bytes than the fold (it would be refused at topology load);
 * a shared secret of low order, which such a key can produce, is refused here as the fold refuses
 * the all-zero one. Writes expanded[i] and the routing keystream for every hop.
 * The multiplication itself goes through the key's table when it has one (lx_x25519_keyed), else
 * through the ladder: both give u(k_i * PK_i). */
static int derive_hops(const uint8_t *x, const lx_hop *hops, size_t n,
                       uint8_t expanded[][LX_EXPANDED_SIZE], uint8_t keystream[][KEYSTREAM]) {
    uint8_t k[32], bf[32], shared[32];
    int rc = LX_OK;
    memcpy(k, x, 32);
    k[0] &= 248;
    k[31] &= 127;
    k[31] |= 64;
    for (size_t i = 0; i < n; i++) {
        /* a key seen before (and in the subgroup) has a table: a third of a ladder */
        if (lx_x25519_keyed(shared, k, hops[i].public_key) != 0)
            lx_x25519_ladder(shared, k, hops[i].public_key, i == 0 ? 255 : 253);
        if (lx_is_low_order(shared)) {
            rc = LX_ERR_KEY;
            break;
        }
        lx_expand_secret(shared, expanded[i]);
        if ((rc = aes_keystream(expanded[i], keystream[i], KEYSTREAM)) != LX_OK) break;
        if (i + 1 < n) {
            memcpy(bf, expanded[i] + 224, 32);
            bf[0] &= 248;
            bf[31] &= 127;
            bf[31] |= 64;
            lx_scalar_mul(k, k, bf);
        }
    }
    sodium_memzero(k, sizeof k);
    sodium_memzero(bf, sizeof bf);
    sodium_memzero(shared, sizeof shared);
    return rc;
}

int lx_derive_hop_keys(const uint8_t *x, const uint8_t *public_keys, size_t n, uint8_t *out) {
    lx_hop hops[LX_MAX_HOPS];
    uint8_t expanded[LX_MAX_HOPS][LX_EXPANDED_SIZE], keystream[LX_MAX_HOPS][KEYSTREAM];
    if (!x || !public_keys || !out || n < 1 || n > LX_MAX_HOPS) return LX_ERR_PARAM;
    memset(hops, 0, sizeof hops);
    for (size_t i = 0; i < n; i++) memcpy(hops[i].public_key, public_keys + 32 * i, 32);
    int rc = derive_hops(x, hops, n, expanded, keystream);
    if (rc == LX_OK) memcpy(out, expanded, n * LX_EXPANDED_SIZE);
    sodium_memzero(expanded, sizeof expanded);
    sodium_memzero(keystream, sizeof keystream);
    return rc;
}

static int build_into(const lx_packet_spec *s, const uint8_t *msg, size_t payload_size, uint8_t *out,
                      build_scratch *w) {
    const size_t n = s->n_hops;
    const size_t payload_len = payload_size + LX_PAYLOAD_OVERHEAD;
    int rc;
    if (n < 1 || n > LX_MAX_HOPS || s->message_len > payload_size) return LX_ERR_PARAM;

    if (s->use_ephemeral_secret) memcpy(w->x, s->ephemeral_secret, 32);
    else randombytes_buf(w->x, 32);

    if ((rc = derive_hops(w->x, s->hops, n, w->expanded, w->keystream)) != LX_OK) return rc;

    uint8_t *alpha = out, *gamma = out + 32, *beta = out + 48, *payload = out + LX_HEADER_SIZE;
    uint8_t plain[BETA];

    /* Final hop: flag, version, destination, identifier, pad; then the filler. */
    size_t filler_len = SLOT * (n - 1);
    size_t final_len = BETA - filler_len;
    plain[0] = LX_FINAL;
    memcpy(plain + 1, VERSION_BYTES, 3);
    memcpy(plain + 4, s->destination, 32);
    memcpy(plain + 36, s->identifier, 16);
    {
        uint8_t seed[32];
        crypto_generichash(seed, 32, (const uint8_t *)FINAL_PAD_PERSONAL, sizeof FINAL_PAD_PERSONAL - 1,
                           w->x, 32);
        crypto_stream_chacha20(plain + FINAL_META, final_len - FINAL_META, ZERO_NONCE, seed);
        sodium_memzero(seed, sizeof seed);
    }
    xor_into(plain, w->keystream[n - 1], final_len);
    memcpy(beta, plain, final_len);
    memset(beta + final_len, 0, filler_len);
    for (size_t i = 1; i < n; i++) {
        /* the filler grows by one slot per hop; only its first 60*i bytes get keystream i-1 */
        xor_into(beta + final_len, w->keystream[i - 1] + KEYSTREAM - SLOT * i, SLOT * i);
    }
    header_mac(w->expanded[n - 1] + 16, beta, gamma);

    for (size_t k = n - 1; k-- > 0;) {
        plain[0] = LX_FORWARD;
        memcpy(plain + 1, VERSION_BYTES, 3);
        memcpy(plain + 4, s->hops[k + 1].address, 32);
        put_be64(plain + 36, s->hops[k].delay_ns);
        memcpy(plain + 44, gamma, 16);
        memcpy(plain + SLOT, beta, BETA - SLOT);
        xor_into(plain, w->keystream[k], BETA);
        memcpy(beta, plain, BETA);
        header_mac(w->expanded[k] + 16, beta, gamma);
    }
    if (lx_x25519_base(alpha, w->x) != 0) return LX_ERR_KEY;

    memset(payload, 0, 16);
    if (s->message_len) memcpy(payload + 16, msg, s->message_len); /* msg may be NULL when empty */
    payload[16 + s->message_len] = 0x01;
    memset(payload + 17 + s->message_len, 0, payload_len - 17 - s->message_len);
    for (size_t i = n; i-- > 0;) {
        payload_key(w->expanded[i], 0, w->pkey);
        lx_lioness_encrypt(w->pkey, payload, payload_len);
    }
    return LX_OK;
}

static void wipe(build_scratch *w) { sodium_memzero(w, sizeof *w); }

int lx_build_packet(const lx_packet_spec *spec, const uint8_t *message, size_t message_len,
                    size_t payload_size, uint8_t *out, size_t out_len) {
    long size = lx_packet_size(payload_size);
    if (size < 0 || !spec || !out || out_len < (size_t)size) return LX_ERR_PARAM;
    if (spec->message_len != message_len || (message_len && !message)) return LX_ERR_PARAM;
    build_scratch w;
    int rc = build_into(spec, message, payload_size, out, &w);
    wipe(&w);
    if (rc != LX_OK) memset(out, 0, (size_t)size);
    return rc;
}

long lx_build_batch(const lx_packet_spec *specs, size_t count, const uint8_t *messages,
                    size_t messages_len, size_t payload_size, uint8_t *out, size_t out_len,
                    size_t stride, int32_t *status) {
    long size = lx_packet_size(payload_size);
    if (size < 0 || stride < (size_t)size || (count && (!specs || !out || !status))) return LX_ERR_PARAM;
    /* packet count-1 ends at (count-1)*stride + size: check it fits without overflow */
    if (count && (out_len < (size_t)size || count - 1 > (out_len - (size_t)size) / stride))
        return LX_ERR_PARAM;
    build_scratch w;
    long ok = 0;
    for (size_t i = 0; i < count; i++) {
        const lx_packet_spec *s = &specs[i];
        uint8_t *dst = out + i * stride;
        int rc;
        if (s->message_offset > messages_len || s->message_len > messages_len - s->message_offset ||
            (s->message_len && !messages))
            rc = LX_ERR_PARAM;
        else
            rc = build_into(s, messages ? messages + s->message_offset : NULL, payload_size, dst, &w);
        if (rc != LX_OK) memset(dst, 0, (size_t)size);
        status[i] = rc;
        ok += rc == LX_OK;
    }
    wipe(&w);
    return ok;
}

/* ---- process ---- */

typedef struct {
    uint8_t shared[32];
    uint8_t expanded[LX_EXPANDED_SIZE];
    uint8_t keystream[KEYSTREAM];
    uint8_t pkey[PAYLOAD_KEY];
} process_scratch;

static int process_into(const uint8_t *secret, const uint8_t *pkt, size_t len, size_t payload_size,
                        uint8_t *out, lx_processed *res, process_scratch *w) {
    const uint8_t *alpha = pkt, *gamma = pkt + 32, *beta = pkt + 48;
    uint8_t mac[16];
    int rc;
    memset(res, 0, sizeof *res);
    if (crypto_scalarmult(w->shared, secret, alpha) != 0) return LX_ERR_KEY;
    lx_expand_secret(w->shared, w->expanded);
    header_mac(w->expanded + 16, beta, mac);
    if (crypto_verify_16(mac, gamma) != 0) return LX_ERR_MAC;
    if ((rc = aes_keystream(w->expanded, w->keystream, KEYSTREAM)) != LX_OK) return rc;
    uint8_t *plain = w->keystream; /* plain = (beta || 0^60) ^ keystream, in place */
    xor_into(plain, beta, BETA);
    int flag = plain[0];
    int version = (plain[2] << 8) | plain[3];
    if (version != 259 && version != 258) return LX_ERR_HEADER;
    if (flag != LX_FORWARD && flag != LX_FINAL) return LX_ERR_HEADER;

    const size_t payload_len = payload_size + LX_PAYLOAD_OVERHEAD;
    uint8_t *payload = out + LX_HEADER_SIZE;
    if (payload != pkt + LX_HEADER_SIZE) memmove(payload, pkt + LX_HEADER_SIZE, payload_len);
    payload_key(w->expanded, version == 258, w->pkey);
    lx_lioness_decrypt(w->pkey, payload, payload_len);
    memcpy(res->replay_tag, w->expanded + 256, 32);

    if (flag == LX_FORWARD) {
        uint8_t next_alpha[32];
        if (crypto_scalarmult(next_alpha, w->expanded + 224, alpha) != 0) return LX_ERR_KEY;
        res->kind = LX_FORWARD;
        memcpy(res->next_address, plain + 4, 32);
        uint64_t d = 0;
        for (int i = 0; i < 8; i++) d = (d << 8) | plain[36 + i];
        res->delay_ns = d;
        memcpy(out, next_alpha, 32);
        memcpy(out + 32, plain + 44, 16);
        memcpy(out + 48, plain + SLOT, BETA);
        return LX_OK;
    }
    /* final: 0^16 || message || 0x01 || 0... */
    res->kind = LX_FINAL;
    memcpy(res->destination, plain + 4, 32);
    memcpy(res->identifier, plain + 36, 16);
    memset(out, 0, LX_HEADER_SIZE);
    uint8_t acc = 0;
    for (int i = 0; i < 16; i++) acc |= payload[i];
    if (acc) return LX_ERR_PAYLOAD;
    size_t end = payload_len;
    while (end > 16 && payload[end - 1] == 0) end--;
    if (end <= 16 || payload[end - 1] != 0x01) return LX_ERR_PAYLOAD;
    res->message_offset = LX_HEADER_SIZE + 16;
    res->message_len = end - 1 - 16;
    return LX_OK;
}

int lx_process_packet(const uint8_t *secret, const uint8_t *packet, size_t len, uint8_t *out,
                      size_t out_len, lx_processed *res) {
    size_t payload_size;
    if (!secret || !packet || !out || !res) return LX_ERR_PARAM;
    if (payload_size_of_packet(len, &payload_size) != LX_OK) return LX_ERR_SIZE;
    if (out_len < len) return LX_ERR_PARAM;
    process_scratch w;
    int rc = process_into(secret, packet, len, payload_size, out, res, &w);
    sodium_memzero(&w, sizeof w);
    res->status = rc;
    return rc;
}

long lx_process_batch(const uint8_t *secret, const uint8_t *packets, size_t count,
                      size_t packet_len, uint8_t *out, size_t out_len, lx_processed *res) {
    size_t payload_size;
    if (!secret || !res || (count && (!packets || !out))) return LX_ERR_PARAM;
    if (payload_size_of_packet(packet_len, &payload_size) != LX_OK) return LX_ERR_SIZE;
    if (count && out_len / packet_len < count) return LX_ERR_PARAM;
    process_scratch w;
    long ok = 0;
    for (size_t i = 0; i < count; i++) {
        int rc = process_into(secret, packets + i * packet_len, packet_len, payload_size,
                              out + i * packet_len, &res[i], &w);
        res[i].status = rc;
        ok += rc == LX_OK;
    }
    sodium_memzero(&w, sizeof w);
    return ok;
}
