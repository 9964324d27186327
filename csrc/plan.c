/* loopix worker planning in bulk; see plan.h and docs/randomness.md. */
#include "plan.h"

#include <math.h>
#include <string.h>

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
