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

/* Slots [read, write) of the ring at `ring` (slots of slot_size bytes after the header), in order,
 * while their scheduled time is <= now_ns: a slot of a ready identity (ready[identity] != 0) has its
 * wire bytes appended to link link_of[identity]'s region of out (n_links regions of link_cap bytes,
 * out_len[link] bytes used) and its metadata to due; any other slot is consumed and counted in
 * *unconnected. Stops early when max_due slots are taken or a link's region is full.
 * Writes the first slot index not taken to *new_read and the time of the first slot not yet due
 * (0 if none) to *next_ns. Returns how many went to due, or a negative LX_ERR code for a slot the
 * ring cannot hold (then nothing past it is taken). */
long lx_take_due(const uint8_t *ring, uint64_t slots, uint32_t slot_size, uint64_t read, uint64_t write,
                 uint64_t now_ns, const uint8_t *ready, const uint32_t *link_of, uint32_t n_identities,
                 uint8_t *out, size_t link_cap, uint32_t n_links, uint64_t *out_len, lx_due *due,
                 size_t max_due, uint64_t *new_read, uint64_t *next_ns, uint64_t *unconnected);

#endif
