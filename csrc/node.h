/* loopix node engine: a testnet node's whole forward path in C, so a mixnode touches each packet in
 * Python not at all. Python (testnet/node.py) calls it once per socket read and once per batch:
 *
 *   lx_node_ingest   a link's bytes: Nym frames parsed, their packets copied to the read backlog
 *   lx_node_step     up to a batch from the backlog: unwrapped (lx_process_batch), replays refused
 *                    (a two-generation tag set), then each packet forwarded at once, held for its
 *                    header's delay (a heap), handed back as final, or dropped and counted
 *   lx_node_release  held packets due by now
 *
 * Both of the last two leave their output in the node until the next call: the packets to forward as
 * ready frames grouped by next hop (one write per hop), the final packets' messages, the drops by
 * reason, and the lateness of what is forwarded (run-length coded). Time is always the caller's
 * `now` (the event loop's clock, in ns): no decision reads a clock. The one clock read is the
 * thread's CPU time around each batch unwrap, for lx_node_unwrap_ns (how much of a node's CPU the
 * Sphinx unwrap takes, the rest being everything around it). The readable reference of the
 * same decisions is testnet/forward_reference.py; the tests hold the two to the same output. */
#ifndef LOOPIX_NODE_H
#define LOOPIX_NODE_H

#include <stddef.h>
#include <stdint.h>

/* Why a packet was dropped: indexes of lx_node_output.drops. A packet the unwrap refused counts at
 * LX_NODE_DROP_SPHINX + (-its LX_ERR_* code), 1..7. */
#define LX_NODE_DROP_REPLAY 0
#define LX_NODE_DROP_INJECTED 1
#define LX_NODE_DROP_QUEUE_FULL 2
#define LX_NODE_DROP_BACKLOG_FULL 3
#define LX_NODE_DROP_SPHINX 4
#define LX_NODE_DROP_REASONS 12

/* lx_node_ingest's frame errors (the stream cannot be read further: close the link). */
#define LX_FRAME_OLD_VERSION 1
#define LX_FRAME_NEW_VERSION 2
#define LX_FRAME_OUTFOX_SIZE 3
#define LX_FRAME_BAD_SIZE 4
#define LX_FRAME_OUTFOX_TYPE 5
#define LX_FRAME_BAD_TYPE 6
#define LX_FRAME_BAD_ROTATION 7

typedef struct lx_node lx_node;

typedef struct {
    uint8_t address[32];
    uint32_t packet_len;
    uint32_t count;
    uint64_t offset; /* into frames: count frames of 3 + packet_len bytes (version 7 headers) */
} lx_node_group;

typedef struct {
    uint8_t destination[32];
    uint64_t message_offset; /* into messages */
    uint64_t message_len;
} lx_node_final;

typedef struct {
    uint64_t value_us; /* how late: now - (arrival + header delay), 0 if early */
    uint64_t count;    /* packets in a row with this lateness */
} lx_node_late;

/* What one step or release produced; the pointers stay valid until the next call on the node. */
typedef struct {
    uint64_t processed; /* backlog packets taken (step) or held packets released */
    uint64_t forwarded;
    uint64_t capped;    /* held with their delay cut to max_delay */
    uint64_t drops[12]; /* LX_NODE_DROP_REASONS */
    uint64_t n_groups;
    const lx_node_group *groups;
    const uint8_t *frames;
    uint64_t frames_len;
    uint64_t n_finals;
    const lx_node_final *finals;
    const uint8_t *messages;
    uint64_t n_late;
    const lx_node_late *late;
} lx_node_output;

typedef struct {
    uint64_t frames;    /* complete frames taken (their packets are in the backlog or dropped as full) */
    uint64_t consumed;  /* bytes of them; the rest is the start of one frame */
    uint64_t need;      /* bytes that frame needs next before this can say more about it */
    uint64_t backlog_full; /* of the frames, dropped: the backlog was at its bound */
    int32_t error;      /* 0 or LX_FRAME_*: the stream is corrupt at byte error_at (close the link) */
    uint32_t error_value; /* the offending byte */
    uint64_t error_at;
} lx_node_ingest_result;

/* A node with its X25519 secret, batch size (packets per step), replay window (each generation holds
 * this many tags, see lx_node_replay_seen), held packets at most, delay cap and fault-injection rate
 * (drop this fraction of packets to forward, 0..1). seed: NULL for the OS, 32 bytes in tests.
 * NULL on bad arguments or allocation failure. */
lx_node *lx_node_new(const uint8_t *secret, uint32_t batch, uint32_t replay_capacity, uint32_t max_queue,
                     uint64_t max_delay_ns, double drop_rate, const uint8_t *seed);
void lx_node_free(lx_node *n);

/* Frames parsed from data (one link's stream, starting at a frame boundary): each complete one's
 * packet joins the backlog, arrived at arrival_ns. Header bytes of a trailing partial frame are
 * checked as far as they go. */
int lx_node_ingest(lx_node *n, const uint8_t *data, size_t len, int64_t arrival_ns, lx_node_ingest_result *r);
/* count unframed packets of packet_len bytes, back to back (in-process callers and tests). Returns the
 * number taken (the rest is dropped as backlog full) or LX_ERR_PARAM / LX_ERR_SIZE. */
long lx_node_push(lx_node *n, const uint8_t *packets, size_t count, size_t packet_len, int64_t arrival_ns);
uint64_t lx_node_backlog(const lx_node *n);
/* CPU time (ns, this thread's) spent in lx_process_batch since the node was made. */
uint64_t lx_node_unwrap_ns(const lx_node *n);
uint64_t lx_node_held(const lx_node *n);
/* 1 with the due time (ns) of the first held packet in *due_ns, or 0 when none is held. */
int lx_node_next_due(const lx_node *n, int64_t *due_ns);

/* Up to max_packets (at most the batch) from the backlog. 0, or LX_ERR_CRYPTO when memory ran out
 * (the packets taken are then counted nowhere: the caller counts them as an internal error). */
int lx_node_step(lx_node *n, int64_t now_ns, uint32_t max_packets, lx_node_output *out);
/* Held packets due by now_ns + horizon_ns, in due order (ties in arrival order). */
int lx_node_release(lx_node *n, int64_t now_ns, int64_t horizon_ns, lx_node_output *out);

/* The frames buffer of the last step or release, handed to the caller (free it with
 * lx_node_free_frames once nothing reads it): the node makes a new one for its next output. So the
 * frames can be written to sockets without a copy and stay valid while a socket still holds them. */
uint8_t *lx_node_take_frames(lx_node *n);
void lx_node_free_frames(uint8_t *frames);

/* The replay window: a tag is refused if it was accepted among the last `replay_capacity` (at least)
 * to 2 x that (at most) tags. lx_node_replay_seen checks and remembers one tag (1 if seen before),
 * as the step does; lx_node_replay_dump writes the remembered tags oldest first (32 bytes each,
 * at most out_len bytes) and returns how many bytes they take. */
int lx_node_replay_seen(lx_node *n, const uint8_t *tag);
uint64_t lx_node_replay_count(const lx_node *n);
uint64_t lx_node_replay_dump(const lx_node *n, uint8_t *out, size_t out_len);

#endif
