"""Messages between the coordinator and its worker and sender processes, and their framing.

They travel over a socketpair as `u32 BE length || msgpack`. None of this is on the per-packet path:
packets go through the shared-memory rings; these carry setup, topology, real-message fragments
(batched) and statistics.
"""

from __future__ import annotations

import asyncio
import socket
import struct

import msgspec

from loopix.wire.frames import LengthPrefixedReader

_LEN = struct.Struct(">I")
MAX_CONTROL_MESSAGE = 64 * 2**20


class RateClass(msgspec.Struct, frozen=True, array_like=True):
    payload: float
    loop: float
    drop: float


class MixNodeInfo(msgspec.Struct, frozen=True, array_like=True):
    layer: int
    public_key: bytes
    address: bytes  # 32-byte Sphinx node address


class ProviderInfo(msgspec.Struct, frozen=True, array_like=True):
    public_key: bytes
    address: bytes
    host: str
    port: int


class TopologyUpdate(msgspec.Struct, tag=True):
    mixnodes: list[MixNodeInfo]
    providers: list[ProviderInfo]


COVER_FOREVER = (1 << 63) - 1  # cover_until_ns of a worker that is not paused
EVERY_IDENTITY = (1 << 63) - 1  # streams_until when no identity waits for its registration


class WorkerSetup(msgspec.Struct, tag=True):
    worker_index: int
    workers: int
    payload_size: int
    mean_hop_delay_ms: float
    payload_cover: str  # "drop" or "loop"
    lookahead_ms: float
    batch_size: int
    start_ns: int
    loop_key: bytes
    # the identities this worker runs, flat (a fleet has 100,000): its i-th (global index first +
    # i * step) has the public key at [32i, 32i + 32) of public_keys, provider_keys[provider_of[i]]
    # and rate_classes[rate_of[i]] (provider_of, rate_of: array("H") bytes, native order)
    public_keys: bytes
    provider_of: bytes
    rate_of: bytes
    provider_keys: list[bytes]
    rate_classes: list[RateClass]
    topology: TopologyUpdate
    wire_header: bytes  # bytes before the first-hop address in every SEND frame
    ack_key: bytes = b""  # SURB-ack payload key (client/acks.py)
    cover_until_ns: int = COVER_FOREVER  # cover only for events due before this (0: none; see Pause)
    streams_until: int = EVERY_IDENTITY  # identities from this index on wait for StartStreams
    first: int = 0
    step: int = 1
    share: float = 1.0  # of each identity's rates: 1 when workers split the identities, 1/W otherwise


class Fragment(msgspec.Struct, frozen=True, array_like=True):
    """One real sphinx message to send from `identity` (ref: the coordinator's handle)."""

    ref: int
    identity: int
    recipient_key: bytes
    recipient_provider_key: bytes
    payload: bytes
    packet: bytes = b""  # a whole pre-built packet (a reply through a SURB) instead of a payload
    first_hop: bytes = b""  # ...and its first hop
    route_delay_ns: int = 0  # ...and the delays it was built with (its ack timer)


class SendFragments(msgspec.Struct, tag=True):
    fragments: list[Fragment]


class FragmentsBuilt(msgspec.Struct, tag=True):
    refs: list[int]
    route_delay_ns: list[int] = []  # per ref: sampled delays of its route plus its ack's route


class FragmentsSent(msgspec.Struct, tag=True):
    """Real fragments the sender wrote to the wire, and when (CLOCK_MONOTONIC ns): their ack
    timers start there. `unsent`: real fragments it had to give up on (connection down too long)."""

    refs: list[int]
    sent_ns: list[int]
    unsent: list[int] = []


class FragmentsFailed(msgspec.Struct, tag=True):
    refs: list[int]
    reason: str


class WorkerStats(msgspec.Struct, tag=True):
    worker_index: int
    built: list[int]  # per stream
    build_errors: int
    no_route: int
    build_errors_by_stream: list[int] = []  # the same counts per stream (payload, loop, drop)
    no_route_by_stream: list[int] = []


class ProviderEndpoint(msgspec.Struct, frozen=True, array_like=True):
    key: bytes
    host: str
    port: int


class SenderSetup(msgspec.Struct, tag=True):
    """The sender's identities come flat (a fleet has 100,000): identity i's secret and public keys
    are the 32-byte slots [32i, 32i + 32) of `secrets` and `publics`, and its provider is
    `providers[provider_of[i]]` (`provider_of`: the bytes of an array("H"), native order: both
    ends are on this machine)."""

    secrets: bytes
    publics: bytes
    provider_of: bytes
    providers: list[ProviderEndpoint]
    loop_key: bytes
    ring_fds: list[int]
    trace_path: str | None
    push: bool = True
    fetch_rate: float = 0.0
    # with several senders, this one owns the client's identities first, first + step, ...: its identity j
    # is the client's first + j * step (the rings name them so)
    first: int = 0
    step: int = 1
    coalesce_us: int = 0  # packets due within this after the next go out with it (client/pacer.py); 0: off
    min_gap_us: int = 0  # wake-ups at least this far apart (the older knob); 0: off


class Received(msgspec.Struct, tag=True):
    identity: int
    payloads: list[bytes]


class SenderStats(msgspec.Struct, tag=True):
    sent: list[int]  # per stream, totals
    real_sent: int
    loops_back: int
    loops_sent_by_second: dict[int, int]  # scheduled second (monotonic) -> loops sent, this interval
    loop_back_sent_ns: list[int]  # each loop back since the last report: its scheduled send time...
    loop_back_rtt_ns: list[int]  # ...and its round trip
    lateness_us: list[float]  # a sample of (actual - scheduled) since the last report
    connected: int
    dropped_unconnected: int
    received: int
    unsent_by_stream: list[int] = []  # dropped_unconnected per stream: the provider link was down
    # scheduled second (monotonic) -> [payload, loop, drop, of which real] sent, this interval
    sent_by_second: dict[int, list[int]] = {}
    lateness_seen: int = 0  # packets lateness_us is a uniform sample of (to merge senders' samples)


class SenderConnected(msgspec.Struct, tag=True):
    """How many identities are registered and connected now: sent within CONNECTED_REPORT_S of a
    change (identities joining register in seconds; the once-a-second stats would lag by up to one)."""

    connected: int


class Failover(msgspec.Struct, tag=True):
    """To the sender: register `identities` (global indexes) at this standby provider too. To a
    worker: their loops and acks now end at this provider."""

    identities: list[int]
    provider: ProviderEndpoint


class Stop(msgspec.Struct, tag=True):
    pass


class AddWorkerIdentities(msgspec.Struct, tag=True):
    """Identities joining a running worker, appended to its own (global indexes go on as in its
    setup), flat as in WorkerSetup; `provider_keys` is the whole list now, `rate_of` indexes
    `rate_classes`."""

    public_keys: bytes
    provider_of: bytes
    rate_of: bytes
    provider_keys: list[bytes]
    rate_classes: list[RateClass]


class StartStreams(msgspec.Struct, tag=True):
    """Identities below `until` have streams; those from it on (joined while running, not yet
    registered) have none yet: their events are skipped, their messages wait in the worker."""

    until: int


class AddSenderIdentities(msgspec.Struct, tag=True):
    """Identities joining the running sender, appended to its own, flat as in SenderSetup;
    `providers` is the whole list."""

    secrets: bytes
    publics: bytes
    provider_of: bytes
    providers: list[ProviderEndpoint]


class IdentityCounters(msgspec.Struct, frozen=True, array_like=True, gc=False):
    """One identity's totals since it started, as its sender counts them."""

    identity: int
    sent: list[int]  # per stream
    real_sent: int
    received: int  # packets from its provider (loops included)
    loops_back: int
    rtt_sum_ns: int  # of its loops back


class IdentityStatsRequest(msgspec.Struct, tag=True):
    """Counters of these identities, and of the `top` identities by packets sent."""

    ref: int
    identities: list[int]
    top: int = 0


class IdentityStatsReply(msgspec.Struct, tag=True):
    ref: int
    identities: list[IdentityCounters]
    top: list[IdentityCounters]


class RemoveIdentities(msgspec.Struct, tag=True):
    """Identities leaving (global indexes): no more packets or messages for them. Indexes are
    never reused, so nothing else moves."""

    identities: list[int]


class Pause(msgspec.Struct, tag=True):
    """Stop cover traffic: of the events due at or after `from_ns` (0: from now on) only payload-stream
    events that carry a queued real fragment become packets, so accepted messages still go out (what
    is in the rings goes out too). A load test asks for this ahead of its end, so that the workers,
    which build up to a lookahead in advance, never build cover due after it."""

    from_ns: int = 0


class Fatal(msgspec.Struct, tag=True):
    """A child cannot go on (its setup is unusable); the text is for the user."""

    message: str


class Resume(msgspec.Struct, tag=True):
    """Cover traffic again, from now on (the clock never stopped, so there is no burst)."""


ControlMessage = (
    TopologyUpdate | WorkerSetup | SendFragments | FragmentsBuilt | FragmentsSent | FragmentsFailed
    | WorkerStats | SenderSetup | Received | SenderStats | SenderConnected | Stop | Pause | Resume | Fatal | Failover
    | StartStreams
    | AddWorkerIdentities | AddSenderIdentities | RemoveIdentities | IdentityStatsRequest | IdentityStatsReply
)
_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder(ControlMessage)


def encode(msg) -> bytes:
    body = _encoder.encode(msg)
    return _LEN.pack(len(body)) + body


class ControlDecoder:
    """Incremental decoder for a stream of control frames (the shared length-prefixed reader).

    Both ends are our own processes, so a bad frame is a bug: it raises instead of being handled."""

    def __init__(self) -> None:
        self._reader = LengthPrefixedReader(_LEN.size, MAX_CONTROL_MESSAGE)

    def feed(self, data: bytes) -> list:
        frames, error = self._reader.feed(data)
        if error is not None:
            raise ValueError(f"control channel: {error}")
        return [_decoder.decode(frame) for frame in frames]


class ControlChannel:
    """The asyncio side of a control socket: send messages, iterate over received ones."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        self.reader, self.writer = reader, writer
        self._decoder = ControlDecoder()
        self._ready: list = []

    @classmethod
    async def open(cls, sock: socket.socket) -> ControlChannel:
        reader, writer = await asyncio.open_connection(sock=sock, limit=MAX_CONTROL_MESSAGE)
        return cls(reader, writer)

    def send(self, msg) -> None:
        if not self.writer.is_closing():
            self.writer.write(encode(msg))

    async def recv(self):
        """The next message, or None at EOF (the peer went away; a killed peer with our messages
        still unread resets the connection, which is the same end)."""
        while not self._ready:
            try:
                data = await self.reader.read(1 << 16)
            except ConnectionResetError:
                return None
            if not data:
                return None
            self._ready.extend(self._decoder.feed(data))
        return self._ready.pop(0)

    def close(self) -> None:
        self.writer.close()


class BlockingControl:
    """The worker's side: a plain socket, polled between batches."""

    def __init__(self, sock: socket.socket):
        self.sock = sock
        self._decoder = ControlDecoder()
        self.closed = False

    def send(self, msg) -> None:
        self.sock.setblocking(True)
        self.sock.sendall(encode(msg))

    def poll(self, timeout: float | None = 0.0) -> list:
        """Messages available now (or within timeout). Sets `closed` at EOF."""
        self.sock.settimeout(timeout)
        out = []
        try:
            while True:
                data = self.sock.recv(1 << 16)
                if not data:
                    self.closed = True
                    break
                out.extend(self._decoder.feed(data))
                self.sock.settimeout(0.0)
        except (BlockingIOError, TimeoutError, InterruptedError):
            pass
        except OSError:
            self.closed = True
        return out
