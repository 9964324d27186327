/* loopix sender ring scan; see ringscan.h and client/ring.py. */
#include "ringscan.h"

#include <string.h>

#include "sphinx.h"

static uint64_t get64(const uint8_t *p) {
    uint64_t v;
    memcpy(&v, p, 8); /* little-endian host, as the ring (x86-64, see ring.py) */
    return v;
}

static uint32_t get32(const uint8_t *p) {
    uint32_t v;
    memcpy(&v, p, 4);
    return v;
}

long lx_take_due(const uint8_t *ring, uint64_t slots, uint32_t slot_size, uint64_t read, uint64_t write,
                 uint64_t now_ns, const uint8_t *ready, const uint32_t *link_of, uint32_t n_identities,
                 uint8_t *out, size_t link_cap, uint32_t n_links, uint64_t *out_len, lx_due *due,
                 size_t max_due, uint64_t *new_read, uint64_t *next_ns, uint64_t *unconnected) {
    if (!ring || !ready || !link_of || !out || !out_len || !due || !new_read || !next_ns || !unconnected ||
        slots == 0 || slot_size < LX_SLOT_META || write < read || write - read > slots)
        return LX_ERR_PARAM;
    long n = 0;
    uint64_t r = read;
    *next_ns = 0;
    while (r < write && (size_t)n < max_due) {
        const uint8_t *slot = ring + LX_RING_HEADER + (r % slots) * (uint64_t)slot_size;
        uint64_t t = get64(slot);
        if (t > now_ns) {
            *next_ns = t;
            break;
        }
        uint32_t identity = get32(slot + 8);
        uint32_t wire_len = get32(slot + 16);
        if (wire_len > slot_size - LX_SLOT_META) {
            n = LX_ERR_PARAM;
            break;
        }
        if (identity < n_identities && ready[identity]) {
            uint32_t link = link_of[identity];
            if (link >= n_links) {
                n = LX_ERR_PARAM;
                break;
            }
            if (out_len[link] + wire_len > link_cap) break; /* this link's region is full: next round */
            memcpy(out + link * link_cap + out_len[link], slot + LX_SLOT_META, wire_len);
            out_len[link] += wire_len;
            due[n].scheduled_ns = t;
            due[n].identity = identity;
            due[n].stream = slot[12];
            due[n].flags = slot[13];
            n++;
        } else {
            ++*unconnected;
        }
        r++;
    }
    *new_read = r;
    return n;
}
