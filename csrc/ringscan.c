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

long lx_take_due(lx_take_ctx *c, uint64_t read, uint64_t write, uint64_t now_ns, uint64_t room) {
    if (!c || !c->ring || !c->ready || !c->link_of || !c->out || !c->out_len || !c->due || c->slots == 0 ||
        c->slot_size < LX_SLOT_META || write < read || write - read > c->slots)
        return LX_ERR_PARAM;
    if (room > c->max_due) room = c->max_due;
    long n = 0;
    uint64_t r = read;
    c->next_ns = 0;
    memset(c->unconnected, 0, sizeof c->unconnected);
    while (r < write && (uint64_t)n < room) {
        const uint8_t *slot = c->ring + LX_RING_HEADER + (r % c->slots) * (uint64_t)c->slot_size;
        uint64_t t = get64(slot);
        if (t > now_ns) {
            c->next_ns = t;
            break;
        }
        uint32_t identity = get32(slot + 8);
        uint32_t wire_len = get32(slot + 16);
        uint8_t stream = slot[12];
        if (wire_len > c->slot_size - LX_SLOT_META || stream > 2) {
            n = LX_ERR_PARAM;
            break;
        }
        if (identity < c->n_identities && c->ready[identity]) {
            uint32_t link = c->link_of[identity];
            if (link >= c->n_links) {
                n = LX_ERR_PARAM;
                break;
            }
            if (c->out_len[link] + wire_len > c->link_cap) break; /* region full: next round */
            memcpy(c->out + link * c->link_cap + c->out_len[link], slot + LX_SLOT_META, wire_len);
            c->out_len[link] += wire_len;
            c->due[n].scheduled_ns = t;
            c->due[n].identity = identity;
            c->due[n].stream = stream;
            c->due[n].flags = slot[13];
            n++;
        } else {
            c->unconnected[stream]++;
        }
        r++;
    }
    c->new_read = r;
    return n;
}
