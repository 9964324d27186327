/* loopix sender pacing loop: a thread of the sender process (GIL released) that reads the workers'
 * rings (client/ring.py has the slot layout), sleeps to the next due packet on the kernel's absolute
 * high-resolution timer, writes due packets straight to their provider sockets (one sendmsg per link
 * per wake-up) and does the per-packet accounting in flat arrays that Python reads once per stats
 * interval. Python keeps the protocol: registration, pushes, acks and pulls (its frames go through
 * lx_pacer_send, so they are never interleaved with the pacer's writes), reconnections, and real
 * packets due while their link is down (handed over through the held buffer). See client/pacer.py. */
#ifndef LOOPIX_PACER_H
#define LOOPIX_PACER_H

#include <stddef.h>
#include <stdint.h>

#define LX_PACE_MAX_RINGS 256
#define LX_PACE_SECONDS 64   /* per-second buckets kept between collections (direct-mapped) */
#define LX_PACE_TRACE_RECORD 24
#define LX_PACE_SEND_FULL -2 /* lx_pacer_send: the link's buffer is full (the peer does not read) */
#define LX_PACE_NO_LINK -3   /* lx_pacer_send: the link has no connection */

typedef struct lx_pacer lx_pacer;

typedef struct {
    uint64_t sent[3];        /* per stream: packets written (or buffered for the socket) */
    uint64_t real_sent;      /* of which real (flag bit 0) */
    uint64_t unconnected[3]; /* cover due while its identity had no ready link: not sent */
    uint64_t held;           /* real packets due while their link was down, handed to Python */
    uint64_t wakeups;        /* rounds the loop ran */
    uint64_t writes;         /* sendmsg/write calls */
    uint64_t stalls;         /* rounds cut short: a buffer Python drains was full */
    uint64_t write_errors;   /* sendmsg failures other than EAGAIN (the connection broke) */
    uint64_t dropped_bytes;  /* bytes buffered for a link when its connection was replaced or lost */
    int64_t error;           /* nonzero: a ring held a slot it cannot (the loop stopped) */
} lx_pace_totals;

typedef struct {
    uint64_t sec; /* scheduled second (CLOCK_MONOTONIC) */
    uint64_t n[4]; /* payload, loop, drop, of which real */
} lx_pace_second;

/* A pacer with these bounds: lateness reservoir size, sent real refs, trace records (0: no trace),
 * held real packets and the slot size they are copied at, bytes buffered per link. seed: NULL for the
 * OS (reservoir indexes come from the CSPRNG), 32 bytes in tests. NULL on allocation failure. */
lx_pacer *lx_pacer_new(uint32_t max_samples, uint32_t refs_cap, uint32_t trace_cap, uint32_t held_cap,
                       uint32_t held_slot, uint64_t link_buffer, const uint8_t *seed);
/* Frees it (after lx_pacer_run returned); closes the link fds it owns. */
void lx_pacer_free(lx_pacer *p);
/* A ring (the whole mapping); the read index starts at the ring's. Before lx_pacer_run only. */
int lx_pacer_add_ring(lx_pacer *p, uint8_t *ring, uint64_t slots, uint32_t slot_size);

/* The lock the loop holds while it scans and writes; held by Python around lx_pacer_set_identities. */
void lx_pacer_lock(lx_pacer *p);
void lx_pacer_unlock(lx_pacer *p);
/* Per identity (our index): ready flag, link index, and the counters the loop adds to (sent per stream, real).
 * Call with the lock held; the arrays must stay valid until the next call. */
void lx_pacer_set_identities(lx_pacer *p, uint32_t n, const uint8_t *ready, const uint32_t *link_of,
                             uint64_t *sent0, uint64_t *sent1, uint64_t *sent2, uint64_t *real_sent);

/* The rings name identities globally; this pacer's identity i is the ring's first + i * step (a sender
 * that owns every step-th identity of the client). Default 0, 1. */
void lx_pacer_set_id_map(lx_pacer *p, uint32_t first, uint32_t step);

/* The connection of a link: fd (the pacer owns it from now on and closes it) or -1 when it is down.
 * Bytes still buffered for the previous connection are dropped (counted). */
int lx_pacer_set_link(lx_pacer *p, uint32_t link, int fd);
/* Python's frames to a link, in order with the pacer's writes. 0 or LX_PACE_SEND_FULL / LX_PACE_NO_LINK
 * (nothing taken) or LX_ERR_PARAM. */
long lx_pacer_send(lx_pacer *p, uint32_t link, const uint8_t *data, size_t len);
/* One packet Python sent itself (a held one; identity as the ring names it), accounted as the loop
 * accounts its own. */
int lx_pacer_account(lx_pacer *p, uint64_t scheduled_ns, uint64_t actual_ns, uint32_t identity, uint8_t stream,
                     uint8_t flags, uint64_t seq);

/* The loop; returns after lx_pacer_stop or a corrupt ring (totals.error). */
void lx_pacer_run(lx_pacer *p);
void lx_pacer_stop(lx_pacer *p);
/* Wake-ups at least ns apart (0: at each due packet): packets due within it go in one write per link,
 * each up to ns late. Fewer wake-ups and writes per packet at the cost of that much lateness. */
void lx_pacer_set_min_gap(lx_pacer *p, uint64_t ns);
/* Coalescing (0: off): when the next due packet has others due within ns after it (already in the
 * rings, which the workers fill ahead), wake once at the last of them and send them together. A lone
 * packet is sent on time; a packet is never more than ns late for it. */
void lx_pacer_set_coalesce(lx_pacer *p, uint64_t ns);

/* Collection (each takes the lock): totals so far; the per-second buckets, lateness reservoir
 * (ns; *seen: packets it samples), sent real refs and trace records since the last take (reset). */
void lx_pacer_totals(lx_pacer *p, lx_pace_totals *out);
long lx_pacer_take_seconds(lx_pacer *p, lx_pace_second *out, size_t cap);
long lx_pacer_take_lateness(lx_pacer *p, int64_t *out, size_t cap, uint64_t *seen);
long lx_pacer_take_refs(lx_pacer *p, uint64_t *seq, uint64_t *sent_ns, size_t cap);
long lx_pacer_take_trace(lx_pacer *p, uint8_t *out, size_t cap);
/* Held real packets, each copied as its ring slot (metadata, then wire bytes) into held_slot bytes. */
long lx_pacer_take_held(lx_pacer *p, uint8_t *out, size_t cap);

#endif
