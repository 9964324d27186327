/* loopix sender pacing loop; see pacer.h and client/pacer.py. */
#define _GNU_SOURCE
#include "pacer.h"

#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>
#ifdef __linux__
#include <sys/prctl.h>
#endif

#include "csprng.h"
#include "ringscan.h"
#include "sphinx.h"

#define ROUND_MAX 64                /* packets per round: one sendmsg per link carries at most these */
#define IDLE_NS 5000000ull          /* the longest sleep (stop requests are seen within it) */
#define POLL_NS 1000000ull          /* a ring is empty: look again this soon (the workers run ahead) */
#define BACKLOG_NS 200000ull        /* a link has buffered bytes: try them again this soon */
#define NS 1000000000ull
#define U_BATCH 256

typedef struct {
    int fd;
    uint8_t *buf; /* bytes accepted for this connection, not yet written: [off, len) */
    uint64_t off, len, cap;
    uint32_t n_iov;
    uint64_t iov_bytes;
    struct iovec iov[ROUND_MAX];
} lx_link;

typedef struct {
    uint8_t *base;
    uint64_t slots;
    uint32_t slot_size;
    uint64_t read;
} lx_ring_ref;

typedef struct {
    uint64_t t, seq;
    uint32_t identity;
    uint8_t stream, flags;
} lx_taken;

struct lx_pacer {
    pthread_mutex_t mu;
    int stop;
    uint32_t n_rings;
    lx_ring_ref rings[LX_PACE_MAX_RINGS];
    uint64_t min_gap_ns; /* wake-ups at least this far apart: packets due within it share a write */
    uint64_t coalesce_ns; /* the next due packet waits for others due this soon after it */
    uint32_t n_links;
    lx_link *links;
    uint64_t link_buffer;
    uint32_t n_ids, id_first, id_step; /* the ring's identity i is our identity (i - first) / step */
    const uint8_t *ready;
    const uint32_t *link_of;
    uint64_t *id_sent[3];
    uint64_t *id_real;
    lx_pace_totals tot;
    lx_pace_second sec[LX_PACE_SECONDS];
    uint8_t sec_used[LX_PACE_SECONDS];
    int64_t *samples;
    uint32_t n_samples, max_samples;
    uint64_t seen;
    double u[U_BATCH];
    uint32_t u_left;
    lx_rng rng;
    uint64_t *ref_seq, *ref_ns;
    uint32_t n_refs, refs_cap;
    uint8_t *trace;
    uint32_t n_trace, trace_cap;
    uint8_t *held;
    uint32_t n_held, held_cap, held_slot;
    lx_taken taken[ROUND_MAX];
};

static uint64_t mono_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * NS + (uint64_t)ts.tv_nsec;
}

static uint64_t get64(const uint8_t *p) {
    uint64_t v;
    memcpy(&v, p, 8); /* little-endian host, as the ring (see ring.py) */
    return v;
}

static uint32_t get32(const uint8_t *p) {
    uint32_t v;
    memcpy(&v, p, 4);
    return v;
}

lx_pacer *lx_pacer_new(uint32_t max_samples, uint32_t refs_cap, uint32_t trace_cap, uint32_t held_cap,
                       uint32_t held_slot, uint64_t link_buffer, const uint8_t *seed) {
    if (held_slot < LX_SLOT_META || link_buffer == 0) return NULL;
    lx_pacer *p = calloc(1, sizeof *p);
    if (!p) return NULL;
    pthread_mutex_init(&p->mu, NULL);
    p->id_step = 1;
    p->max_samples = max_samples;
    p->refs_cap = refs_cap;
    p->trace_cap = trace_cap;
    p->held_cap = held_cap;
    p->held_slot = held_slot;
    p->link_buffer = link_buffer;
    p->samples = calloc(max_samples ? max_samples : 1, sizeof *p->samples);
    p->ref_seq = calloc(refs_cap ? refs_cap : 1, 8);
    p->ref_ns = calloc(refs_cap ? refs_cap : 1, 8);
    p->trace = trace_cap ? malloc((size_t)trace_cap * LX_PACE_TRACE_RECORD) : NULL;
    p->held = held_cap ? malloc((size_t)held_cap * held_slot) : NULL;
    if (!p->samples || !p->ref_seq || !p->ref_ns || (trace_cap && !p->trace) || (held_cap && !p->held) ||
        lx_rng_seed(&p->rng, seed) != 0) {
        lx_pacer_free(p);
        return NULL;
    }
    return p;
}

void lx_pacer_free(lx_pacer *p) {
    if (!p) return;
    for (uint32_t i = 0; i < p->n_links; i++) {
        if (p->links[i].fd >= 0) close(p->links[i].fd);
        free(p->links[i].buf);
    }
    free(p->links);
    free(p->samples);
    free(p->ref_seq);
    free(p->ref_ns);
    free(p->trace);
    free(p->held);
    pthread_mutex_destroy(&p->mu);
    free(p);
}

int lx_pacer_add_ring(lx_pacer *p, uint8_t *ring, uint64_t slots, uint32_t slot_size) {
    if (!p || !ring || slots == 0 || slot_size < LX_SLOT_META || slot_size > p->held_slot ||
        p->n_rings >= LX_PACE_MAX_RINGS)
        return LX_ERR_PARAM;
    lx_ring_ref *r = &p->rings[p->n_rings++];
    r->base = ring;
    r->slots = slots;
    r->slot_size = slot_size;
    r->read = __atomic_load_n((uint64_t *)(ring + 64), __ATOMIC_ACQUIRE);
    return LX_OK;
}

void lx_pacer_set_id_map(lx_pacer *p, uint32_t first, uint32_t step) {
    pthread_mutex_lock(&p->mu);
    p->id_first = first;
    p->id_step = step ? step : 1;
    pthread_mutex_unlock(&p->mu);
}

/* Our index of the ring's identity, or UINT32_MAX when it is not one of ours. */
static uint32_t local_id(const lx_pacer *p, uint32_t identity) {
    if (identity < p->id_first || (identity - p->id_first) % p->id_step) return UINT32_MAX;
    uint32_t i = (identity - p->id_first) / p->id_step;
    return i < p->n_ids ? i : UINT32_MAX;
}

void lx_pacer_lock(lx_pacer *p) { pthread_mutex_lock(&p->mu); }
void lx_pacer_unlock(lx_pacer *p) { pthread_mutex_unlock(&p->mu); }

void lx_pacer_set_identities(lx_pacer *p, uint32_t n, const uint8_t *ready, const uint32_t *link_of,
                             uint64_t *sent0, uint64_t *sent1, uint64_t *sent2, uint64_t *real_sent) {
    p->n_ids = n;
    p->ready = ready;
    p->link_of = link_of;
    p->id_sent[0] = sent0;
    p->id_sent[1] = sent1;
    p->id_sent[2] = sent2;
    p->id_real = real_sent;
}

/* Links exist up to index `link` (new ones have no connection). Lock held. */
static int ensure_link(lx_pacer *p, uint32_t link) {
    if (link < p->n_links) return 0;
    if (link > 1u << 20) return -1;
    lx_link *grown = realloc(p->links, (size_t)(link + 1) * sizeof *grown);
    if (!grown) return -1;
    for (uint32_t i = p->n_links; i <= link; i++) {
        memset(&grown[i], 0, sizeof grown[i]);
        grown[i].fd = -1;
    }
    p->links = grown;
    p->n_links = link + 1;
    return 0;
}

static uint64_t backlog(const lx_link *l) { return l->len - l->off; }

/* Room for n more buffered bytes (the caller checked the bound). */
static int reserve(lx_pacer *p, lx_link *l, uint64_t n) {
    if (l->off && l->len + n > l->cap) {
        memmove(l->buf, l->buf + l->off, l->len - l->off);
        l->len -= l->off;
        l->off = 0;
    }
    if (l->len + n <= l->cap) return 0;
    uint64_t cap = l->cap ? l->cap : 65536;
    while (cap < l->len + n) cap *= 2;
    if (cap > p->link_buffer) cap = p->link_buffer;
    if (cap < l->len + n) return -1;
    uint8_t *b = realloc(l->buf, cap);
    if (!b) return -1;
    l->buf = b;
    l->cap = cap;
    return 0;
}

static void drop_backlog(lx_pacer *p, lx_link *l) {
    p->tot.dropped_bytes += backlog(l);
    l->off = l->len = 0;
}

/* Writes what is buffered for l, as far as the socket takes it. */
static void flush(lx_pacer *p, lx_link *l) {
    while (l->fd >= 0 && backlog(l)) {
        ssize_t n = send(l->fd, l->buf + l->off, backlog(l), MSG_DONTWAIT | MSG_NOSIGNAL);
        p->tot.writes++;
        if (n > 0) {
            l->off += (uint64_t)n;
        } else if (n < 0 && errno == EINTR) {
            continue;
        } else if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
            break;
        } else { /* broken: Python's reader sees the loss and replaces the connection */
            p->tot.write_errors++;
            drop_backlog(p, l);
        }
    }
    if (l->off == l->len) l->off = l->len = 0;
}

/* Writes the round's packets of l: one sendmsg when nothing waits before them, the rest buffered. */
static void write_round(lx_pacer *p, lx_link *l) {
    uint32_t first = 0;
    uint64_t skip = 0;
    if (!backlog(l)) {
        struct msghdr m;
        memset(&m, 0, sizeof m);
        m.msg_iov = l->iov;
        m.msg_iovlen = l->n_iov;
        ssize_t n;
        do {
            n = sendmsg(l->fd, &m, MSG_DONTWAIT | MSG_NOSIGNAL);
        } while (n < 0 && errno == EINTR);
        p->tot.writes++;
        if (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK) {
            p->tot.write_errors++;
            p->tot.dropped_bytes += l->iov_bytes;
            l->n_iov = 0;
            l->iov_bytes = 0;
            return;
        }
        uint64_t done = n > 0 ? (uint64_t)n : 0;
        while (first < l->n_iov && done >= l->iov[first].iov_len) done -= l->iov[first++].iov_len;
        skip = done;
    }
    if (first < l->n_iov) {
        if (reserve(p, l, l->iov_bytes)) { /* cannot happen: the scan kept within link_buffer */
            p->tot.dropped_bytes += l->iov_bytes;
        } else {
            for (uint32_t i = first; i < l->n_iov; i++) {
                uint64_t len = l->iov[i].iov_len - skip;
                memcpy(l->buf + l->len, (uint8_t *)l->iov[i].iov_base + skip, len);
                l->len += len;
                skip = 0;
            }
            flush(p, l);
        }
    }
    l->n_iov = 0;
    l->iov_bytes = 0;
}

static double uniform(lx_pacer *p) {
    if (!p->u_left) {
        lx_rng_doubles(&p->rng, p->u, U_BATCH);
        p->u_left = U_BATCH;
    }
    return p->u[--p->u_left];
}

/* The accounting of one sent packet (its second's bucket was reserved by the caller). Lock held. */
static void account(lx_pacer *p, const lx_taken *k, uint64_t actual) {
    uint8_t s = k->stream, real = k->flags & 1;
    uint32_t i = local_id(p, k->identity);
    p->tot.sent[s]++;
    if (i != UINT32_MAX && p->id_sent[s]) p->id_sent[s][i]++;
    lx_pace_second *b = &p->sec[(k->t / NS) % LX_PACE_SECONDS];
    b->n[s]++;
    if (real) {
        p->tot.real_sent++;
        b->n[3]++;
        if (i != UINT32_MAX && p->id_real) p->id_real[i]++;
        if (p->n_refs < p->refs_cap) {
            p->ref_seq[p->n_refs] = k->seq;
            p->ref_ns[p->n_refs++] = actual;
        }
    }
    int64_t late = (int64_t)(actual - k->t);
    p->seen++;
    if (p->n_samples < p->max_samples) {
        p->samples[p->n_samples++] = late;
    } else if (p->max_samples) { /* reservoir sampling: an unbiased sample of the interval */
        uint64_t j = (uint64_t)(uniform(p) * (double)p->seen);
        if (j < p->max_samples) p->samples[j] = late;
    }
    if (p->trace && p->n_trace < p->trace_cap) {
        uint8_t *r = p->trace + (size_t)p->n_trace++ * LX_PACE_TRACE_RECORD;
        memcpy(r, &k->t, 8);
        memcpy(r + 8, &actual, 8);
        memcpy(r + 16, &k->identity, 4);
        r[20] = s;
        r[21] = real;
        r[22] = r[23] = 0;
    }
}

/* The second bucket of t is free or t's: reserve it. 0 if another second holds it (not collected). */
static int reserve_second(lx_pacer *p, uint64_t t) {
    uint64_t s = t / NS;
    uint32_t i = (uint32_t)(s % LX_PACE_SECONDS);
    if (p->sec_used[i]) return p->sec[i].sec == s;
    p->sec_used[i] = 1;
    p->sec[i].sec = s;
    return 1;
}

typedef struct {
    uint64_t next_ns; /* earliest slot not yet due, 0 if none */
    int more, stalled, empty, backlog;
} lx_round;

/* One round: every due slot (at most ROUND_MAX) of every ring, written and accounted. Lock held. */
static lx_round pace_round(lx_pacer *p, uint64_t now) {
    lx_round res = {0, 0, 0, 0, 0};
    uint32_t n = 0, refs = 0;
    uint64_t new_read[LX_PACE_MAX_RINGS];
    p->tot.wakeups++;
    for (uint32_t i = 0; i < p->n_links; i++)
        if (backlog(&p->links[i])) flush(p, &p->links[i]);
    for (uint32_t k = 0; k < p->n_rings; k++) {
        lx_ring_ref *rr = &p->rings[k];
        uint64_t r = rr->read, w = __atomic_load_n((uint64_t *)rr->base, __ATOMIC_ACQUIRE);
        if (w < r || w - r > rr->slots) {
            p->tot.error = LX_ERR_PARAM;
            return res;
        }
        while (1) {
            if (r == w) { /* empty: nothing is due before the horizon (stored after the write index) */
                uint64_t h = __atomic_load_n((uint64_t *)(rr->base + 128), __ATOMIC_ACQUIRE);
                uint64_t w2 = __atomic_load_n((uint64_t *)rr->base, __ATOMIC_ACQUIRE);
                if (w2 != w) {
                    res.more = 1; /* published meanwhile: look again at once */
                } else if (h > now) {
                    if (!res.next_ns || h < res.next_ns) res.next_ns = h;
                } else {
                    res.empty = 1;
                }
                break;
            }
            if (n >= ROUND_MAX) {
                res.more = 1;
                break;
            }
            const uint8_t *slot = rr->base + LX_RING_HEADER + (r % rr->slots) * (uint64_t)rr->slot_size;
            uint64_t t = get64(slot);
            if (t > now) {
                if (!res.next_ns || t < res.next_ns) res.next_ns = t;
                break;
            }
            uint32_t identity = get32(slot + 8), wire_len = get32(slot + 16);
            uint8_t stream = slot[12], flags = slot[13];
            if (wire_len > rr->slot_size - LX_SLOT_META || stream > 2) {
                p->tot.error = LX_ERR_PARAM;
                return res;
            }
            uint32_t link = 0, i = local_id(p, identity);
            int ready = i != UINT32_MAX && p->ready && p->ready[i];
            if (ready) {
                link = p->link_of[i];
                ready = link < p->n_links && p->links[link].fd >= 0;
            }
            if (ready) {
                lx_link *l = &p->links[link];
                if (backlog(l) + l->iov_bytes + wire_len > p->link_buffer) { /* the peer does not read */
                    res.backlog = 1;
                    break;
                }
                if (((flags & 1) && p->n_refs + refs >= p->refs_cap) ||
                    (p->trace && p->n_trace + n >= p->trace_cap) || !reserve_second(p, t)) {
                    res.stalled = 1;
                    break;
                }
                refs += flags & 1;
                l->iov[l->n_iov].iov_base = (void *)(slot + LX_SLOT_META);
                l->iov[l->n_iov++].iov_len = wire_len;
                l->iov_bytes += wire_len;
                lx_taken *tk = &p->taken[n++];
                tk->t = t;
                tk->seq = get64(slot + 24);
                tk->identity = identity;
                tk->stream = stream;
                tk->flags = flags;
            } else if (flags & 1) { /* real: waits for its link, in Python (bounded there) */
                if (p->n_held >= p->held_cap) {
                    res.stalled = 1;
                    break;
                }
                memcpy(p->held + (size_t)p->n_held++ * p->held_slot, slot, LX_SLOT_META + wire_len);
                p->tot.held++;
            } else { /* stale cover sent in a burst later would be overhead, and visible */
                p->tot.unconnected[stream]++;
            }
            r++;
        }
        new_read[k] = r;
        if (n >= ROUND_MAX && r < w) res.more = 1;
    }
    uint64_t actual = mono_ns();
    for (uint32_t i = 0; i < p->n_links; i++)
        if (p->links[i].n_iov) write_round(p, &p->links[i]);
    for (uint32_t k = 0; k < p->n_rings; k++) { /* the slots are free for the workers again */
        if (new_read[k] != p->rings[k].read) {
            p->rings[k].read = new_read[k];
            __atomic_store_n((uint64_t *)(p->rings[k].base + 64), new_read[k], __ATOMIC_RELEASE);
        }
    }
    for (uint32_t i = 0; i < n; i++) account(p, &p->taken[i], actual);
    for (uint32_t i = 0; i < p->n_links && !res.backlog; i++)
        if (backlog(&p->links[i])) res.backlog = 1;
    return res;
}

/* The due time of the last published slot in [first, first + window] over every ring (at most
 * ROUND_MAX of them, what one round sends): waking then sends them all in one round. Lock held. */
static uint64_t coalesced_wake(lx_pacer *p, uint64_t first, uint64_t window) {
    uint64_t last = first, limit = first + window;
    uint32_t n = 0;
    for (uint32_t k = 0; k < p->n_rings && n < ROUND_MAX; k++) {
        lx_ring_ref *rr = &p->rings[k];
        uint64_t w = __atomic_load_n((uint64_t *)rr->base, __ATOMIC_ACQUIRE);
        for (uint64_t r = rr->read; r < w && r - rr->read < rr->slots && n < ROUND_MAX; r++) {
            uint64_t t = get64(rr->base + LX_RING_HEADER + (r % rr->slots) * (uint64_t)rr->slot_size);
            if (t > limit) break;
            n++;
            if (t > last) last = t;
        }
    }
    return last;
}

static void sleep_until(uint64_t t) {
    struct timespec ts = {(time_t)(t / NS), (long)(t % NS)};
    while (clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &ts, NULL) == EINTR) {
    }
}

void lx_pacer_run(lx_pacer *p) {
#ifdef PR_SET_TIMERSLACK
    prctl(PR_SET_TIMERSLACK, 1UL, 0UL, 0UL, 0UL); /* this thread's sleeps end on time, not up to 50 µs late */
#endif
    while (!__atomic_load_n(&p->stop, __ATOMIC_ACQUIRE)) {
        pthread_mutex_lock(&p->mu);
        uint64_t now = mono_ns();
        lx_round r = pace_round(p, now);
        int64_t error = p->tot.error;
        uint64_t co = __atomic_load_n(&p->coalesce_ns, __ATOMIC_RELAXED);
        if (co && r.next_ns && !error) r.next_ns = coalesced_wake(p, r.next_ns, co);
        pthread_mutex_unlock(&p->mu);
        if (error) return;
        if (r.more && !r.stalled && !r.backlog) continue;
        uint64_t wake = now + (r.stalled ? POLL_NS : IDLE_NS);
        if (r.empty && wake > now + POLL_NS) wake = now + POLL_NS;
        if (r.next_ns && r.next_ns < wake) wake = r.next_ns;
        if (r.backlog && wake > now + BACKLOG_NS) wake = now + BACKLOG_NS;
        uint64_t gap = __atomic_load_n(&p->min_gap_ns, __ATOMIC_RELAXED);
        if (wake < now + gap) wake = now + gap;
        sleep_until(wake);
    }
}

void lx_pacer_set_min_gap(lx_pacer *p, uint64_t ns) { __atomic_store_n(&p->min_gap_ns, ns, __ATOMIC_RELAXED); }
void lx_pacer_set_coalesce(lx_pacer *p, uint64_t ns) { __atomic_store_n(&p->coalesce_ns, ns, __ATOMIC_RELAXED); }

void lx_pacer_stop(lx_pacer *p) { __atomic_store_n(&p->stop, 1, __ATOMIC_RELEASE); }

int lx_pacer_set_link(lx_pacer *p, uint32_t link, int fd) {
    pthread_mutex_lock(&p->mu);
    int rc = LX_ERR_PARAM;
    if (ensure_link(p, link) == 0) {
        lx_link *l = &p->links[link];
        if (l->fd >= 0) close(l->fd);
        drop_backlog(p, l);
        l->fd = fd;
        rc = LX_OK;
    }
    pthread_mutex_unlock(&p->mu);
    return rc;
}

long lx_pacer_send(lx_pacer *p, uint32_t link, const uint8_t *data, size_t len) {
    pthread_mutex_lock(&p->mu);
    long rc = LX_OK;
    if (link >= p->n_links || p->links[link].fd < 0) {
        rc = LX_PACE_NO_LINK;
    } else {
        lx_link *l = &p->links[link];
        if (backlog(l)) flush(p, l);
        size_t done = 0;
        if (!backlog(l)) {
            while (done < len) {
                ssize_t n = send(l->fd, data + done, len - done, MSG_DONTWAIT | MSG_NOSIGNAL);
                p->tot.writes++;
                if (n > 0) {
                    done += (size_t)n;
                } else if (n < 0 && errno == EINTR) {
                    continue;
                } else if (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK) {
                    p->tot.write_errors++;
                    done = len; /* the connection broke: Python's reader sees it */
                } else {
                    break;
                }
            }
        }
        if (done < len) {
            if (backlog(l) + (len - done) > p->link_buffer || reserve(p, l, len - done)) {
                /* nothing taken, or a frame cut in two that cannot be taken back: either way Python
                 * closes the connection (the peer does not read) */
                rc = LX_PACE_SEND_FULL;
            } else {
                memcpy(l->buf + l->len, data + done, len - done);
                l->len += len - done;
            }
        }
    }
    pthread_mutex_unlock(&p->mu);
    return rc;
}

int lx_pacer_account(lx_pacer *p, uint64_t scheduled_ns, uint64_t actual_ns, uint32_t identity, uint8_t stream,
                     uint8_t flags, uint64_t seq) {
    if (stream > 2) return LX_ERR_PARAM;
    pthread_mutex_lock(&p->mu);
    int rc = LX_ERR_SIZE;
    if (reserve_second(p, scheduled_ns) && (!(flags & 1) || p->n_refs < p->refs_cap) &&
        (!p->trace || p->n_trace < p->trace_cap)) {
        lx_taken k = {scheduled_ns, seq, identity, stream, flags};
        account(p, &k, actual_ns);
        rc = LX_OK;
    }
    pthread_mutex_unlock(&p->mu);
    return rc;
}

void lx_pacer_totals(lx_pacer *p, lx_pace_totals *out) {
    pthread_mutex_lock(&p->mu);
    *out = p->tot;
    pthread_mutex_unlock(&p->mu);
}

long lx_pacer_take_seconds(lx_pacer *p, lx_pace_second *out, size_t cap) {
    if (cap < LX_PACE_SECONDS) return LX_ERR_SIZE;
    pthread_mutex_lock(&p->mu);
    long n = 0;
    for (uint32_t i = 0; i < LX_PACE_SECONDS; i++) {
        if (!p->sec_used[i]) continue;
        if (p->sec[i].n[0] || p->sec[i].n[1] || p->sec[i].n[2]) out[n++] = p->sec[i];
        memset(&p->sec[i], 0, sizeof p->sec[i]);
        p->sec_used[i] = 0;
    }
    pthread_mutex_unlock(&p->mu);
    return n;
}

long lx_pacer_take_lateness(lx_pacer *p, int64_t *out, size_t cap, uint64_t *seen) {
    pthread_mutex_lock(&p->mu);
    long n = p->n_samples <= cap ? (long)p->n_samples : LX_ERR_SIZE;
    if (n >= 0) {
        memcpy(out, p->samples, (size_t)n * sizeof *out);
        *seen = p->seen;
        p->n_samples = 0;
        p->seen = 0;
    }
    pthread_mutex_unlock(&p->mu);
    return n;
}

long lx_pacer_take_refs(lx_pacer *p, uint64_t *seq, uint64_t *sent_ns, size_t cap) {
    pthread_mutex_lock(&p->mu);
    long n = p->n_refs <= cap ? (long)p->n_refs : LX_ERR_SIZE;
    if (n >= 0) {
        memcpy(seq, p->ref_seq, (size_t)n * 8);
        memcpy(sent_ns, p->ref_ns, (size_t)n * 8);
        p->n_refs = 0;
    }
    pthread_mutex_unlock(&p->mu);
    return n;
}

long lx_pacer_take_trace(lx_pacer *p, uint8_t *out, size_t cap) {
    pthread_mutex_lock(&p->mu);
    size_t bytes = (size_t)p->n_trace * LX_PACE_TRACE_RECORD;
    long n = bytes <= cap ? (long)bytes : LX_ERR_SIZE;
    if (n >= 0) {
        if (bytes) memcpy(out, p->trace, bytes);
        p->n_trace = 0;
    }
    pthread_mutex_unlock(&p->mu);
    return n;
}

long lx_pacer_take_held(lx_pacer *p, uint8_t *out, size_t cap) {
    pthread_mutex_lock(&p->mu);
    size_t bytes = (size_t)p->n_held * p->held_slot;
    long n = bytes <= cap ? (long)p->n_held : LX_ERR_SIZE;
    if (n >= 0) {
        if (bytes) memcpy(out, p->held, bytes);
        p->n_held = 0;
    }
    pthread_mutex_unlock(&p->mu);
    return n;
}
