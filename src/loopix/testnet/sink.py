"""A provider stand-in that registers clients (the real challenge and response) and then discards
everything they send, counting bytes: the far end of the client pipeline benchmarks and tests.

    echo SECRET_HEX | python -m loopix.testnet.sink --port 0   # prints "sink listening on PORT"
Its counters go to stdout as JSON lines once a second (`{"bytes": n, "connections": n,
"registered": n}`), and once more on SIGTERM before it exits.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import struct
import subprocess
import sys

import aiohttp
import orjson
import uvloop

from loopix import sphinx
from loopix.wire import provider as pp
from loopix.wire.b64 import b64url_encode
from loopix.wire.provider.codec import message_reader

from .directory import DirectoryServer

_LEN = struct.Struct(">I")


class SinkCounters:
    def __init__(self) -> None:
        self.bytes = 0
        self.connections = 0
        self.registered = 0

    def as_json(self) -> bytes:
        return orjson.dumps({"bytes": self.bytes, "connections": self.connections, "registered": self.registered})


class SinkProtocol(asyncio.Protocol):
    """Cuts the frames itself (the shared reader, bounded as the provider's): SEND frames are only
    counted, every other frame goes through the real protocol machine, so single and fleet
    registrations both work."""

    def __init__(self, secret: bytes, counters: SinkCounters):
        self.side = pp.ProviderSide(secret)
        self.counters = counters
        self.transport = None
        self.reader = message_reader(pp.PROVIDER_MAX_FRAME)
        self.magic_left = len(pp.MAGIC)

    def connection_made(self, transport) -> None:
        self.transport = transport
        self.counters.connections += 1

    def data_received(self, data: bytes) -> None:
        if self.magic_left:
            head, data = data[: self.magic_left], data[self.magic_left :]
            self.magic_left -= len(head)
            if not self._handle(head):
                return
        frames, error = self.reader.feed(data)
        rest = []  # every frame but SEND, in order, for the protocol machine in one call
        for frame in frames:
            if frame[0] == pp.MsgType.SEND:
                self.counters.bytes += _LEN.size + len(frame)
            else:
                rest.append(_LEN.pack(len(frame)) + frame)
        if rest and not self._handle(b"".join(rest)):
            return
        if error is not None:
            self.transport.write(self.side.send_error(error))
            self.transport.close()

    def _handle(self, data: bytes) -> bool:
        """Answers to what `data` asked, in one write (a fleet registers thousands of keys at once,
        as the provider in testnet/provider.py answers them)."""
        out: list[bytes] = []
        ok = True
        for ev in self.side.receive_data(data):
            if isinstance(ev, pp.ClientHello):
                out.append(self.side.send_challenge())
            elif isinstance(ev, pp.ClientRegistered):
                out.append(self.side.send_registered())
                self.counters.registered += 1
            elif isinstance(ev, pp.FleetClientRegistered):
                out.append(self.side.send_registered_key(ev.client_key))
                self.counters.registered += 1
            elif isinstance(ev, pp.FleetClientRefused):
                out.append(self.side.send_refused_key(ev.client_key, ev.reason))
            elif isinstance(ev, pp.ProtocolError):
                out.append(self.side.send_error(ev.reason))
                ok = False
                break
        if out:
            self.transport.write(b"".join(out))
        if not ok:
            self.transport.close()
        return ok

    def connection_lost(self, exc) -> None:
        self.counters.connections -= 1


async def serve(host: str, port: int, secret: bytes, report_interval: float = 1.0) -> None:
    counters = SinkCounters()
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: SinkProtocol(secret, counters), host, port)
    print(f"sink listening on {server.sockets[0].getsockname()[1]}", flush=True)
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    while not stop.is_set():
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), report_interval)
        sys.stdout.buffer.write(counters.as_json() + b"\n")
        sys.stdout.flush()
    server.close()


class SinkNet:
    """A directory on 127.0.0.1 listing 3×2 made-up mixnodes and one provider: a sink process.

    For benchmarks and tests of the client alone: packets go nowhere past the provider."""

    def __init__(self) -> None:
        self.directory: DirectoryServer | None = None
        self.sink: subprocess.Popen | None = None
        self.sink_port = 0
        self.provider_secret, self.provider_public = sphinx.keypair()
        self._last = {"bytes": 0}

    async def __aenter__(self) -> SinkNet:
        self.sink = subprocess.Popen(
            [sys.executable, "-m", "loopix.testnet.sink", "--port", "0"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
        )
        self.sink.stdin.write(self.provider_secret.hex() + "\n")
        self.sink.stdin.close()
        line = await asyncio.to_thread(self.sink.stdout.readline)
        self.sink_port = int(line.split()[-1])
        asyncio.get_running_loop().run_in_executor(None, self._read_counters)
        self.directory = await DirectoryServer("127.0.0.1", 0, expiry_s=3600).start()
        async with aiohttp.ClientSession() as http:
            for layer in (1, 2, 3):
                for i in range(2):
                    _, pk = sphinx.keypair()
                    await http.post(f"{self.directory.url}/api/presence/mixnodes", json={
                        "host": f"127.0.0.1:{20000 + layer * 10 + i}", "pubKey": b64url_encode(pk), "layer": layer})
            await http.post(f"{self.directory.url}/api/presence/mixproviders", json={
                "host": f"127.0.0.1:{self.sink_port}", "pubKey": b64url_encode(self.provider_public),
                "registeredClients": []})
        return self

    def _read_counters(self) -> None:
        for line in self.sink.stdout:
            with contextlib.suppress(ValueError):
                self._last = orjson.loads(line)

    @property
    def topology_url(self) -> str:
        return f"{self.directory.url}/api/presence/topology"

    def sink_bytes(self) -> int:
        return self._last["bytes"]

    async def __aexit__(self, *exc) -> None:
        if self.directory is not None:
            await self.directory.close()
        if self.sink is not None:
            self.sink.terminate()
            self.sink.wait(10)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="a discarding provider for benchmarks")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=0)
    args = ap.parse_args(argv)
    # the secret comes on stdin, never on the command line where `ps` would show it
    secret = bytes.fromhex(sys.stdin.readline().strip())
    if args.host not in ("127.0.0.1", "::1", "localhost"):
        ap.error("the sink listens on loopback only")
    uvloop.run(serve(args.host, args.port, secret))
    return 0


if __name__ == "__main__":
    sys.exit(main())
