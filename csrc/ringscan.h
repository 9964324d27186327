/* loopix sender: take the due slots of a worker's ring in one call (client/ring.py has the layout),
 * gathering their wire bytes per provider link, so the sender makes no per-packet Python step
 * between the ring and the socket write. */
#ifndef LOOPIX_RINGSCAN_H
#define LOOPIX_RINGSCAN_H

#include <stddef.h>
#include <stdint.h>

#define LX_RING_HEADER 192
#define LX_SLOT_META 32

typedef struct {
    uint64_t scheduled_ns;
    uint32_t identity;
    uint8_t stream;
    uint8_t flags;
} lx_due;

/* One ring as the sender reads it, and where the taken slots go: set once, passed to each call. */
typedef struct {
    const uint8_t *ring; /* the mapping: header, then slots of slot_size bytes */
    uint64_t slots;
    uint32_t slot_size;
    uint32_t n_identities;
    const uint8_t *ready;    /* per identity: nonzero when its provider link is registered */
    const uint32_t *link_of; /* per identity: its link */
    uint32_t n_links;
    uint8_t *out;            /* n_links regions of link_cap bytes */
    uint64_t link_cap;
    uint64_t *out_len;       /* bytes used in each link's region */
    lx_due *due;
    uint64_t max_due;
    /* results of the last call */
    uint64_t new_read;      /* the first slot index not taken */
    uint64_t next_ns;       /* the time of the first slot not yet due, 0 if none */
    uint64_t unconnected[3]; /* slots of identities not ready, consumed, by stream */
} lx_take_ctx;

/* Slots [read, write) in order while their scheduled time is <= now_ns: a slot of a ready identity
 * has its wire bytes appended to its link's region of out and its metadata to due; any other slot is
 * consumed and counted in unconnected[stream]. Stops early when room (<= max_due) slots are taken or
 * a link's region is full. Returns how many went to due, or a negative LX_ERR code for a slot the ring
 * cannot hold, or of no stream 0..2 (then nothing from it on is taken). */
long lx_take_due(lx_take_ctx *c, uint64_t read, uint64_t write, uint64_t now_ns, uint64_t room);

#endif
