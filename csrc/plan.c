/* loopix worker planning in bulk; see plan.h and docs/randomness.md. */
#include "plan.h"
#include "ringscan.h"

#include <math.h>
#include <string.h>

#include <openssl/evp.h>
#include <sodium.h>

#define DRAWS 256 /* uniforms per refill */
#define MAX_NS 1.8e19 /* below 2^64: a double is converted to uint64_t only under this */

/* An index below n from a uniform double: bias at most n / 2^53 (see docs/randomness.md). */
static uint32_t index_below(double u, uint32_t n) {
    uint32_t k = (uint32_t)(u * n);
    return k < n ? k : n - 1;
}

int lx_clock_draw(lx_clock *c, lx_rng *r, size_t count, uint64_t *t, uint32_t *identity, uint8_t *stream) {
    double u[3 * DRAWS];
    if (!c || !r || !(c->total_rate > 0) || (count && (!t || !identity || !stream))) return LX_ERR_PARAM;
    if (c->cumulative ? c->n_entries == 0 : c->n_identities == 0) return LX_ERR_PARAM;
    const double ns_per_unit = 1e9 / c->total_rate;
    for (size_t done = 0; done < count;) {
        size_t take = count - done < DRAWS ? count - done : DRAWS;
        lx_rng_doubles(r, u, 3 * take);
        for (size_t i = 0; i < take; i++, done++) {
            double gap_f = -log1p(-u[3 * i]) * ns_per_unit;
            uint64_t gap = gap_f < MAX_NS ? (uint64_t)gap_f : UINT64_MAX;
            /* saturates at 2^64 - 1 ("never") rather than wrap into the past: a tiny rate */
            c->now_ns = gap > UINT64_MAX - c->now_ns ? UINT64_MAX : c->now_ns + gap;
            t[done] = c->now_ns;
            if (!c->cumulative) {
                identity[done] = index_below(u[3 * i + 1], c->n_identities);
                double x = u[3 * i + 2] * c->stream_cum[2];
                stream[done] = x < c->stream_cum[0] ? 0 : x < c->stream_cum[1] ? 1 : 2;
            } else { /* first entry whose cumulative rate exceeds x: a bisection */
                double x = u[3 * i + 1] * c->cumulative[c->n_entries - 1];
                uint32_t lo = 0, hi = c->n_entries - 1;
                while (lo < hi) {
                    uint32_t mid = lo + (hi - lo) / 2;
                    if (c->cumulative[mid] > x) hi = mid;
                    else lo = mid + 1;
                }
                identity[done] = lo / 3;
                stream[done] = (uint8_t)(lo % 3);
            }
        }
    }
    return LX_OK;
}

int lx_draw_routes(lx_rng *r, const lx_route_table *t, lx_packet_spec *specs, size_t count,
                   const uint32_t *provider) {
    double u[2 * LX_MAX_HOPS * 32];
    if (!r || !t || (count && (!specs || !provider))) return LX_ERR_PARAM;
    if (t->n_layers < 1 || t->n_layers + 1 > LX_MAX_HOPS || t->n_providers == 0 || !t->provider_hops)
        return LX_ERR_PARAM;
    for (uint32_t l = 0; l < t->n_layers; l++)
        if (t->layer_size[l] == 0 || !t->layer_hops[l]) return LX_ERR_PARAM;
    for (size_t i = 0; i < count; i++)
        if (provider[i] != LX_ANY_PROVIDER && provider[i] >= t->n_providers) return LX_ERR_PARAM;
    const size_t per = 2 * (size_t)t->n_layers + 1; /* mixnodes, delays, provider */
    const size_t batch = sizeof u / sizeof u[0] / per;
    for (size_t done = 0; done < count;) {
        size_t take = count - done < batch ? count - done : batch;
        lx_rng_doubles(r, u, per * take);
        for (size_t i = 0; i < take; i++, done++) {
            lx_packet_spec *s = &specs[done];
            const double *v = u + per * i;
            s->n_hops = t->n_layers + 1;
            for (uint32_t l = 0; l < t->n_layers; l++) {
                const uint8_t *rec = t->layer_hops[l] + (size_t)LX_HOP_RECORD * index_below(v[l], t->layer_size[l]);
                memcpy(s->hops[l].public_key, rec, 32);
                memcpy(s->hops[l].address, rec + 32, 32);
                double d = t->mean_delay_ns > 0 ? -log1p(-v[t->n_layers + l]) * t->mean_delay_ns : 0.0;
                s->hops[l].delay_ns = d < MAX_NS ? (uint64_t)d : (uint64_t)MAX_NS; /* NaN too */
            }
            uint32_t p = provider[done] == LX_ANY_PROVIDER ? index_below(v[2 * t->n_layers], t->n_providers)
                                                          : provider[done];
            const uint8_t *rec = t->provider_hops + (size_t)LX_HOP_RECORD * p;
            lx_hop *last = &s->hops[t->n_layers];
            memcpy(last->public_key, rec, 32);
            memcpy(last->address, rec + 32, 32);
            last->delay_ns = 0;
        }
    }
    return LX_OK;
}

/* ---- a worker's whole batch ---- */

static void put_le64(uint8_t *p, uint64_t v) {
    for (int k = 0; k < 8; k++) p[k] = (uint8_t)(v >> (8 * k));
}
static void put_le32(uint8_t *p, uint32_t v) {
    for (int k = 0; k < 4; k++) p[k] = (uint8_t)(v >> (8 * k));
}
static void put_be64(uint8_t *p, uint64_t v) {
    for (int k = 0; k < 8; k++) p[k] = (uint8_t)(v >> (56 - 8 * k));
}
static void put_be32(uint8_t *p, uint32_t v) {
    for (int k = 0; k < 4; k++) p[k] = (uint8_t)(v >> (24 - 8 * k));
}

/* One route (one mixnode per layer, then provider p, or a random one for LX_ANY_PROVIDER) from the
 * uniforms in v (2 * n_layers + 1 of them); returns the sum of its mix delays. */
static uint64_t draw_route(const lx_route_table *t, const double *v, uint32_t p, lx_packet_spec *s) {
    uint64_t sum = 0;
    s->n_hops = t->n_layers + 1;
    for (uint32_t l = 0; l < t->n_layers; l++) {
        const uint8_t *rec = t->layer_hops[l] + (size_t)LX_HOP_RECORD * index_below(v[l], t->layer_size[l]);
        memcpy(s->hops[l].public_key, rec, 64); /* public key ‖ address */
        double d = t->mean_delay_ns > 0 ? -log1p(-v[t->n_layers + l]) * t->mean_delay_ns : 0.0;
        s->hops[l].delay_ns = d < MAX_NS ? (uint64_t)d : (uint64_t)MAX_NS; /* NaN too */
        sum += s->hops[l].delay_ns;
    }
    if (p == LX_ANY_PROVIDER) p = index_below(v[2 * t->n_layers], t->n_providers);
    lx_hop *last = &s->hops[t->n_layers];
    memcpy(last->public_key, t->provider_hops + (size_t)LX_HOP_RECORD * p, 64);
    last->delay_ns = 0;
    return sum;
}

/* Everything of a spec but its route; its ephemeral secret comes from the CSPRNG (the batch draws
 * them all at once) rather than one getrandom call per packet. */
static void set_message(lx_packet_spec *s, const uint8_t *destination, uint32_t len, uint64_t offset,
                        const uint8_t *secret) {
    s->message_len = len;
    s->message_offset = offset;
    memcpy(s->destination, destination, 32);
    memset(s->identifier, 0, sizeof s->identifier);
    memcpy(s->ephemeral_secret, secret, 32);
    s->use_ephemeral_secret = 1;
}

static int check_batch(const lx_batch *b, size_t count, const uint8_t *slots, uint64_t slot_size) {
    const lx_route_table *t = b->table;
    if (!t || count > b->capacity || (count && !slots)) return LX_ERR_PARAM;
    if (t->n_layers < 1 || t->n_layers + 1 > LX_MAX_HOPS || t->n_providers == 0 || !t->provider_hops)
        return LX_ERR_PARAM;
    for (uint32_t l = 0; l < t->n_layers; l++)
        if (t->layer_size[l] == 0 || !t->layer_hops[l]) return LX_ERR_PARAM;
    long size = lx_packet_size(b->payload_size);
    if (size < 0 || b->payload_size < LX_ACK_PREFIX + LX_LOOP_MIN) return LX_ERR_PARAM;
    if (slot_size < LX_SLOT_META + b->wire_header_len + 32 + (uint64_t)size) return LX_ERR_PARAM;
    for (size_t i = 0; i < count; i++) {
        uint8_t k = b->kind[i];
        if (k > LX_SLOT_PREBUILT || b->stream[i] > 2) return LX_ERR_PARAM;
        if ((k == LX_SLOT_REAL || k == LX_SLOT_LOOP) &&
            (b->local[i] >= b->n_identities || b->own_provider[b->local[i]] >= t->n_providers))
            return LX_ERR_PARAM;
        if (k == LX_SLOT_REAL &&
            (b->provider[i] >= t->n_providers || b->message_len[i] > b->payload_size - LX_ACK_PREFIX))
            return LX_ERR_PARAM;
    }
    return LX_OK;
}

/* The acks' payloads: AES-256(ack key, ref be64 ‖ random 4 ‖ zero 4) ‖ random 5 (client/acks.py). */
static int encode_acks(lx_batch *b, lx_rng *r, size_t n) {
    uint8_t rnd[9];
    int outl = 0;
    for (size_t k = 0; k < n; k++) {
        uint8_t *blk = b->blocks + 16 * k;
        lx_rng_bytes(r, rnd, sizeof rnd);
        put_be64(blk, b->ack_refs[k]);
        memcpy(blk + 8, rnd, 4);
        memset(blk + 12, 0, 4);
        memcpy(b->ack_messages + (size_t)LX_ACK_PAYLOAD * k + 16, rnd + 4, 5);
    }
    if (!n) return LX_OK;
    EVP_CIPHER_CTX *ctx = EVP_CIPHER_CTX_new();
    int ok = ctx && EVP_EncryptInit_ex(ctx, EVP_aes_256_ecb(), NULL, b->ack_key, NULL) == 1 &&
             EVP_CIPHER_CTX_set_padding(ctx, 0) == 1 &&
             EVP_EncryptUpdate(ctx, b->blocks, &outl, b->blocks, (int)(16 * n)) == 1 && outl == (int)(16 * n);
    EVP_CIPHER_CTX_free(ctx);
    if (!ok) return LX_ERR_CRYPTO;
    for (size_t k = 0; k < n; k++) memcpy(b->ack_messages + (size_t)LX_ACK_PAYLOAD * k, b->blocks + 16 * k, 16);
    return LX_OK;
}

/* A loop payload of len bytes at m (client/messages.py LoopCodec.encode). */
static void encode_loop(const lx_batch *b, lx_rng *r, uint8_t *m, size_t len, uint32_t identity, uint64_t seq,
                        uint64_t sent_ns) {
    uint8_t info[20];
    lx_rng_bytes(r, m, 40);                   /* message id (8), then the nonce (24) at 16 */
    put_be32(m + 8, 0);                       /* fragment 0 ... */
    put_be32(m + 12, 1);                      /* ... of 1 */
    put_be32(info, identity);
    put_be64(info + 4, seq);
    put_be64(info + 12, sent_ns);
    crypto_secretbox_easy(m + 40, info, sizeof info, m + 16, b->loop_key);
    lx_rng_bytes(r, m + LX_LOOP_MIN, len - LX_LOOP_MIN); /* padding */
}

/* The ephemeral secrets did their job once the packets are built: wipe them (they would unwrap). */
static void wipe_secrets(lx_batch *b, size_t count, size_t n_acks) {
    sodium_memzero(b->secrets, 32 * (count + n_acks));
    for (size_t i = 0; i < count; i++) sodium_memzero(b->specs[i].ephemeral_secret, 32);
    for (size_t k = 0; k < n_acks; k++) sodium_memzero(b->ack_specs[k].ephemeral_secret, 32);
}

long lx_worker_batch(lx_batch *b, lx_rng *r, size_t count, uint8_t *slots, uint64_t slot_size) {
    if (!b || !r) return LX_ERR_PARAM;
    int rc = check_batch(b, count, slots, slot_size);
    if (rc != LX_OK) return rc;
    const lx_route_table *t = b->table;
    const size_t per = 2 * (size_t)t->n_layers + 1, ps = b->payload_size;
    const size_t pkt = (size_t)lx_packet_size(ps), hl = b->wire_header_len, wire_len = hl + 32 + pkt;
    memset(b->built, 0, sizeof b->built);
    memset(b->failed, 0, sizeof b->failed);
    if (!count) return 0;
    /* every route's uniforms in one draw: a packet's, then its ack's */
    size_t n_acks = 0;
    for (size_t i = 0; i < count; i++) n_acks += b->kind[i] == LX_SLOT_REAL || b->kind[i] == LX_SLOT_LOOP;
    lx_rng_doubles(r, b->uniforms, per * (count + n_acks));
    lx_rng_bytes(r, b->secrets, 32 * (count + n_acks));
    const double *u = b->uniforms;
    const uint8_t *x = b->secrets;
    n_acks = 0;
    for (size_t i = 0; i < count; i++) {
        uint8_t k = b->kind[i];
        uint32_t p = k == LX_SLOT_REAL ? b->provider[i]
                   : k == LX_SLOT_LOOP ? b->own_provider[b->local[i]] : LX_ANY_PROVIDER;
        uint64_t delay = draw_route(t, u, p, &b->specs[i]);
        u += per;
        uint8_t *m = b->messages + ps * i;
        if (k == LX_SLOT_REAL || k == LX_SLOT_LOOP) {
            lx_packet_spec *a = &b->ack_specs[n_acks];
            delay += draw_route(t, u, b->own_provider[b->local[i]], a);
            u += per;
            set_message(a, b->identity_keys + 32 * (size_t)b->local[i], LX_ACK_PAYLOAD,
                        (uint64_t)LX_ACK_PAYLOAD * n_acks, x);
            x += 32;
            b->ack_refs[n_acks] = k == LX_SLOT_REAL ? b->seq[i] : 0; /* 0: cover (COVER_REF) */
            b->ack_of[n_acks++] = (uint32_t)i;
        }
        b->route_delay_ns[i] = delay;
        if (k == LX_SLOT_REAL) {
            set_message(&b->specs[i], b->destinations + 32 * i, LX_ACK_PREFIX + b->message_len[i], ps * i, x);
        } else if (k == LX_SLOT_LOOP) {
            encode_loop(b, r, m + LX_ACK_PREFIX, ps - LX_ACK_PREFIX, b->identity[i], b->seq[i], b->t[i]);
            set_message(&b->specs[i], b->identity_keys + 32 * (size_t)b->local[i], (uint32_t)ps, ps * i, x);
        } else {
            lx_rng_bytes(r, m, ps); /* fresh per packet */
            set_message(&b->specs[i], b->drop_destination, (uint32_t)ps, ps * i, x);
        }
        x += 32;
        b->status[i] = LX_OK;
    }
    /* the acks, then each behind its first hop at the front of its packet's message */
    if (n_acks) {
        if ((rc = encode_acks(b, r, n_acks)) != LX_OK) {
            wipe_secrets(b, count, n_acks);
            return rc;
        }
        long n = lx_build_batch(b->ack_specs, n_acks, b->ack_messages, (size_t)LX_ACK_PAYLOAD * n_acks,
                                LX_ACK_PAYLOAD, b->ack_out, (size_t)LX_ACK_PACKET * n_acks, LX_ACK_PACKET,
                                b->ack_status);
        if (n < 0) {
            wipe_secrets(b, count, n_acks);
            return n;
        }
    }
    for (size_t k = 0; k < n_acks; k++) {
        uint8_t *m = b->messages + ps * b->ack_of[k];
        memcpy(m, b->ack_specs[k].hops[0].address, 32);
        memcpy(m + 32, b->ack_out + (size_t)LX_ACK_PACKET * k, LX_ACK_PACKET);
    }
    /* the packets, straight into the ring after each slot's metadata, header and first hop */
    const size_t at = LX_SLOT_META + hl + 32;
    long n = lx_build_batch(b->specs, count, b->messages, ps * count, ps, slots + at,
                            (count - 1) * slot_size + pkt, slot_size, b->status);
    wipe_secrets(b, count, n_acks);
    if (n < 0) return n;
    for (size_t k = 0; k < n_acks; k++)
        if (b->ack_status[k] != LX_OK && b->status[b->ack_of[k]] == LX_OK) b->status[b->ack_of[k]] = b->ack_status[k];
    /* metadata and prefix of each built packet; a failed one leaves no gap */
    size_t w = 0;
    for (size_t i = 0; i < count; i++) {
        uint8_t st = b->stream[i];
        if (b->status[i] != LX_OK) {
            b->placed[i] = -1;
            b->failed[st]++;
            continue;
        }
        uint8_t *slot = slots + w * slot_size;
        if (w != i) memmove(slot + at, slots + i * slot_size + at, pkt);
        put_le64(slot, b->t[i]);
        put_le32(slot + 8, b->identity[i]);
        slot[12] = st;
        slot[13] = b->kind[i] == LX_SLOT_REAL || b->kind[i] == LX_SLOT_PREBUILT; /* flags: real */
        memset(slot + 14, 0, 2);
        put_le32(slot + 16, (uint32_t)wire_len);
        memset(slot + 20, 0, 4);
        put_le64(slot + 24, b->seq[i]);
        memcpy(slot + LX_SLOT_META, b->wire_header, hl);
        memcpy(slot + LX_SLOT_META + hl, b->specs[i].hops[0].address, 32);
        b->placed[i] = (int64_t)w++;
        b->built[st]++;
    }
    return (long)w;
}
