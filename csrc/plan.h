/* loopix worker planning in bulk: the aggregated Poisson clock and route/delay draws for a batch of
 * packet specs, from the CSPRNG (csprng.h), so a worker makes no per-packet random draw in Python. */
#ifndef LOOPIX_PLAN_H
#define LOOPIX_PLAN_H

#include <stddef.h>
#include <stdint.h>

#include "csprng.h"
#include "sphinx.h"

#define LX_HOP_RECORD 64          /* public key (32) ‖ Sphinx node address (32), as in lx_hop */
#define LX_ANY_PROVIDER 0xffffffffu

/* The superposition of every identity's three streams. Uniform case (cumulative == NULL): every
 * identity has the same rates, stream_cum is the cumulative rate of its three streams and the
 * identity is drawn uniformly from n_identities. Table case: cumulative[k] is the cumulative rate
 * over (identity, stream) pairs k = 3 * identity + stream, n_entries of them. */
typedef struct {
    uint64_t now_ns;
    double total_rate; /* events per second, > 0 */
    uint32_t n_identities;
    uint32_t n_entries;
    double stream_cum[3];
    const double *cumulative;
} lx_clock;

/* The next count events, in time order: times (ns), identity, stream. Advances now_ns. */
int lx_clock_draw(lx_clock *c, lx_rng *r, size_t count, uint64_t *t, uint32_t *identity, uint8_t *stream);

/* One topology's routes: layer l has layer_size[l] hop records, providers n_providers. */
typedef struct {
    uint32_t n_layers;
    uint32_t layer_size[LX_MAX_HOPS];
    const uint8_t *layer_hops[LX_MAX_HOPS];
    uint32_t n_providers;
    const uint8_t *provider_hops;
    double mean_delay_ns; /* per mix hop, exponential; 0: no delay */
} lx_route_table;

/* For specs[0..count): one mixnode drawn from each layer, then provider[i] (an index into the
 * providers) or, for LX_ANY_PROVIDER, one drawn at random; delays Exp(mean) for the mix hops and 0
 * for the last (never encoded). Sets n_hops and hops; leaves the rest of each spec alone. */
int lx_draw_routes(lx_rng *r, const lx_route_table *t, lx_packet_spec *specs, size_t count,
                   const uint32_t *provider);

/* ---- a worker's whole batch in one call (lx_worker_batch) ---- */

#define LX_ACK_PAYLOAD 21     /* an ack packet's final message (Nym's Ack size) */
#define LX_ACK_PACKET 386     /* its packet: lx_packet_size(21) */
#define LX_ACK_PREFIX 418     /* ack first hop (32) ‖ ack packet, at the front of real and loop messages */
#define LX_LOOP_MIN 76        /* message id 8 ‖ 0,1 (be32 each) ‖ nonce 24 ‖ secretbox(identity, seq, sent) 36 */

#define LX_SLOT_REAL 0     /* a fragment: the caller put its message at slot * payload_size + LX_ACK_PREFIX
                            * (message_len[i] bytes) and its destination in destinations[i]; gets an ack */
#define LX_SLOT_LOOP 1     /* a loop to the identity itself, encoded here; gets an ack */
#define LX_SLOT_DROP 2     /* drop cover: a fresh CSPRNG payload to a random provider, no ack */
#define LX_SLOT_PREBUILT 3 /* a reply the caller already built: a drop is built in its place and the
                            * caller overwrites the slot's first hop and packet */

typedef struct {
    const lx_route_table *table;
    uint64_t capacity;
    uint64_t payload_size;
    lx_packet_spec *specs;         /* capacity each */
    lx_packet_spec *ack_specs;
    int32_t *status;
    int32_t *ack_status;
    uint8_t *messages;             /* capacity * payload_size: slot i's message at i * payload_size */
    uint8_t *ack_messages;         /* capacity * LX_ACK_PAYLOAD */
    uint8_t *ack_out;              /* capacity * LX_ACK_PACKET */
    uint8_t *blocks;               /* capacity * 16: the acks' AES blocks */
    uint64_t *ack_refs;            /* capacity: the ref each ack names */
    uint32_t *ack_of;              /* capacity: the slot each ack belongs to */
    double *uniforms;              /* capacity * 2 * (2 * LX_MAX_HOPS + 1) */
    uint8_t *secrets;              /* capacity * 2 * 32: each packet's ephemeral secret */
    const uint8_t *identity_keys;  /* 32 bytes per local identity (loop destinations) */
    const uint32_t *own_provider;  /* per local identity: its provider's index in the table */
    uint32_t n_identities;
    uint8_t ack_key[32];           /* AES-256 (client/acks.py) */
    uint8_t loop_key[32];          /* XSalsa20-Poly1305 (client/messages.py LoopCodec) */
    uint8_t drop_destination[32];
    const uint8_t *wire_header;    /* written before the first hop of every slot */
    uint32_t wire_header_len;
    /* per slot 0..count, set by the caller */
    uint8_t *kind;
    uint8_t *stream;
    uint32_t *local;
    uint32_t *identity;            /* global identity index (ring metadata, loop payload) */
    uint64_t *t;                   /* scheduled time (ring metadata, loop payload) */
    uint64_t *seq;                 /* ring seq; REAL and PREBUILT: the fragment ref, named in the ack */
    uint32_t *provider;            /* REAL: index of the recipient's provider */
    uint32_t *message_len;         /* REAL: bytes of the message after the ack prefix */
    uint8_t *destinations;         /* REAL: 32 bytes per slot */
    /* out, per slot */
    uint64_t *route_delay_ns;      /* the mix delays of the packet and of its ack */
    int64_t *placed;               /* the ring slot (from the first) the packet went to, or -1 */
    /* out, per stream */
    uint64_t built[3];
    uint64_t failed[3];
} lx_batch;

/* Plans and builds slots 0..count into the ring: routes, ack routes and delays drawn in one pass
 * from the CSPRNG, drop payloads, loop and ack payloads encoded, the acks built and put at the front
 * of their packets' messages, the packets built into consecutive ring slots from `slots` (the first
 * slot's metadata; slot_size apart) with the wire header, first hop and metadata of each. A packet
 * that fails to build (or whose ack does) takes no slot: the rest close up. Returns the number of
 * slots written, or a negative LX_ERR_* code for bad arguments (nothing written). */
long lx_worker_batch(lx_batch *b, lx_rng *r, size_t count, uint8_t *slots, uint64_t slot_size);

#endif
