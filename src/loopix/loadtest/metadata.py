"""What a reader needs to reproduce a run: when, which loopix, which command, which machine, which
traffic and which network. Written at the start into summary.json and the report's header."""

from __future__ import annotations

import datetime
import os
import platform
import shlex
import subprocess
import sys
from pathlib import Path

import msgspec

import loopix

__all__ = ["HostInfo", "RunMetadata", "TopologyShape", "collect_host", "git_commit"]


class HostInfo(msgspec.Struct, frozen=True, kw_only=True):
    hostname: str
    cpu_model: str | None
    cores: int | None
    memory_mib: int | None
    kernel: str
    python: str
    load_average: list[float] | None  # 1/5/15-minute load when the run started: a busy machine shows


class TopologyShape(msgspec.Struct, frozen=True, kw_only=True):
    source: str  # "embedded" or the directory URL
    mixnodes_per_layer: list[int]
    providers: int


class RunMetadata(msgspec.Struct, frozen=True, kw_only=True):
    started_utc: str
    loopix_version: str
    git_commit: str | None  # when run from a checkout; "+dirty" when it has local changes
    command_line: str
    host: HostInfo
    identities: int
    rates_per_identity: dict[str, float]  # packets/s of each stream, per identity
    messages_per_s: float
    mean_hop_delay_ms: float
    packet_payload_size: int
    workers: int  # as asked (0: one per core)
    topology: TopologyShape
    # the senders' coalescing window: scheduler lateness up to this is by design (0 in older reports)
    sender_coalesce_us: int = 0


def _cpu_model() -> str | None:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("model name", "Model")):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or None


def _memory_mib() -> int | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) // 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def collect_host() -> HostInfo:
    try:
        load = [round(x, 2) for x in os.getloadavg()]
    except OSError:
        load = None
    return HostInfo(
        hostname=platform.node(),
        cpu_model=_cpu_model(),
        cores=os.cpu_count(),
        memory_mib=_memory_mib(),
        kernel=f"{platform.system()} {platform.release()}",
        python=f"{platform.python_implementation()} {platform.python_version()}",
        load_average=load,
    )


def git_commit() -> str | None:
    """The checkout's HEAD when loopix runs from one (None from an installed wheel)."""
    root = Path(loopix.__file__).resolve().parent.parent.parent
    if not (root / ".git").exists():
        return None
    try:
        head = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True,
                              text=True, timeout=5, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=5).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return head + ("+dirty" if dirty else "") if head else None


def collect(*, identities: int, rates: dict[str, float], messages_per_s: float, mean_hop_delay_ms: float,
            packet_payload_size: int, workers: int, source: str, mixnodes_per_layer: list[int],
            providers: int, argv: list[str] | None = None, sender_coalesce_us: int = 0) -> RunMetadata:
    return RunMetadata(
        started_utc=datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        loopix_version=loopix.__version__,
        git_commit=git_commit(),
        command_line=shlex.join(sys.argv if argv is None else argv),
        host=collect_host(),
        identities=identities,
        rates_per_identity=rates,
        messages_per_s=messages_per_s,
        mean_hop_delay_ms=mean_hop_delay_ms,
        packet_payload_size=packet_payload_size,
        workers=workers,
        sender_coalesce_us=sender_coalesce_us,
        topology=TopologyShape(source=source, mixnodes_per_layer=mixnodes_per_layer, providers=providers),
    )
