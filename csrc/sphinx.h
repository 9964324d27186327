/* loopix Sphinx core: Nym sphinx-packet 0.6.0 (header version 259) packets, built and unwrapped in C.
 *
 * Every entry point checks every length before it touches memory and reports errors as negative
 * LX_ERR_* codes; nothing here aborts, allocates per packet or keeps state between calls except one
 * cached AES context per thread. */
#ifndef LOOPIX_SPHINX_H
#define LOOPIX_SPHINX_H

#include <stddef.h>
#include <stdint.h>

#define LX_MAX_HOPS 5
#define LX_HEADER_SIZE 348
#define LX_PAYLOAD_OVERHEAD 17
#define LX_EXPANDED_SIZE 288

#define LX_OK 0
#define LX_ERR_PARAM (-1)   /* bad argument: hop count, sizes, message too long, short buffer */
#define LX_ERR_SIZE (-2)    /* packet length is none of the five Nym sizes */
#define LX_ERR_KEY (-3)     /* X25519 gave the all-zero point */
#define LX_ERR_MAC (-4)     /* header MAC mismatch */
#define LX_ERR_HEADER (-5)  /* unknown routing flag or version */
#define LX_ERR_PAYLOAD (-6) /* final payload integrity check failed */
#define LX_ERR_CRYPTO (-7)  /* the crypto library failed (out of memory, no AES) */

#define LX_FORWARD 1
#define LX_FINAL 2

typedef struct {
    uint8_t public_key[32];
    uint8_t address[32];
    uint64_t delay_ns;
} lx_hop;

/* One packet to build. The message bytes live in a separate buffer at message_offset. */
typedef struct {
    uint32_t n_hops;
    uint32_t message_len;
    uint64_t message_offset;
    lx_hop hops[LX_MAX_HOPS];
    uint8_t destination[32];
    uint8_t identifier[16];
    uint8_t ephemeral_secret[32];
    uint32_t use_ephemeral_secret; /* 0: draw a fresh secret from the OS CSPRNG */
} lx_packet_spec;

/* What one unwrap found. For LX_FINAL the message is out[message_offset, +message_len). */
typedef struct {
    int32_t status; /* LX_OK or an LX_ERR_* code (batch calls) */
    int32_t kind;   /* LX_FORWARD or LX_FINAL */
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

/* Builds count packets into out (packet i at out + i*stride); status[i] gets each result.
 * Returns the number built without error, or a negative code if the arguments themselves are bad. */
long lx_build_batch(const lx_packet_spec *specs, size_t count, const uint8_t *messages,
                    size_t messages_len, size_t payload_size, uint8_t *out, size_t out_len,
                    size_t stride, int32_t *status);

/* Unwraps one layer. out must hold len bytes: the next packet (forward) or the decrypted payload
 * area at its packet offsets (final). */
int lx_process_packet(const uint8_t *secret, const uint8_t *packet, size_t len, uint8_t *out,
                      size_t out_len, lx_processed *res);

/* count packets of packet_len bytes each, back to back in packets; results back to back in out. */
long lx_process_batch(const uint8_t *secret, const uint8_t *packets, size_t count,
                      size_t packet_len, uint8_t *out, size_t out_len, lx_processed *res);

/* Exposed for tests against the reference and the lioness crate's vector. */
int lx_lioness_encrypt(const uint8_t *key, uint8_t *block, size_t len);
int lx_lioness_decrypt(const uint8_t *key, uint8_t *block, size_t len);
int lx_expand_secret(const uint8_t *shared, uint8_t *out);
/* The build's key derivation for ephemeral secret x and n public keys (32 bytes each, back to back):
 * writes the n expanded secrets (288 bytes each) the packet would use. */
int lx_derive_hop_keys(const uint8_t *x, const uint8_t *public_keys, size_t n, uint8_t *out);

#endif
