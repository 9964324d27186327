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

#endif
