"""Many identities for one client process tree: ephemeral ones for a load test, or every identity
initialised under a directory (`loopix-client run --fleet DIR`)."""

from __future__ import annotations

import contextlib
from pathlib import Path

from loopix import config as cfg
from loopix.client.coordinator import ClientError, Identity
from loopix.keys import generate_keypair, load_keypair
from loopix.wire.b64 import b64url_decode


def ephemeral_identities(n: int, payload_rate: float, loop_rate: float, drop_rate: float) -> list[Identity]:
    """n fresh key pairs; the coordinator spreads them over the providers round robin."""
    if n < 1:
        raise ClientError("--identities must be at least 1")
    return [Identity(generate_keypair(), None, payload_rate, loop_rate, drop_rate) for _ in range(n)]


class Fleet:
    """Identities initialised under `root/clients/*/config` (a LOOPIX_HOME of their own), with the
    settings they must share to run in one process tree."""

    def __init__(self, root: str | Path):
        self.root = Path(root)
        base = self.root / "clients"
        if not base.is_dir():
            raise ClientError(f"{self.root}: no clients/ directory (create identities with "
                              f"LOOPIX_HOME={self.root} loopix-client init --id NAME)")
        self.names: list[str] = []
        self.identities: list[Identity] = []
        self.configs: list[cfg.ClientConfig] = []
        for conf_dir in sorted(p for p in base.glob("*/config") if (p / cfg.CONFIG_FILE).exists()):
            conf = cfg.load(conf_dir / cfg.CONFIG_FILE)
            keys = load_keypair(conf_dir, private_name=conf.client.priv_key_file,
                                public_name=conf.client.pub_key_file)
            t = conf.traffic
            provider = b64url_decode(conf.client.provider_id) if conf.client.provider_id else None
            self.names.append(conf_dir.parent.name)
            self.configs.append(conf)
            self.identities.append(Identity(keys, provider, t.payload_rate, t.loop_rate, t.drop_rate))
        if not self.identities:
            raise ClientError(f"{base}: no initialised identity found")
        self._check_shared()

    def _check_shared(self) -> None:
        first = self.configs[0]
        shared = {
            "directory": lambda c: c.client.directory_server_topology,
            "packet size": lambda c: c.traffic.packet_size,
            "mean hop delay": lambda c: c.traffic.mean_hop_delay_ms,
            "payload stream cover": lambda c: c.traffic.payload_stream_cover,
        }
        for what, get in shared.items():
            for name, conf in zip(self.names, self.configs, strict=True):
                if get(conf) != get(first):
                    raise ClientError(f"fleet {self.root}: {name} has {what} {get(conf)!r} but "
                                      f"{self.names[0]} has {get(first)!r}; a fleet shares it")

    @property
    def config(self) -> cfg.ClientConfig:
        """The settings every identity shares (those of the first)."""
        return self.configs[0]


def run_fleet(fleet: Fleet, *, trace_path: str | None = None, workers: int | None = None,
              directory_url: str | None = None, status_interval_s: float = 5.0) -> int:
    """`loopix-client run --fleet DIR`: every identity of the fleet in one client, until Ctrl-C."""
    import asyncio
    import signal

    import uvloop

    from loopix.client.api import StatusReporter, runtime_options
    from loopix.client.coordinator import Coordinator
    from loopix.wire.socket_api import ClientAddress

    opts = runtime_options(fleet.config, trace_path=trace_path, workers=workers, directory_url=directory_url)

    async def main() -> int:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        coord = Coordinator(fleet.identities, opts)
        await coord.start()
        try:
            for i, name in enumerate(fleet.names[:20]):
                print(f"{name}: {ClientAddress(*coord.address_of(i))}")
            if len(fleet.names) > 20:
                print(f"... and {len(fleet.names) - 20} more identities")
            print(f"running {len(fleet.names)} identities; Ctrl-C stops", flush=True)
            reporter = StatusReporter()
            coord.stats_listeners.append(reporter.on_stats)
            while not stop.is_set() and not coord.fatal:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), status_interval_s)
                if not stop.is_set():
                    print(reporter.line(coord.stats), flush=True)
        finally:
            await coord.stop()
        return 1 if coord.fatal else 0

    return uvloop.run(main())
