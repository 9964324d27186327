"""Coverage-guided fuzz targets for the C core and the parsers that take bytes from the network.

    python tests/fuzz/fuzz.py TARGET [libFuzzer flags] CORPUS_DIR...   # fuzz one target (atheris)
    python tests/fuzz/fuzz.py --replay [TARGET...]                     # run the kept corpus once
    python tests/fuzz/fuzz.py --seed                                   # write the seed inputs

scripts/fuzz runs the targets against a build instrumented for coverage and AddressSanitizer;
scripts/sanitize replays the corpus against the ASan + UBSan build. A target fails (and the fuzzer
keeps the input) on a crash, a sanitizer report, or an exception that is not the documented error.

Targets:
  process    raw bytes of every packet size through process_packet / lx_process_packet / batch
  roundtrip  a packet built from fuzzed parameters (C and pure must agree), a fuzzed byte flip,
             then every hop: the deep parsing paths behind a valid MAC
  batch      raw lx_packet_spec memory and buffer sizes straight into lx_build_batch
  keys       X25519: ladder vs libsodium, the per-key tables vs the ladder, the subgroup check, the
             product-of-scalars derivation
  topology   loopix.topology.parse_topology
  pem        loopix.keys.pem_decode and the base64url key decoder
  provider   provider protocol frames in every state (fresh, after the magic, challenged, registered
             single, registered fleet), cut at fuzzed points, answered as the provider does;
             then the same bytes at the client side
  framing    mixnode framing: the Nym frame decoder fed in fuzzed cuts
  directory  directory request bodies (presence, metrics) decoded and handed to a registry that
             authenticates presence: only BadRequest (and its 403/409 kinds) may come out
  socketapi  socket API JSON and binary requests, and the TCP frame decoder in fuzzed cuts
  plan       the worker's bulk draws (lx_clock_draw, lx_draw_routes) on fuzzed shapes and rates, and
             the sender's ring scan (lx_take_due) over fuzzed ring memory
"""

from __future__ import annotations

import contextlib
import os
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
CORPUS = HERE / "corpus"

try:  # atheris is only needed to fuzz; --replay runs on the plain interpreter
    import atheris
except ImportError:  # pragma: no cover - depends on the venv
    atheris = None


def _instrumented_imports():
    if atheris is not None and "--replay" not in sys.argv and "--seed" not in sys.argv:
        return atheris.instrument_imports()
    import contextlib

    return contextlib.nullcontext()


with _instrumented_imports():
    from loopix import sphinx
    from loopix.sphinx import _sphinx_c, pure

    try:
        from loopix import topology as _topology
    except ImportError:  # pragma: no cover - written by another part of the project
        _topology = None
    try:
        from loopix import keys as _keys
    except ImportError:  # pragma: no cover
        _keys = None
    from loopix.testnet import directory as _directory
    from loopix.testnet import engine as _engine
    from loopix.wire import provider as _pp
    from loopix.wire import socket_api as _sapi
    from loopix.wire.errors import ProtocolError as _FramingError
    from loopix.wire.framing import FrameDecoder as _FrameDecoder

ffi, lib = _sphinx_c.ffi, _sphinx_c.lib

# Fixed node keys so that the kept corpus of valid packets stays valid from run to run.
SECRETS = [bytes([0x11 * (i + 1)]) * 32 for i in range(5)]
PUBLICS = [sphinx.public_key(s) for s in SECRETS]
ROUTE = [sphinx.Hop(public_key=pk, address=bytes([0xA0 + i]) * 32) for i, pk in enumerate(PUBLICS)]
SIZES = sorted(sphinx.PACKET_SIZES.values())


class Reader:
    """Consumes the fuzz input front to back; past the end it yields zeros (as FuzzedDataProvider
    does, without depending on atheris)."""

    def __init__(self, data: bytes):
        self.data, self.pos = data, 0

    def take(self, n: int) -> bytes:
        out = self.data[self.pos : self.pos + n]
        self.pos += len(out)
        return out + bytes(n - len(out))

    def int(self, lo: int, hi: int) -> int:
        span = hi - lo + 1
        nbytes = (span.bit_length() + 7) // 8
        return lo + int.from_bytes(self.take(nbytes), "little") % span

    def rest(self) -> bytes:
        out = self.data[self.pos :]
        self.pos = len(self.data)
        return out


# ---- targets ----

def t_process(data: bytes) -> None:
    if not data:
        return
    # any length through the Python API: only the documented errors
    with contextlib.suppress(sphinx.SphinxError):
        sphinx.process_packet(SECRETS[0], data[1:])
    size = SIZES[data[0] % len(SIZES)]
    pkt = (data[1:] + bytes(size))[:size]
    key = SECRETS[data[0] // len(SIZES) % len(SECRETS)]
    try:
        res = sphinx.process_packet(key, pkt)
    except sphinx.SphinxError:
        res = None
    # the C entry point with buffers of exactly the stated sizes (ASan sees any overrun)
    out = bytearray(size)
    cres = ffi.new("lx_processed *")
    rc = lib.lx_process_packet(key, ffi.from_buffer(pkt), size, ffi.from_buffer(out), size, cres)
    assert (rc == 0) == (res is not None)
    if rc == 0:
        assert cres.message_offset + cres.message_len <= size
    # an output buffer one byte short is refused, not overrun
    short = bytearray(size - 1)
    assert lib.lx_process_packet(key, ffi.from_buffer(pkt), size, ffi.from_buffer(short), size - 1, cres) < 0
    # the same packet three times through the batch path
    count = 1 + data[0] % 3
    outs = bytearray(size * count)
    results = ffi.new("lx_processed[]", count)
    ok = lib.lx_process_batch(key, ffi.from_buffer(pkt * count), count, size, ffi.from_buffer(outs), len(outs), results)
    assert ok == (count if rc == 0 else 0)


def t_roundtrip(data: bytes) -> None:
    r = Reader(data)
    n = r.int(1, 5)
    payload_size = sphinx.PAYLOAD_SIZES[r.int(0, len(sphinx.PAYLOAD_SIZES) - 1)]
    msg = r.take(r.int(0, min(payload_size, 600)))
    delays = [int.from_bytes(r.take(8), "little") for _ in range(n)]
    dest, ident, eph = r.take(32), r.take(16), r.take(32)
    flip_at, flip_bits, differential = r.int(0, 40000), r.take(1)[0], r.take(1)[0]
    args = dict(route=ROUTE[:n], destination=dest, message=msg, delays_ns=delays, identifier=ident,
                payload_size=payload_size, ephemeral_secret=eph)
    pkt = sphinx.build_packet(**args)
    if differential % 8 == 0:  # the pure build is slow: compare on one input in eight
        assert pkt == pure.build_packet(**args)
    if flip_bits:
        bad = bytearray(pkt)
        bad[flip_at % len(pkt)] ^= flip_bits
        pkt = bytes(bad)
    for hop in range(n):
        try:
            res = sphinx.process_packet(SECRETS[hop], pkt)
        except sphinx.SphinxError:
            assert flip_bits, "an untouched packet must unwrap"
            return
        if hop < n - 1:
            assert isinstance(res, sphinx.Forward)
            assert res.delay_ns == delays[hop] or flip_bits
            pkt = res.packet
        else:
            assert isinstance(res, sphinx.Final)
            if not flip_bits:
                assert (res.destination, res.identifier, res.message) == (dest, ident, msg)


SPEC_SIZE = ffi.sizeof("lx_packet_spec")


def t_batch(data: bytes) -> None:
    r = Reader(data)
    count = r.int(0, 3)
    payload_size = [21, 2048, 1000][r.int(0, 2)]  # 1000 is no Nym size: refused
    psize = lib.lx_packet_size(payload_size)
    arena = r.take(r.int(0, 2300))
    stride = max(psize, 1) + r.int(0, 3)
    out_len = max(count * stride - r.int(0, 2), 0)
    specs = ffi.new("lx_packet_spec[]", max(count, 1))
    raw = r.take(SPEC_SIZE * count)
    ffi.memmove(specs, raw, len(raw))
    for i in range(count):  # keep the message pointer arithmetic interesting but in range often
        if specs[i].message_offset > len(arena) and r.take(1)[0] & 1:
            specs[i].message_offset %= len(arena) + 1
        if r.take(1)[0] & 1:
            specs[i].message_len %= payload_size + 2
        if r.take(1)[0] & 1:
            specs[i].n_hops %= 7
    out = bytearray(out_len)
    status = ffi.new("int32_t[]", max(count, 1))
    msgs = ffi.from_buffer(arena) if arena else ffi.NULL
    n = lib.lx_build_batch(specs, count, msgs, len(arena), payload_size, ffi.from_buffer(out),
                           out_len, stride, status)
    assert n <= count
    if n >= 0:
        for i in range(count):
            if status[i] != 0:  # a failed slot is zeroed
                assert not any(out[i * stride : i * stride + psize])


_RATES = [0.0, 1.0, 1e6, -1.0, float("nan"), float("inf"), 1e-300]


def t_plan(data: bytes) -> None:
    r = Reader(data)
    rng = ffi.new("lx_rng *")
    lib.lx_rng_seed(rng, r.take(32))
    # the Poisson clock
    clock = ffi.new("lx_clock *")
    clock.total_rate = _RATES[r.int(0, len(_RATES) - 1)]
    n_entries = r.int(0, 7)
    cumulative = ffi.new("double[]", [_RATES[r.int(0, len(_RATES) - 1)] + k for k in range(max(n_entries, 1))])
    if r.int(0, 1):
        clock.cumulative, clock.n_entries = cumulative, n_entries
    else:
        clock.n_identities = r.int(0, 3)
        clock.stream_cum = [_RATES[r.int(0, len(_RATES) - 1)] for _ in range(3)]
    count = r.int(0, 300)
    times = ffi.new("uint64_t[]", max(count, 1))
    ids = ffi.new("uint32_t[]", max(count, 1))
    streams = ffi.new("uint8_t[]", max(count, 1))
    if lib.lx_clock_draw(clock, rng, count, times, ids, streams) == 0:
        for i in range(count):
            assert streams[i] < 3 and (i == 0 or times[i] >= times[i - 1])
            if clock.cumulative != ffi.NULL:
                assert 3 * ids[i] + streams[i] < n_entries
            else:
                assert ids[i] < clock.n_identities
    # routes and delays
    table = ffi.new("lx_route_table *")
    table.n_layers = r.int(0, 6)
    keep = []
    for layer in range(5):
        size = r.int(0, 3)
        records = ffi.new("uint8_t[]", r.take(64 * max(size, 1)))
        keep.append(records)
        table.layer_size[layer] = size
        table.layer_hops[layer] = records if r.int(0, 7) else ffi.NULL
    n_providers = r.int(0, 3)
    providers = ffi.new("uint8_t[]", r.take(64 * max(n_providers, 1)))
    table.n_providers, table.provider_hops = n_providers, providers
    table.mean_delay_ns = _RATES[r.int(0, len(_RATES) - 1)] * 1e6
    n = r.int(0, 40)
    specs = ffi.new("lx_packet_spec[]", max(n, 1))
    last = ffi.new("uint32_t[]", [[0, 1, 5, 0xFFFFFFFF][r.int(0, 3)] for _ in range(max(n, 1))])
    if lib.lx_draw_routes(rng, table, specs, n, last) == 0:
        for i in range(n):
            assert specs[i].n_hops == table.n_layers + 1 and specs[i].hops[table.n_layers].delay_ns == 0
    # the sender's ring scan over raw ring memory
    slots, slot_size = r.int(1, 8), [16, 32, 64, 96][r.int(0, 3)]
    ring = bytearray(r.take(192 + slots * slot_size))
    n_ids, n_links = r.int(0, 4), r.int(0, 3)
    ready = ffi.new("uint8_t[]", r.take(max(n_ids, 1)))
    link_of = ffi.new("uint32_t[]", [r.int(0, 3) for _ in range(max(n_ids, 1))])
    cap = r.int(0, 200)
    out = ffi.new("uint8_t[]", max(n_links * cap, 1))
    out_len = ffi.new("uint64_t[]", max(n_links, 1))
    max_due = r.int(0, 10)
    due = ffi.new("lx_due[]", max(max_due, 1))
    ctx = ffi.new("lx_take_ctx *")
    ring_c = ffi.from_buffer(ring)
    ctx.ring, ctx.slots, ctx.slot_size, ctx.n_identities = ring_c, slots, slot_size, n_ids
    ctx.ready, ctx.link_of, ctx.n_links, ctx.out, ctx.link_cap = ready, link_of, n_links, out, cap
    ctx.out_len, ctx.due, ctx.max_due = out_len, due, max_due
    read = r.int(0, 20)
    write = read + r.int(0, 10)
    taken = lib.lx_take_due(ctx, read, write, r.int(0, 1 << 63), r.int(0, 12))
    if taken >= 0:
        assert taken <= max_due and read <= ctx.new_read <= write
        assert all(out_len[k] <= cap for k in range(n_links))
    ffi.release(ring_c)


def t_keys(data: bytes) -> None:
    r = Reader(data)
    k, u, bits = r.take(32), r.take(32), r.int(0, 300)
    a = ffi.new("uint8_t[32]")
    b = ffi.new("unsigned char[32]")
    rc = lib.lx_x25519(a, k, u)
    assert rc == lib.crypto_scalarmult(b, k, u)
    if rc == 0:
        assert bytes(a) == bytes(b)
    rc = lib.lx_x25519_ladder(a, k, u, bits)
    assert 1 <= bits <= 256 or rc == -1
    # the per-key table path: the same bytes as the ladder, or a refusal for keys it cannot take
    c = ffi.new("uint8_t[32]")
    if lib.lx_x25519_keyed(c, k, u) == 0:
        assert lib.lx_check_public_key(u) == 1
        lib.lx_x25519_ladder(a, k, u, 255)
        assert bytes(c) == bytes(a)
    else:
        assert lib.lx_check_public_key(u) != 1 or k[31] & 0x80
    if r.take(1)[0] == 0xFF:
        lib.lx_key_cache_clear()
    if sphinx.check_public_key(u):  # a subgroup key: one multiplication by the product equals the fold
        x = r.take(32)
        out = ffi.new("uint8_t[576]")
        assert lib.lx_derive_hop_keys(x, PUBLICS[0] + u, 2, out) == 0
        s1 = pure.x25519(pure.expand_secret(pure.x25519(x, PUBLICS[0]))[224:256], pure.x25519(x, u))
        assert bytes(out[288:576]) == pure.expand_secret(s1)


def t_topology(data: bytes) -> None:
    if _topology is None:
        return
    with contextlib.suppress(_topology.TopologyError):
        _topology.parse_topology(data)


def t_pem(data: bytes) -> None:
    if _keys is None:
        return
    text = data.decode("utf-8", "replace")
    with contextlib.suppress(_keys.KeyFileError):
        _keys.pem_decode(text, "SPHINX CURVE25519 PUBLIC KEY", source="fuzz", size=32)
    with contextlib.suppress(ValueError):
        _keys.key_from_b64url(text)


# the provider protocol: fixed keys so that the kept corpus means the same thing from run to run
PROVIDER_SK = SECRETS[3]
PROVIDER_PK = PUBLICS[3]
FLEET_SECRETS = SECRETS[:3]


def _answer(provider, events) -> bytes:
    """What the provider's session writes for the events that need an answer."""
    out = b""
    for e in events:
        if isinstance(e, _pp.ClientHello):
            out += provider.send_challenge()
        elif isinstance(e, _pp.ClientRegistered):
            out += provider.send_registered()
        elif isinstance(e, _pp.FleetClientRegistered):
            out += provider.send_registered_key(e.client_key)
        elif isinstance(e, _pp.FleetClientRefused):
            out += provider.send_refused_key(e.client_key, e.reason)
        elif isinstance(e, _pp.PullRequested):
            out += provider.send_pull_answer(e.client_key, [(1, b"m")])
        elif isinstance(e, _pp.ClientUnregistered):
            out += provider.send_unregistered(e.client_keys)
        elif isinstance(e, _pp.ProtocolError):
            out += provider.send_error(e.reason)
            break
    return out


_PROVIDER_EVENTS = (
    _pp.ClientHello, _pp.ClientRegistered, _pp.FleetClientRegistered, _pp.FleetClientRefused,
    _pp.PacketSubmitted, _pp.AckReceived, _pp.PullRequested, _pp.ProtocolError,
    _pp.ClientUnregistered,
)


def _provider_in_state(state: int):
    """(provider, client or None) driven by a real client to state 0..4."""
    provider = _pp.ProviderSide(PROVIDER_SK, pull_slots=4, max_message_size=64, max_fleet_keys=8)
    if state == 0:
        return provider, None
    if state == 1:
        provider.receive_data(_pp.MAGIC)
        return provider, None
    fleet = state == 4
    client = _pp.FleetClientSide(PROVIDER_PK) if fleet else _pp.ClientSide(SECRETS[4], PROVIDER_PK)
    client.receive_data(_answer(provider, provider.receive_data(client.send_hello())))
    if state == 2:
        return provider, client
    reg = client.send_register_many(FLEET_SECRETS) if fleet else client.send_register()
    client.receive_data(_answer(provider, provider.receive_data(reg)))
    return provider, client


def t_provider(data: bytes) -> None:
    if not data:
        return
    r = Reader(data)
    provider, client = _provider_in_state(r.int(0, 4))
    ncuts = r.int(0, 8)
    cuts = [r.int(1, 64) for _ in range(ncuts)]
    rest = r.rest()
    pos = 0
    for cut in [*cuts, len(rest)]:
        chunk = rest[pos : pos + cut]
        pos += cut
        events = provider.receive_data(chunk)
        assert all(isinstance(e, _PROVIDER_EVENTS) for e in events), events
        if provider.closed:
            events = [e for e in events if isinstance(e, _pp.ProtocolError)][:1]
        _answer(provider, events)
    if client is not None:  # the same bytes from a provider: only typed results at the client
        for event in client.receive_data(rest):
            assert not isinstance(event, Exception) or isinstance(event, _pp.ProtocolError)


def t_framing(data: bytes) -> None:
    if not data:
        return
    r = Reader(data)
    cuts = [r.int(1, 3000) for _ in range(r.int(0, 6))]
    rest = r.rest()
    decoder = _FrameDecoder()
    pos, failed = 0, False
    for cut in [*cuts, len(rest)]:
        for frame in decoder.feed(rest[pos : pos + cut]):
            assert not failed, "a frame after the decoder failed"
            if isinstance(frame, _FramingError):
                failed = True
            else:
                assert len(frame.packet) in sphinx.PACKET_SIZES.values()
        pos += cut


def t_node(data: bytes) -> None:
    """The node's C engine on a hostile link: frames in any chunking, then steps and a release.
    Every packet taken is forwarded, held, handed back as final or dropped under a reason, and
    every frame it hands back is a valid one."""
    r = Reader(data)
    engine = _engine.ForwardEngine(SECRETS[0], batch=r.int(1, 64), replay_capacity=r.int(1, 8),
                                   max_queue=r.int(0, 8), max_delay=0.01, drop_rate=r.int(0, 2) / 2,
                                   seed=bytes(32))  # fmt: skip
    link = _engine.LinkFrames(engine)
    cuts = [r.int(1, 3000) for _ in range(r.int(0, 6))]
    rest = r.rest()
    pos, taken = 0, 0
    for cut in [*cuts, len(rest)]:
        frames, full, _error = link.feed(rest[pos : pos + cut], 0.0)
        taken += frames - full
        pos += cut
    assert engine.backlog == taken
    now = 0.0
    while engine.backlog:
        held = engine.held
        out = engine.step(now)
        dropped = sum(n for _reason, n in out.drops)
        assert out.processed == out.forwarded + dropped + len(out.finals) + engine.held - held
        _check_frames(out)
        now += 0.001
    held = engine.held
    out = engine.release(now + 1.0)
    assert out.processed == out.forwarded == held and engine.held == 0
    _check_frames(out)


def _check_frames(out) -> None:
    assert out.forwarded == sum(count for _a, _n, count, _f in out.groups)
    for _address, length, count, frames in out.groups:
        decoded = _FrameDecoder().feed(frames)
        assert len(decoded) == count and all(len(f.packet) == length for f in decoded)


_DIRECTORY_KEY = None


def _directory_registry():
    import nacl.signing

    global _DIRECTORY_KEY
    if _DIRECTORY_KEY is None:
        _DIRECTORY_KEY = nacl.signing.SigningKey(bytes(32))
    allowed = frozenset({bytes(nacl.signing.SigningKey(bytes([1]) * 32).verify_key)})
    auth = _directory.PresenceAuth(allowed, _DIRECTORY_KEY)
    return _directory.Registry(auth=auth, wall_ns=lambda: 1_700_000_000 * 10**9)


def t_directory(data: bytes) -> None:
    if not data:
        return
    kind, body = data[0] % 3, data[1:]
    registry = _directory_registry()
    signature = "A" * 86 if data[0] & 0x80 else None
    try:
        if kind == 0:
            req = _directory.decode_body(body, _directory.MixPresence, "mix")
            registry.announce_mix(req, body, signature)
        elif kind == 1:
            req = _directory.decode_body(body, _directory.ProviderPresence, "provider")
            registry.announce_provider(req, body, signature)
        else:
            raw = _directory.decode_body(body, dict, "metrics")
            with contextlib.suppress(_directory.msgspec.ValidationError):  # the handler: a 400
                registry.add_report(raw, body, signature)
    except _directory.BadRequest:
        pass
    registry.topology()
    registry.reports()


def t_socketapi(data: bytes) -> None:
    if not data:
        return
    for decode in (_sapi.decode_json_request, _sapi.decode_binary_request):
        with contextlib.suppress(UnicodeDecodeError):  # JSON frames are text on the websocket
            out = decode(data if decode is _sapi.decode_binary_request else data.decode("utf-8"))
            assert isinstance(out, _sapi.Request | _sapi.ErrorResponse)  # every request kind, or an error
    _sapi.decode_request(data)
    r = Reader(data)
    cuts = [r.int(1, 200) for _ in range(r.int(0, 6))]
    rest = r.rest()
    decoder = _sapi.TcpFrameDecoder(_sapi.max_frame_size(1024))
    pos = 0
    for cut in [*cuts, len(rest)]:
        for frame in decoder.feed(rest[pos : pos + cut]):
            if not isinstance(frame, _sapi.FramingError):
                _sapi.decode_request(frame, max_message_size=1024)
        pos += cut


TARGETS = {
    "process": t_process,
    "roundtrip": t_roundtrip,
    "batch": t_batch,
    "keys": t_keys,
    "topology": t_topology,
    "pem": t_pem,
    "provider": t_provider,
    "framing": t_framing,
    "node": t_node,
    "directory": t_directory,
    "socketapi": t_socketapi,
    "plan": t_plan,
}


# ---- seeds and replay ----

def seeds() -> dict[str, list[bytes]]:
    out: dict[str, list[bytes]] = {t: [] for t in TARGETS}
    for n in range(1, 6):
        for i, ps in enumerate(sphinx.PAYLOAD_SIZES[:2]):
            pkt = sphinx.build_packet(ROUTE[:n], bytes(32), b"seed" * (n + i), [n] * n, bytes(16), ps,
                                      bytes([n, i]) * 16)
            out["process"].append(bytes([SIZES.index(len(pkt))]) + pkt)
    out["process"].append(b"\x01" + bytes(2413))
    for n in range(1, 6):
        out["roundtrip"].append(bytes([n - 1, 1, 5]) + b"hello" + bytes(100) + bytes([0, 0, 8]))
        out["roundtrip"].append(bytes([n - 1, 0, 3]) + b"abc" + bytes(100) + bytes([77, 1, 1]))
    spec = ffi.new("lx_packet_spec *")
    spec.n_hops = 2
    spec.message_len = 3
    for i in range(2):
        ffi.memmove(spec.hops[i].public_key, PUBLICS[i], 32)
    raw = bytes(ffi.buffer(spec))
    out["batch"].append(bytes([1, 0]) + (10).to_bytes(2, "little") + b"m" * 10 + bytes([0, 0]) + raw)
    out["keys"].append(bytes(range(32)) + PUBLICS[0] + bytes([253, 0]) + bytes(64))
    out["keys"].append(bytes(32) + bytes([1]) + bytes(31) + bytes([0, 1]))
    if _topology is not None:
        node = {"host": "127.0.0.1:1789", "pubKey": _keys.key_to_b64url(PUBLICS[0]) if _keys else "", "layer": 1}
        import json

        out["topology"].append(json.dumps({"mixNodes": [node], "mixProviderNodes": [
            {"host": "127.0.0.1:1790", "pubKey": node["pubKey"], "registeredClients": []}]}).encode())
        out["topology"].append(b'{"MixNodes": [], "MixProviderNodes": []}')
    if _keys is not None:
        out["pem"].append(_keys.pem_encode("SPHINX CURVE25519 PUBLIC KEY", PUBLICS[0]).encode())
        out["pem"].append(_keys.key_to_b64url(PUBLICS[0]).encode())
    for state in range(5):
        out["provider"].append(bytes([state, 0]) + _pp.MAGIC)
        out["provider"].append(bytes([state, 2, 3, 7]) + bytes([0, 0, 0, 1, 4]) * 3)
    # UNREGISTER on the fleet: two of its keys and a stranger, then a body that is not keys
    unregister = b"".join([*PUBLICS[:2], PUBLICS[4]])
    out["provider"].append(bytes([4, 0]) + (1 + len(unregister)).to_bytes(4, "big") + b"\x0f" + unregister
                           + bytes([0, 0, 0, 3, 15, 0, 0]))
    pkt = sphinx.build_packet(ROUTE[:2], bytes(32), b"f", [0, 0])
    from loopix.wire.framing import frame_header

    out["framing"].append(bytes([0]) + frame_header(len(pkt)) + pkt)
    out["framing"].append(bytes([2, 5, 0, 9, 0]) + frame_header(len(pkt)) + pkt[:100])
    delayed = sphinx.build_packet(ROUTE[:2], bytes(32), b"d", [5_000_000, 0])
    final = sphinx.build_packet(ROUTE[:1], bytes(32), b"e", [0])
    framed = [frame_header(len(p)) + p for p in (pkt, pkt, delayed, final)]
    out["node"].append(bytes([8, 2, 4, 0, 0]) + b"".join(framed))
    out["node"].append(bytes([64, 1, 0, 2, 2, 7, 100]) + b"".join(framed))
    ident = _keys.key_to_b64url(PUBLICS[0]) if _keys else ""
    out["directory"].append(b"\x00" + f'{{"host":"127.0.0.1:1","pubKey":"{ident}","layer":1}}'.encode())
    out["directory"].append(b"\x81" + f'{{"host":"127.0.0.1:2","pubKey":"{ident}","identityKey":"{ident}","timestamp":1}}'.encode())
    out["directory"].append(b"\x02" + f'{{"pubKey":"{ident}","sent":{{"a":1}},"received":3}}'.encode())
    out["directory"].append(b"\x02" + b'{"a":' + b"[" * 5000)
    out["socketapi"].append(b'{"type":"selfAddress"}')
    out["socketapi"].append(b'{"type":"send","message":"hi","recipient":"x"}')
    out["socketapi"].append(b"\x01")
    out["socketapi"].append(b"\x00" + bytes(64) + (2).to_bytes(8, "big") + b"hi")
    out["plan"].append(bytes(range(32)) + bytes([2, 3, 1, 200, 0, 3, 2, 2, 1, 1, 1, 0, 0]) + bytes(400))
    out["plan"].append(bytes(32) + bytes([1, 1]) + bytes(600))
    return out


def write_seeds() -> None:
    import hashlib

    for target, inputs in seeds().items():
        d = CORPUS / target
        d.mkdir(parents=True, exist_ok=True)
        for data in inputs:
            (d / hashlib.sha1(data).hexdigest()).write_bytes(data)


def replay(names: list[str]) -> int:
    total = 0
    for name in names or list(TARGETS):
        fn = TARGETS[name]
        files = sorted((CORPUS / name).glob("*")) if (CORPUS / name).is_dir() else []
        for f in files:
            try:
                fn(f.read_bytes())
            except Exception:
                print(f"fuzz replay: {name} fails on {f}", file=sys.stderr)
                raise
        total += len(files)
        print(f"fuzz replay: {name}: {len(files)} inputs ok")
    return total


def main() -> None:
    args = sys.argv[1:]
    if args and args[0] == "--replay":
        replay(args[1:])
        return
    if args and args[0] == "--seed":
        write_seeds()
        return
    if args and args[0] in TARGETS:
        name, flags = args[0], args[1:]
        os.environ["LOOPIX_FUZZ_TARGET"] = name  # for the child that -merge=1 starts
    elif os.environ.get("LOOPIX_FUZZ_TARGET") in TARGETS:
        name, flags = os.environ["LOOPIX_FUZZ_TARGET"], args
    else:
        sys.exit(f"usage: {sys.argv[0]} TARGET|--replay|--seed ...; targets: {', '.join(TARGETS)}")
    if atheris is None:
        sys.exit("fuzz: atheris is not installed in this interpreter (scripts/fuzz sets it up)")
    # libFuzzer's -merge=1 re-runs argv[0] through the shell: scripts/fuzz gives an executable for it
    self_cmd = os.environ.get("LOOPIX_FUZZ_SELF", sys.argv[0])
    atheris.Setup([self_cmd, *flags], TARGETS[name])
    atheris.Fuzz()


if __name__ == "__main__":
    os.environ.setdefault("PYTHONHASHSEED", "0")
    main()
