"""cffi build script (API mode, out-of-line) for the C core in csrc/.

`pip install` runs it through setup.py's cffi_modules. LOOPIX_CFLAGS / LOOPIX_LDFLAGS add flags, e.g. the
sanitizer build of scripts/sanitize.
"""

import os
import shlex
from pathlib import Path

from cffi import FFI

ROOT = Path(__file__).resolve().parents[3]
# setuptools wants sources relative to setup.py, which is where pip runs this script from.
CSRC = Path(os.path.relpath(ROOT / "csrc", Path.cwd()))

ffibuilder = FFI()
ffibuilder.cdef(
    """
    #define LX_MAX_HOPS 5
    #define LX_HEADER_SIZE 348
    #define LX_OK 0
    #define LX_ERR_PARAM -1
    #define LX_ERR_SIZE -2
    #define LX_ERR_KEY -3
    #define LX_ERR_MAC -4
    #define LX_ERR_HEADER -5
    #define LX_ERR_PAYLOAD -6
    #define LX_ERR_CRYPTO -7
    #define LX_FORWARD 1
    #define LX_FINAL 2
    typedef struct {
        uint8_t public_key[32];
        uint8_t address[32];
        uint64_t delay_ns;
    } lx_hop;
    typedef struct {
        uint32_t n_hops;
        uint32_t message_len;
        uint64_t message_offset;
        lx_hop hops[5];
        uint8_t destination[32];
        uint8_t identifier[16];
        uint8_t ephemeral_secret[32];
        uint32_t use_ephemeral_secret;
    } lx_packet_spec;
    typedef struct {
        int32_t status;
        int32_t kind;
        uint64_t delay_ns;
        uint64_t message_offset;
        uint64_t message_len;
        uint8_t next_address[32];
        uint8_t destination[32];
        uint8_t identifier[16];
        uint8_t replay_tag[32];
    } lx_processed;
    int lx_init(void);
    long lx_packet_size(size_t payload_size);
    int lx_build_packet(const lx_packet_spec *spec, const uint8_t *message, size_t message_len,
                        size_t payload_size, uint8_t *out, size_t out_len);
    long lx_build_batch(const lx_packet_spec *specs, size_t count, const uint8_t *messages,
                        size_t messages_len, size_t payload_size, uint8_t *out, size_t out_len,
                        size_t stride, int32_t *status);
    int lx_process_packet(const uint8_t *secret, const uint8_t *packet, size_t len, uint8_t *out,
                          size_t out_len, lx_processed *res);
    long lx_process_batch(const uint8_t *secret, const uint8_t *packets, size_t count,
                          size_t packet_len, uint8_t *out, size_t out_len, lx_processed *res);
    int lx_lioness_encrypt(const uint8_t *key, uint8_t *block, size_t len);
    int lx_lioness_decrypt(const uint8_t *key, uint8_t *block, size_t len);
    int lx_expand_secret(const uint8_t *shared, uint8_t *out);
    int lx_derive_hop_keys(const uint8_t *x, const uint8_t *public_keys, size_t n, uint8_t *out);
    int lx_x25519_ladder(uint8_t out[32], const uint8_t *scalar, const uint8_t point[32], unsigned bits);
    int lx_x25519(uint8_t out[32], const uint8_t scalar[32], const uint8_t point[32]);
    int lx_x25519_base(uint8_t out[32], const uint8_t scalar[32]);
    int lx_x25519_base_edwards(uint8_t out[32], const uint8_t scalar[32]);
    void lx_scalar_mul(uint8_t z[32], const uint8_t x[32], const uint8_t y[32]);
    int lx_check_public_key(const uint8_t pk[32]);
    int lx_is_low_order(const uint8_t u[32]);
    int lx_x25519_keyed(uint8_t out[32], const uint8_t k[32], const uint8_t pk[32]);
    void lx_key_cache_clear(void);
    int crypto_scalarmult(unsigned char *q, const unsigned char *n, const unsigned char *p);
    int crypto_scalarmult_base(unsigned char *q, const unsigned char *n);
    void randombytes_buf(void * const buf, const size_t size);
    typedef struct { uint8_t key[32]; } lx_rng;
    int lx_rng_seed(lx_rng *r, const uint8_t *seed);
    void lx_rng_bytes(lx_rng *r, uint8_t *out, size_t n);
    void lx_rng_set_path(int path);
    int lx_rng_path(void);
    void lx_rng_doubles(lx_rng *r, double *out, size_t n);
    void lx_rng_exponentials(lx_rng *r, double *out, size_t n);
    int lx_rng_below(lx_rng *r, uint32_t bound, uint32_t *out, size_t n);
    #define LX_HOP_RECORD 64
    #define LX_ANY_PROVIDER 0xffffffff
    typedef struct {
        uint64_t now_ns;
        double total_rate;
        uint32_t n_identities;
        uint32_t n_entries;
        double stream_cum[3];
        const double *cumulative;
    } lx_clock;
    int lx_clock_draw(lx_clock *c, lx_rng *r, size_t count, uint64_t *t, uint32_t *identity, uint8_t *stream);
    typedef struct {
        uint32_t n_layers;
        uint32_t layer_size[5];
        const uint8_t *layer_hops[5];
        uint32_t n_providers;
        const uint8_t *provider_hops;
        double mean_delay_ns;
    } lx_route_table;
    int lx_draw_routes(lx_rng *r, const lx_route_table *t, lx_packet_spec *specs, size_t count,
                       const uint32_t *provider);
    #define LX_ACK_PAYLOAD 21
    #define LX_ACK_PACKET 386
    #define LX_ACK_PREFIX 418
    #define LX_LOOP_MIN 76
    #define LX_SLOT_REAL 0
    #define LX_SLOT_LOOP 1
    #define LX_SLOT_DROP 2
    #define LX_SLOT_PREBUILT 3
    typedef struct {
        const lx_route_table *table;
        uint64_t capacity;
        uint64_t payload_size;
        lx_packet_spec *specs;
        lx_packet_spec *ack_specs;
        int32_t *status;
        int32_t *ack_status;
        uint8_t *messages;
        uint8_t *ack_messages;
        uint8_t *ack_out;
        uint8_t *blocks;
        uint64_t *ack_refs;
        uint32_t *ack_of;
        double *uniforms;
        uint8_t *secrets;
        const uint8_t *identity_keys;
        const uint32_t *own_provider;
        uint32_t n_identities;
        uint8_t ack_key[32];
        uint8_t loop_key[32];
        uint8_t drop_destination[32];
        const uint8_t *wire_header;
        uint32_t wire_header_len;
        uint8_t *kind;
        uint8_t *stream;
        uint32_t *local;
        uint32_t *identity;
        uint64_t *t;
        uint64_t *seq;
        uint32_t *provider;
        uint32_t *message_len;
        uint8_t *destinations;
        uint64_t *route_delay_ns;
        int64_t *placed;
        uint64_t built[3];
        uint64_t failed[3];
    } lx_batch;
    long lx_worker_batch(lx_batch *b, lx_rng *r, size_t count, uint8_t *slots, uint64_t slot_size);
    #define LX_RING_HEADER 192
    #define LX_SLOT_META 32
    typedef struct {
        uint64_t scheduled_ns;
        uint32_t identity;
        uint8_t stream;
        uint8_t flags;
    } lx_due;
    typedef struct {
        const uint8_t *ring;
        uint64_t slots;
        uint32_t slot_size;
        uint32_t n_identities;
        const uint8_t *ready;
        const uint32_t *link_of;
        uint32_t n_links;
        uint8_t *out;
        uint64_t link_cap;
        uint64_t *out_len;
        lx_due *due;
        uint64_t max_due;
        uint64_t new_read;
        uint64_t next_ns;
        uint64_t unconnected[3];
    } lx_take_ctx;
    long lx_take_due(lx_take_ctx *c, uint64_t read, uint64_t write, uint64_t now_ns, uint64_t room);
    """
)
ffibuilder.set_source(
    "loopix.sphinx._sphinx_c",
    '#include "sphinx.h"\n#include "x25519.h"\n#include "csprng.h"\n#include "plan.h"\n#include "ringscan.h"\n#include <sodium.h>\n',
    sources=[str(CSRC / "sphinx.c"), str(CSRC / "x25519.c"), str(CSRC / "csprng.c"), str(CSRC / "plan.c"), str(CSRC / "ringscan.c")],
    include_dirs=[str(CSRC)],
    libraries=["sodium", "crypto", "pthread", "m"],
    # -O3: the field arithmetic in x25519.c needs its loops unrolled (see the note there)
    extra_compile_args=["-O3", "-std=gnu11", "-Wall", "-Wextra", *shlex.split(os.environ.get("LOOPIX_CFLAGS", ""))],
    extra_link_args=shlex.split(os.environ.get("LOOPIX_LDFLAGS", "")),
)

if __name__ == "__main__":
    ffibuilder.compile(tmpdir=str(ROOT / "build" / "cffi"), verbose=True)
