/* loopix node engine; see node.h. Memory is the node's own and grows only to bounds set at creation
 * or by the caller's batch: the backlog to BACKLOG_MAX_*, the held packets to max_queue, the replay
 * set to 2 x replay_capacity tags. Hash tables are keyed with a secret (SipHash), so a sender choosing
 * replay tags or next-hop addresses cannot make them slow. */
#include "node.h"

#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <sodium.h>

#include "csprng.h"
#include "sphinx.h"

#define PACKET_OVERHEAD (LX_HEADER_SIZE + LX_PAYLOAD_OVERHEAD)
#define BACKLOG_MAX_PACKETS 16384u
#define BACKLOG_MAX_BYTES ((size_t)64 << 20)
#define FRAME_HEADER 3
#define DRAWS 256

/* Packet length by frame size tag (1..5), 0 for the others; Outfox tags 6 and 7 are refused. */
static const uint32_t SIZE_OF_TAG[8] = {
    0, PACKET_OVERHEAD + 2048, PACKET_OVERHEAD + 21, PACKET_OVERHEAD + 32768,
    PACKET_OVERHEAD + 8192, PACKET_OVERHEAD + 16384, 0, 0,
};

static uint8_t tag_of_size(uint32_t len) {
    for (uint8_t t = 1; t <= 5; t++)
        if (SIZE_OF_TAG[t] == len) return t;
    return 0;
}

typedef struct {
    uint64_t offset;
    uint32_t len;
    int64_t arrival;
} in_rec;

typedef struct {
    uint8_t *log;     /* tags in the order they were accepted */
    uint32_t *table;  /* open addressing: 0 empty, else index + 1 into log */
    uint32_t count;
} replay_gen;

typedef struct {
    int64_t due;
    uint64_t seq;
    int64_t target; /* arrival + (capped) delay: what lateness is measured from */
    uint32_t len;
    uint8_t address[32];
    uint8_t *data;
} held_pkt;

typedef struct {
    const uint8_t *address;
    const uint8_t *data;
    uint32_t len;
    uint32_t group;
} fwd_item;

struct lx_node {
    uint8_t secret[32];
    uint8_t hash_key[crypto_shorthash_KEYBYTES];
    uint32_t batch, replay_capacity, max_queue;
    uint64_t max_delay_ns;
    double drop_rate;
    lx_rng rng;
    double draws[DRAWS];
    uint32_t draws_left;

    uint8_t *in_data;
    size_t in_cap, in_len;
    in_rec *recs;
    size_t recs_cap, recs_len, recs_head;

    replay_gen gens[2];
    int cur;
    uint32_t replay_mask;

    held_pkt *heap;
    size_t heap_len, heap_cap;
    uint64_t seq;
    held_pkt *popped;
    size_t popped_cap;

    uint64_t unwrap_ns;

    uint8_t *scratch;
    size_t scratch_cap;
    lx_processed *results;

    fwd_item *items;
    size_t items_cap, n_items;
    lx_node_group *groups;
    uint64_t *cursor;
    size_t groups_cap, n_groups;
    uint32_t *gtable;
    size_t gtable_cap;
    uint8_t *frames;
    size_t frames_cap;
    lx_node_final *finals;
    size_t finals_cap, n_finals;
    uint8_t *messages;
    size_t messages_cap, messages_len;
    lx_node_late *late;
    size_t late_cap, n_late;
};

/* Makes room for need elements of size elem in *p (capacity *cap), doubling. 0 or -1. */
static int reserve(void **p, size_t *cap, size_t need, size_t elem) {
    if (need <= *cap) return 0;
    size_t c = *cap ? *cap : 16;
    while (c < need) {
        if (c > SIZE_MAX / 2 / elem) return -1;
        c *= 2;
    }
    void *q = realloc(*p, c * elem);
    if (!q) return -1;
    *p = q;
    *cap = c;
    return 0;
}
#define RESERVE(n, field, cap, need) reserve((void **)&(n)->field, &(n)->cap, (need), sizeof *(n)->field)

static uint64_t keyed_hash(const lx_node *n, const uint8_t *data, size_t len) {
    uint8_t h[crypto_shorthash_BYTES];
    crypto_shorthash(h, data, len, n->hash_key);
    uint64_t v;
    memcpy(&v, h, sizeof v);
    return v;
}

lx_node *lx_node_new(const uint8_t *secret, uint32_t batch, uint32_t replay_capacity, uint32_t max_queue,
                     uint64_t max_delay_ns, double drop_rate, const uint8_t *seed) {
    if (!secret || batch == 0 || batch > 65536 || replay_capacity == 0 || replay_capacity > (1u << 28) ||
        !(drop_rate >= 0.0 && drop_rate <= 1.0))
        return NULL;
    if (lx_init() != LX_OK) return NULL;
    lx_node *n = calloc(1, sizeof *n);
    if (!n) return NULL;
    memcpy(n->secret, secret, 32);
    n->batch = batch;
    n->replay_capacity = replay_capacity;
    n->max_queue = max_queue;
    n->max_delay_ns = max_delay_ns;
    n->drop_rate = drop_rate;
    lx_rng_seed(&n->rng, seed);
    lx_rng_bytes(&n->rng, n->hash_key, sizeof n->hash_key);
    uint32_t slots = 16;
    while (slots < 2 * replay_capacity) slots *= 2;
    n->replay_mask = slots - 1;
    for (int g = 0; g < 2; g++) {
        n->gens[g].log = malloc((size_t)replay_capacity * 32);
        n->gens[g].table = calloc(slots, sizeof(uint32_t));
    }
    n->results = calloc(batch, sizeof *n->results);
    if (!n->gens[0].log || !n->gens[0].table || !n->gens[1].log || !n->gens[1].table || !n->results) {
        lx_node_free(n);
        return NULL;
    }
    return n;
}

void lx_node_free(lx_node *n) {
    if (!n) return;
    for (size_t i = 0; i < n->heap_len; i++) free(n->heap[i].data);
    for (int g = 0; g < 2; g++) {
        free(n->gens[g].log);
        free(n->gens[g].table);
    }
    free(n->in_data);
    free(n->recs);
    free(n->heap);
    free(n->popped);
    free(n->scratch);
    free(n->results);
    free(n->items);
    free(n->groups);
    free(n->cursor);
    free(n->gtable);
    free(n->frames);
    free(n->finals);
    free(n->messages);
    free(n->late);
    sodium_memzero(n, sizeof *n);
    free(n);
}

/* --- replay set ------------------------------------------------------------------------------ */

static int gen_has(const lx_node *n, const replay_gen *g, const uint8_t *tag, uint64_t h) {
    for (uint32_t i = (uint32_t)h & n->replay_mask;; i = (i + 1) & n->replay_mask) {
        uint32_t e = g->table[i];
        if (!e) return 0;
        if (memcmp(g->log + (size_t)(e - 1) * 32, tag, 32) == 0) return 1;
    }
}

int lx_node_replay_seen(lx_node *n, const uint8_t *tag) {
    uint64_t h = keyed_hash(n, tag, 32);
    replay_gen *cur = &n->gens[n->cur], *prev = &n->gens[!n->cur];
    if (gen_has(n, cur, tag, h) || gen_has(n, prev, tag, h)) return 1;
    uint32_t i = (uint32_t)h & n->replay_mask;
    while (cur->table[i]) i = (i + 1) & n->replay_mask;
    memcpy(cur->log + (size_t)cur->count * 32, tag, 32);
    cur->table[i] = ++cur->count;
    if (cur->count >= n->replay_capacity) { /* the older generation is forgotten */
        n->cur = !n->cur;
        replay_gen *fresh = &n->gens[n->cur];
        fresh->count = 0;
        memset(fresh->table, 0, ((size_t)n->replay_mask + 1) * sizeof(uint32_t));
    }
    return 0;
}

uint64_t lx_node_replay_count(const lx_node *n) { return (uint64_t)n->gens[0].count + n->gens[1].count; }

uint64_t lx_node_replay_dump(const lx_node *n, uint8_t *out, size_t out_len) {
    const replay_gen *prev = &n->gens[!n->cur], *cur = &n->gens[n->cur];
    size_t a = (size_t)prev->count * 32, b = (size_t)cur->count * 32;
    if (out && out_len >= a + b) {
        memcpy(out, prev->log, a);
        memcpy(out + a, cur->log, b);
    }
    return a + b;
}

/* --- backlog --------------------------------------------------------------------------------- */

uint64_t lx_node_backlog(const lx_node *n) { return n->recs_len - n->recs_head; }

uint64_t lx_node_unwrap_ns(const lx_node *n) { return n->unwrap_ns; }

static uint64_t thread_cpu_ns(void) {
    struct timespec ts;
    if (clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts) != 0) return 0;
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

/* Forgets the processed part of the backlog: at once when nothing is left, else by moving the rest
 * to the front once it is at most half of what is kept or `more` bytes would not fit behind it. So
 * the backlog reuses the same (cache-warm) front of its buffer instead of cycling through all of it. */
static void compact(lx_node *n, size_t more) {
    if (n->recs_head == 0) return;
    if (n->recs_head == n->recs_len) {
        n->recs_head = n->recs_len = n->in_len = 0;
        return;
    }
    if (n->recs_head < n->recs_len / 2 && n->in_len + more <= n->in_cap && n->recs_len < n->recs_cap) return;
    uint64_t base = n->recs[n->recs_head].offset;
    memmove(n->in_data, n->in_data + base, n->in_len - base);
    n->in_len -= base;
    size_t left = n->recs_len - n->recs_head;
    memmove(n->recs, n->recs + n->recs_head, left * sizeof *n->recs);
    for (size_t i = 0; i < left; i++) n->recs[i].offset -= base;
    n->recs_head = 0;
    n->recs_len = left;
}

/* 1 taken, 0 dropped (the backlog is at its bound or memory ran out). */
static int backlog_add(lx_node *n, const uint8_t *packet, uint32_t len, int64_t arrival) {
    if (lx_node_backlog(n) >= BACKLOG_MAX_PACKETS || n->in_len - (n->recs_head < n->recs_len
            ? n->recs[n->recs_head].offset : n->in_len) + len > BACKLOG_MAX_BYTES)
        return 0;
    if (RESERVE(n, in_data, in_cap, n->in_len + len) || RESERVE(n, recs, recs_cap, n->recs_len + 1)) return 0;
    memcpy(n->in_data + n->in_len, packet, len);
    n->recs[n->recs_len++] = (in_rec){n->in_len, len, arrival};
    n->in_len += len;
    return 1;
}

int lx_node_ingest(lx_node *n, const uint8_t *data, size_t len, int64_t arrival_ns, lx_node_ingest_result *r) {
    if (!n || !r || (len && !data)) return LX_ERR_PARAM;
    memset(r, 0, sizeof *r);
    compact(n, len);
    size_t pos = 0;
    while (pos < len) {
        size_t avail = len - pos;
        uint8_t version = data[pos];
        size_t hlen;
        if (version == 7) hlen = 3;
        else if (version == 8) hlen = 4;
        else {
            r->error = version < 7 ? LX_FRAME_OLD_VERSION : LX_FRAME_NEW_VERSION;
            r->error_value = version;
            r->error_at = pos;
            break;
        }
        if (avail < 2) {
            r->need = hlen - avail;
            break;
        }
        uint8_t tag = data[pos + 1];
        uint32_t size = tag < 8 ? SIZE_OF_TAG[tag] : 0;
        if (!size) {
            r->error = tag == 6 || tag == 7 ? LX_FRAME_OUTFOX_SIZE : LX_FRAME_BAD_SIZE;
            r->error_value = tag;
            r->error_at = pos + 1;
            break;
        }
        if (avail > 2 && data[pos + 2] != 0) {
            r->error = data[pos + 2] == 2 ? LX_FRAME_OUTFOX_TYPE : LX_FRAME_BAD_TYPE;
            r->error_value = data[pos + 2];
            r->error_at = pos + 2;
            break;
        }
        if (hlen == 4 && avail > 3 && data[pos + 3] > 2) {
            r->error = LX_FRAME_BAD_ROTATION;
            r->error_value = data[pos + 3];
            r->error_at = pos + 3;
            break;
        }
        if (avail < hlen + size) {
            r->need = avail < hlen ? hlen - avail : hlen + size - avail;
            break;
        }
        if (!backlog_add(n, data + pos + hlen, size, arrival_ns)) r->backlog_full++;
        r->frames++;
        pos += hlen + size;
    }
    r->consumed = pos;
    return 0;
}

long lx_node_push(lx_node *n, const uint8_t *packets, size_t count, size_t packet_len, int64_t arrival_ns) {
    if (!n || (count && !packets)) return LX_ERR_PARAM;
    if (packet_len > UINT32_MAX || !tag_of_size((uint32_t)packet_len)) return LX_ERR_SIZE;
    if (count > SIZE_MAX / packet_len) return LX_ERR_PARAM;
    compact(n, count * packet_len);
    long taken = 0;
    for (size_t i = 0; i < count; i++) taken += backlog_add(n, packets + i * packet_len, (uint32_t)packet_len, arrival_ns);
    return taken;
}

uint8_t *lx_node_take_frames(lx_node *n) {
    uint8_t *frames = n->frames;
    n->frames = NULL;
    n->frames_cap = 0;
    return frames;
}

void lx_node_free_frames(uint8_t *frames) { free(frames); }

/* --- the delay heap -------------------------------------------------------------------------- */

uint64_t lx_node_held(const lx_node *n) { return n->heap_len; }

int lx_node_next_due(const lx_node *n, int64_t *due_ns) {
    if (!n->heap_len) return 0;
    *due_ns = n->heap[0].due;
    return 1;
}

static int before(const held_pkt *a, const held_pkt *b) {
    return a->due < b->due || (a->due == b->due && a->seq < b->seq);
}

static void heap_push(lx_node *n, held_pkt p) {
    size_t i = n->heap_len++;
    while (i > 0) {
        size_t parent = (i - 1) / 2;
        if (!before(&p, &n->heap[parent])) break;
        n->heap[i] = n->heap[parent];
        i = parent;
    }
    n->heap[i] = p;
}

static held_pkt heap_pop(lx_node *n) {
    held_pkt top = n->heap[0], last = n->heap[--n->heap_len];
    size_t i = 0, len = n->heap_len;
    for (;;) {
        size_t c = 2 * i + 1;
        if (c >= len) break;
        if (c + 1 < len && before(&n->heap[c + 1], &n->heap[c])) c++;
        if (!before(&n->heap[c], &last)) break;
        n->heap[i] = n->heap[c];
        i = c;
    }
    if (len) n->heap[i] = last;
    return top;
}

/* --- output ---------------------------------------------------------------------------------- */

static void begin_output(lx_node *n, lx_node_output *out) {
    memset(out, 0, sizeof *out);
    n->n_items = n->n_groups = n->n_finals = n->messages_len = n->n_late = 0;
}

static int note_late(lx_node *n, int64_t now, int64_t target) {
    uint64_t us = now > target ? (uint64_t)(now - target) / 1000 : 0;
    if (n->n_late && n->late[n->n_late - 1].value_us == us) {
        n->late[n->n_late - 1].count++;
        return 0;
    }
    if (RESERVE(n, late, late_cap, n->n_late + 1)) return -1;
    n->late[n->n_late++] = (lx_node_late){us, 1};
    return 0;
}

static int add_item(lx_node *n, const uint8_t *address, const uint8_t *data, uint32_t len) {
    if (RESERVE(n, items, items_cap, n->n_items + 1)) return -1;
    n->items[n->n_items++] = (fwd_item){address, data, len, 0};
    return 0;
}

/* The items as frames, grouped by (next hop, length) in first-seen order, each group in item order. */
static int emit(lx_node *n, lx_node_output *out) {
    size_t count = n->n_items;
    size_t slots = 16;
    while (slots < 2 * count) slots *= 2;
    if (RESERVE(n, gtable, gtable_cap, slots) || RESERVE(n, groups, groups_cap, count ? count : 1))
        return -1;
    uint64_t *cursor = realloc(n->cursor, n->groups_cap * sizeof *cursor);
    if (!cursor) return -1;
    n->cursor = cursor;
    memset(n->gtable, 0xff, slots * sizeof *n->gtable);
    size_t ngroups = 0;
    for (size_t i = 0; i < count; i++) {
        fwd_item *it = &n->items[i];
        uint8_t key[36];
        memcpy(key, it->address, 32);
        memcpy(key + 32, &it->len, 4);
        size_t s = keyed_hash(n, key, sizeof key) & (slots - 1);
        for (;; s = (s + 1) & (slots - 1)) {
            uint32_t g = n->gtable[s];
            if (g == UINT32_MAX) {
                g = (uint32_t)ngroups++;
                n->gtable[s] = g;
                memcpy(n->groups[g].address, it->address, 32);
                n->groups[g].packet_len = it->len;
                n->groups[g].count = 0;
            }
            if (n->groups[g].packet_len == it->len && memcmp(n->groups[g].address, it->address, 32) == 0) {
                it->group = g;
                n->groups[g].count++;
                break;
            }
        }
    }
    uint64_t total = 0;
    for (size_t g = 0; g < ngroups; g++) {
        n->groups[g].offset = total;
        cursor[g] = total;
        total += (uint64_t)n->groups[g].count * (FRAME_HEADER + n->groups[g].packet_len);
    }
    if (RESERVE(n, frames, frames_cap, total ? total : 1)) return -1;
    for (size_t i = 0; i < count; i++) {
        fwd_item *it = &n->items[i];
        uint8_t *dst = n->frames + cursor[it->group];
        dst[0] = 7;
        dst[1] = tag_of_size(it->len);
        dst[2] = 0;
        memcpy(dst + FRAME_HEADER, it->data, it->len);
        cursor[it->group] += FRAME_HEADER + it->len;
    }
    n->n_groups = ngroups;
    out->forwarded = count;
    out->n_groups = ngroups;
    out->groups = n->groups;
    out->frames = n->frames;
    out->frames_len = total;
    out->n_finals = n->n_finals;
    out->finals = n->finals;
    out->messages = n->messages;
    out->n_late = n->n_late;
    out->late = n->late;
    return 0;
}

/* --- step and release ------------------------------------------------------------------------ */

static double draw(lx_node *n) {
    if (!n->draws_left) {
        lx_rng_doubles(&n->rng, n->draws, DRAWS);
        n->draws_left = DRAWS;
    }
    return n->draws[--n->draws_left];
}

/* What happens to one unwrapped packet: the same rules, in the same order, as HopPolicy.decide. */
static int decide(lx_node *n, const lx_processed *res, const uint8_t *packet, uint32_t len, int64_t arrival,
                  int64_t now, lx_node_output *out) {
    if (res->status != LX_OK) {
        int32_t code = -res->status;
        out->drops[LX_NODE_DROP_SPHINX + (code >= 1 && code <= 7 ? code : 0)]++;
        return 0;
    }
    if (lx_node_replay_seen(n, res->replay_tag)) {
        out->drops[LX_NODE_DROP_REPLAY]++;
        return 0;
    }
    if (res->kind == LX_FINAL) {
        if (res->message_offset > len || res->message_len > len - res->message_offset) {
            out->drops[LX_NODE_DROP_SPHINX]++;
            return 0;
        }
        if (RESERVE(n, finals, finals_cap, n->n_finals + 1) ||
            RESERVE(n, messages, messages_cap, n->messages_len + res->message_len + 1))
            return -1;
        lx_node_final *f = &n->finals[n->n_finals++];
        memcpy(f->destination, res->destination, 32);
        f->message_offset = n->messages_len;
        f->message_len = res->message_len;
        memcpy(n->messages + n->messages_len, packet + res->message_offset, res->message_len);
        n->messages_len += res->message_len;
        return 0;
    }
    if (n->drop_rate > 0.0 && draw(n) < n->drop_rate) {
        out->drops[LX_NODE_DROP_INJECTED]++;
        return 0;
    }
    uint64_t delay = res->delay_ns;
    if (delay == 0) {
        if (add_item(n, res->next_address, packet, len)) return -1;
        return note_late(n, now, arrival);
    }
    if (n->heap_len >= n->max_queue) {
        out->drops[LX_NODE_DROP_QUEUE_FULL]++;
        return 0;
    }
    if (delay > n->max_delay_ns) {
        delay = n->max_delay_ns;
        out->capped++;
    }
    if (RESERVE(n, heap, heap_cap, n->heap_len + 1)) return -1;
    held_pkt p = {now + (int64_t)delay, n->seq++, arrival + (int64_t)delay, len, {0}, malloc(len)};
    if (!p.data) return -1;
    memcpy(p.address, res->next_address, 32);
    memcpy(p.data, packet, len);
    heap_push(n, p);
    return 0;
}

int lx_node_step(lx_node *n, int64_t now_ns, uint32_t max_packets, lx_node_output *out) {
    if (!n || !out) return LX_ERR_PARAM;
    begin_output(n, out);
    size_t take = lx_node_backlog(n);
    if (take > max_packets) take = max_packets;
    if (take > n->batch) take = n->batch;
    if (!take) return emit(n, out) ? LX_ERR_CRYPTO : 0;
    const in_rec *recs = n->recs + n->recs_head;
    uint64_t base = recs[0].offset;
    uint64_t bytes = recs[take - 1].offset + recs[take - 1].len - base;
    n->recs_head += take;
    out->processed = take;
    if (RESERVE(n, scratch, scratch_cap, bytes)) return LX_ERR_CRYPTO;
    for (size_t i = 0; i < take;) {
        uint32_t len = recs[i].len;
        size_t run = 1;
        while (i + run < take && recs[i + run].len == len) run++;
        uint8_t *dst = n->scratch + (recs[i].offset - base);
        uint64_t t0 = thread_cpu_ns();
        long rc = lx_process_batch(n->secret, n->in_data + recs[i].offset, run, len, dst, (size_t)run * len,
                                   n->results + i);
        uint64_t t1 = thread_cpu_ns();
        if (t1 > t0) n->unwrap_ns += t1 - t0;
        if (rc < 0) /* cannot happen for lengths ingest accepted; never read stale results */
            for (size_t k = 0; k < run; k++) n->results[i + k].status = (int32_t)rc;
        for (size_t k = 0; k < run; k++)
            if (decide(n, &n->results[i + k], dst + k * len, len, recs[i + k].arrival, now_ns, out))
                return LX_ERR_CRYPTO;
        i += run;
    }
    return emit(n, out) ? LX_ERR_CRYPTO : 0;
}

int lx_node_release(lx_node *n, int64_t now_ns, int64_t horizon_ns, lx_node_output *out) {
    if (!n || !out) return LX_ERR_PARAM;
    begin_output(n, out);
    size_t k = 0;
    while (n->heap_len && n->heap[0].due <= now_ns + horizon_ns) {
        if (reserve((void **)&n->popped, &n->popped_cap, k + 1, sizeof *n->popped)) break;
        n->popped[k++] = heap_pop(n);
    }
    int rc = 0;
    for (size_t i = 0; i < k && !rc; i++) {
        held_pkt *p = &n->popped[i];
        rc = add_item(n, p->address, p->data, p->len) || note_late(n, now_ns, p->target);
    }
    if (!rc) rc = emit(n, out);
    for (size_t i = 0; i < k; i++) free(n->popped[i].data);
    out->processed = k;
    return rc ? LX_ERR_CRYPTO : 0;
}
