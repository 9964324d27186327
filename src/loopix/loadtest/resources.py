"""CPU and memory of every process a run uses, from /proc, once a second.

A load test on one machine measures the mixnet only while the machine keeps up: a process near
100 % of a core (the sender, a worker, a mixnode) means the figures describe the machine. So every
run samples its coordinator, workers, sender and (when it started them) the testnet's nodes.
CPU is cores used over the interval (utime + stime ticks / CLK_TCK / seconds), RSS in MiB.
"""

from __future__ import annotations

import os

import msgspec

__all__ = ["ProcessSample", "ProcessUsage", "ResourceSampler", "read_proc"]

_TICK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def read_proc(pid: int) -> tuple[int, int] | None:
    """(CPU ticks used so far, RSS bytes) of `pid`, or None if it is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            fields = f.read().rsplit(b")", 1)[1].split()
        with open(f"/proc/{pid}/statm", "rb") as f:
            rss_pages = int(f.read().split()[1])
    except (OSError, IndexError, ValueError):
        return None
    if fields[0] == b"Z":
        return None
    # after the command name: state(0) ppid ... utime is field 14 of stat, i.e. index 11 here
    return int(fields[11]) + int(fields[12]), rss_pages * _PAGE


class ProcessSample(msgspec.Struct, frozen=True):
    """One process in one second (a row of resources.csv)."""

    t_s: float
    process: str
    role: str  # coordinator | worker | sender | mixnode | provider | directory
    pid: int
    cpu_cores: float
    rss_mib: float


class ProcessUsage(msgspec.Struct, frozen=True):
    """One process over the run (the summary): mean and peak cores, peak RSS."""

    process: str
    role: str
    pid: int
    samples: int
    cpu_mean_cores: float
    cpu_max_cores: float
    rss_max_mib: float


class ResourceSampler:
    """Call `sample(t_s, {name: (role, pid)})` once a second; the first sight of a pid only sets
    its baseline (a CPU rate needs two readings)."""

    def __init__(self) -> None:
        self._last: dict[tuple[str, int], tuple[float, int]] = {}

    def sample(self, t_s: float, processes: dict[str, tuple[str, int]]) -> list[ProcessSample]:
        out = []
        for name, (role, pid) in processes.items():
            got = read_proc(pid)
            if got is None:
                continue
            ticks, rss = got
            prev = self._last.get((name, pid))
            self._last[(name, pid)] = (t_s, ticks)
            if prev is None or t_s <= prev[0]:
                continue
            cores = (ticks - prev[1]) / _TICK / (t_s - prev[0])
            out.append(ProcessSample(t_s, name, role, pid, round(cores, 4), round(rss / 2**20, 2)))
        return out


def usage_of(samples: list[ProcessSample]) -> list[ProcessUsage]:
    """Per process (name and pid: a restarted worker is a new line), over the run."""
    by: dict[tuple[str, int], list[ProcessSample]] = {}
    for s in samples:
        by.setdefault((s.process, s.pid), []).append(s)
    out = [
        ProcessUsage(
            process=name,
            role=series[0].role,
            pid=pid,
            samples=len(series),
            cpu_mean_cores=round(sum(s.cpu_cores for s in series) / len(series), 4),
            cpu_max_cores=max(s.cpu_cores for s in series),
            rss_max_mib=max(s.rss_mib for s in series),
        )
        for (name, pid), series in by.items()
    ]
    out.sort(key=lambda u: (u.role not in ("coordinator", "sender", "worker"), u.process, u.pid))
    return out
