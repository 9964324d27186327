"""The CSPRNG (csrc/csprng.c through loopix.csprng) and the policy that every value an adversary
can observe comes from it (docs/randomness.md)."""

from __future__ import annotations

import ast
import math
import os
import random
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms

from loopix import sphinx
from loopix.client import control
from loopix.client.ring import SLOT_META_SIZE, Ring, slot_size_for
from loopix.client.schedule import PoissonClock, StreamRates
from loopix.csprng import Csprng, require_csprng
from loopix.topology import MixNode, Provider, Topology, choose_mixes
from loopix.wire import provider as pp

SRC = Path(__file__).resolve().parents[1] / "src" / "loopix"


def ks_statistic(samples: list[float], cdf) -> float:
    xs = sorted(samples)
    n = len(xs)
    return max(max(cdf(x) - i / n, (i + 1) / n - cdf(x)) for i, x in enumerate(xs))


def chacha20(key: bytes, n: int, nonce: int = 0) -> bytes:
    """ChaCha20 keystream from block 0 with a 64-bit nonce (libsodium's original ChaCha20), through
    OpenSSL's 16-byte form: 64-bit block counter then the nonce, little-endian."""
    enc = Cipher(algorithms.ChaCha20(key, bytes(8) + nonce.to_bytes(8, "little")), mode=None).encryptor()
    return enc.update(bytes(n))


# -- the stream --

def test_stream_is_chacha20_with_fast_key_erasure():
    """Known answer: a refill hands out the keystream of the current key under nonce 0, and the next
    key is the first 32 bytes of its keystream under nonce 1 (never handed out)."""
    seed = bytes(range(32))
    rng = Csprng(_seed=seed)
    assert rng.bytes(100) == chacha20(seed, 100)
    key2 = chacha20(seed, 32, nonce=1)
    assert rng.bytes(50) == chacha20(key2, 50)
    key3 = chacha20(key2, 32, nonce=1)
    assert rng.bytes(5000) == chacha20(key3, 5000)  # longer than one refill of the typed draws


_PATH_SCRIPT = """
import sys
from loopix.csprng import Csprng
from loopix.sphinx._sphinx_c import lib
lib.lx_rng_set_path(int(sys.argv[1]))
rng = Csprng(_seed=bytes(range(32)))
sys.stdout.write((rng.bytes(5000) + rng.bytes(300) + rng.bytes(40)).hex())
"""

# OPENSSL_ia32cap masks: the SIMD ChaCha20 paths OpenSSL chooses from at run time, each turned off in
# turn (AVX-512F is CPUID(7).EBX bit 16, AVX2 bit 5; SSSE3 is CPUID(1).ECX bit 9, bit 41 of the first
# word), so every path this machine has produces the stream
CPU_MASKS = ["", "~0x0:~0x10000", "~0x0:~0x10020", "~0x20000000000:~0x10020"]


@pytest.mark.parametrize("path", [0, 1, -1])
@pytest.mark.parametrize("mask", CPU_MASKS)
def test_every_chacha20_path_gives_the_same_stream(mask, path):
    """Long draws use libsodium's ChaCha20 (path 0) or OpenSSL's (1), each with SIMD code chosen at
    run time, or whichever measured faster (-1, the default); short ones libsodium's. All give the
    reference keystream."""
    env = {k: v for k, v in os.environ.items() if k != "OPENSSL_ia32cap"}
    if mask:
        env["OPENSSL_ia32cap"] = mask
    out = subprocess.run([sys.executable, "-c", _PATH_SCRIPT, str(path)], env=env, capture_output=True,
                         text=True, timeout=60, check=True).stdout
    key = bytes(range(32))
    expected = b""
    for n in (5000, 300, 40):
        expected += chacha20(key, n)
        key = chacha20(key, 32, nonce=1)
    assert bytes.fromhex(out) == expected


def test_the_faster_implementation_is_chosen_once():
    from loopix.sphinx._sphinx_c import lib

    lib.lx_rng_set_path(-1)
    Csprng().bytes(10)  # short: no measurement
    assert lib.lx_rng_path() == -1
    Csprng().bytes(4096)
    assert lib.lx_rng_path() in (0, 1)


def test_seeded_streams_repeat_and_os_keyed_streams_differ():
    assert Csprng.seeded(5).bytes(64) == Csprng.seeded(5).bytes(64)
    assert Csprng.seeded(5).bytes(64) != Csprng.seeded(6).bytes(64)
    assert Csprng().bytes(64) != Csprng().bytes(64)
    with pytest.raises(ValueError):
        Csprng(_seed=b"short")


def test_a_forked_child_rekeys_from_the_os():
    rng = Csprng()
    rng.bytes(1)  # the state exists before the fork
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        try:
            os.write(write, rng.bytes(32))
        finally:
            os._exit(0)
    os.close(write)
    try:
        child = b""
        while len(child) < 32:
            chunk = os.read(read, 32 - len(child))
            if not chunk:
                break
            child += chunk
    finally:
        os.close(read)
        os.waitpid(pid, 0)
    assert len(child) == 32
    assert child != rng.bytes(32)


def test_uniforms_and_exponentials_have_their_distributions():
    rng = Csprng.seeded(1)
    n = 20_000
    crit = 1.63 / math.sqrt(n)  # KS at alpha = 0.01
    u = rng.uniforms(n)
    assert all(0.0 <= x < 1.0 for x in u)
    assert ks_statistic(u, lambda x: x) < crit
    e = rng.exponentials(n)
    assert ks_statistic(e, lambda x: 1.0 - math.exp(-x)) < crit
    one_at_a_time = [rng.expovariate(4.0) for _ in range(n)]  # crosses block boundaries
    assert ks_statistic(one_at_a_time, lambda x: 1.0 - math.exp(-4.0 * x)) < crit
    singles = [rng.random() for _ in range(n)]
    assert ks_statistic(singles, lambda x: x) < crit


def test_below_is_in_range_and_even():
    rng = Csprng.seeded(2)
    bound, n = 7, 70_000
    draws = rng.below(bound, n)
    assert min(draws) == 0 and max(draws) == bound - 1
    counts = [draws.count(k) for k in range(bound)]
    chi2 = sum((c - n / bound) ** 2 / (n / bound) for c in counts)
    assert chi2 < 16.8  # chi-square, 6 degrees of freedom, alpha = 0.01
    assert rng.below(1, 5) == [0] * 5
    with pytest.raises(ValueError):
        rng.below(0, 1)


def test_choice_randrange_and_fill():
    rng = Csprng.seeded(3)
    seq = ["a", "b", "c"]
    seen = {rng.choice(seq) for _ in range(300)}
    assert seen == set(seq)
    assert {rng.randrange(4) for _ in range(300)} == {0, 1, 2, 3}
    with pytest.raises(IndexError):
        rng.choice([])
    buf = bytearray(64)
    rng.fill(buf, 16, 32)
    assert buf[:16] == bytes(16) and buf[48:] == bytes(16) and buf[16:48] != bytes(32)
    with pytest.raises(ValueError):
        rng.fill(buf, 40, 32)


# -- the policy: no Mersenne Twister reaches a route, a delay or a schedule --

@pytest.mark.parametrize("bad", [random.Random(1), random.SystemRandom(), random])
def test_route_and_schedule_refuse_anything_but_the_csprng(bad):
    layers = [[1, 2], [3, 4]]
    with pytest.raises(TypeError, match="Csprng"):
        choose_mixes(layers, bad)
    topo = Topology([MixNode("127.0.0.1:1", bytes(32), 1)], [Provider("127.0.0.1:2", bytes(32), [])])
    with pytest.raises(TypeError, match="Csprng"):
        topo.choose_route(bad, topo.providers[0])
    with pytest.raises(TypeError, match="Csprng"):
        PoissonClock([StreamRates(1, 1, 1)], 0, rng=bad)
    require_csprng(Csprng(), "x")
    assert isinstance(PoissonClock([StreamRates(1, 1, 1)], 0).rng, Csprng)


# modules that draw a route, a delay, a send time, a pull time or a node's own choice
OBSERVABLE = ["client/worker.py", "client/schedule.py", "client/sender.py", "topology.py", "testnet"]


def test_no_observable_module_imports_random():
    paths = []
    for name in OBSERVABLE:
        p = SRC / name
        paths += sorted(p.rglob("*.py")) if p.is_dir() else [p]
    offenders = []
    for path in paths:
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = [node.module or ""]
            if any(n == "random" or n.startswith("random.") for n in names):
                offenders.append(str(path.relative_to(SRC)))
    assert len(paths) > 10
    assert offenders == []


@pytest.fixture
def no_mersenne(monkeypatch):
    """Every way into the Mersenne Twister raises: constructing a Random (or SystemRandom) and each
    module-level function of `random`."""

    def refuse(*_a, **_k):
        raise AssertionError("random.Random reached an observable value")

    monkeypatch.setattr(random.Random, "__init__", refuse)
    for name in ("random", "uniform", "randint", "randrange", "choice", "choices", "shuffle", "sample",
                 "expovariate", "gauss", "getrandbits", "randbytes", "seed", "betavariate"):
        monkeypatch.setattr(random, name, refuse)
    return refuse


def _worker_setup(n_identities: int = 4, rate: float = 1000.0, cover: str = "drop") -> control.WorkerSetup:
    mixes = [control.MixNodeInfo(layer, sphinx.keypair()[1], bytes([layer]) * 32)
             for layer in (1, 2, 3) for _ in range(2)]
    pk = sphinx.keypair()[1]
    providers = [control.ProviderInfo(pk, b"\x09" * 32, "127.0.0.1", 1)]
    return control.WorkerSetup(
        worker_index=0, workers=1, payload_size=2048, mean_hop_delay_ms=50.0, payload_cover=cover,
        lookahead_ms=50.0, batch_size=64, start_ns=time.monotonic_ns(), loop_key=os.urandom(32), ack_key=os.urandom(32),
        public_keys=b"".join(sphinx.keypair()[1] for _ in range(n_identities)),
        provider_of=bytes(2 * n_identities), rate_of=bytes(2 * n_identities), provider_keys=[pk], rate_classes=[control.RateClass(rate, rate / 4, rate / 4)],
        topology=control.TopologyUpdate(mixes, providers), wire_header=pp.send_header(2048 + 365),
    )


def test_the_worker_builds_without_the_mersenne_twister(no_mersenne):
    """A real worker on a real ring builds packets (routes, delays, schedule, drop payloads) with
    every entry to `random` booby-trapped."""
    from loopix.client.worker import Worker

    with pytest.raises(AssertionError):
        random.Random(1)  # the trap is armed
    setup = _worker_setup()
    ring = Ring.create(256, slot_size_for(len(setup.wire_header) + 32 + sphinx.packet_size(2048)))
    ours, theirs = socket.socketpair()
    try:
        for cover in ("drop", "loop"):
            setup.payload_cover = cover
            worker = Worker(setup, ring, control.BlockingControl(theirs))
            assert isinstance(worker.rng, Csprng) and worker.clock.rng is worker.rng
            assert worker.routes.rng is worker.rng
            built = worker.build_batch(time.monotonic_ns() + 10**9)
            assert built > 0 and worker.build_errors == 0
            ring.release(ring.write_index)
    finally:
        ours.close()
        theirs.close()
        ring.close()


def test_drop_cover_payloads_are_fresh_per_packet():
    """Two drop packets carry different payloads: the final hop's plaintext differs."""
    from loopix.client.worker import Worker

    setup = _worker_setup(n_identities=1, rate=2000.0)
    setup.rate_classes = [control.RateClass(0.0, 0.0, 2000.0)]
    ring = Ring.create(64, slot_size_for(len(setup.wire_header) + 32 + sphinx.packet_size(2048)))
    ours, theirs = socket.socketpair()
    try:
        worker = Worker(setup, ring, control.BlockingControl(theirs))
        worker.build_batch(time.monotonic_ns() + 10**9)
        arena = bytes(worker.batch.messages[: 2 * 2048])
        assert arena[:2048] != arena[2048:] and arena[:32] != bytes(32)
        assert worker.built[2] >= 2
        assert ring.peek(0)[4] + SLOT_META_SIZE <= ring.slot_size
    finally:
        ours.close()
        theirs.close()
        ring.close()
