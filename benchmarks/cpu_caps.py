"""A fixed CPU budget per process group with the cgroup v1 ``cpu`` controller (CFS bandwidth), the way container
runtimes cap a container: ``cpu.cfs_quota_us`` of CPU time per ``cpu.cfs_period_us``. No systemd: the groups are
directories under the controller's mount, made here and removed afterwards. Benchmark s gives each State Manager
replica its own group, so one replica is bounded by its own budget and two replicas have twice the budget. Also the
CPU each process and the machine used, from /proc."""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from pathlib import Path

CPU_MOUNT = Path("/sys/fs/cgroup/cpu")
PERIOD_US = 100_000


@dataclass(frozen=True)
class Throttling:
    """``cpu.stat`` of one group: CFS periods with runnable tasks, those in which the quota ran out, and how long
    its tasks waited for the next period."""

    periods: int
    throttled: int
    throttled_ms: float

    def __sub__(self, other: Throttling) -> Throttling:
        return Throttling(
            self.periods - other.periods, self.throttled - other.throttled, self.throttled_ms - other.throttled_ms
        )


def available(mount: Path = CPU_MOUNT) -> str | None:
    """``None`` when groups can be made under ``mount``, else why not."""
    if not (mount / "cpu.cfs_quota_us").exists():
        return f"no cgroup v1 cpu controller mounted at {mount}"
    if not os.access(mount, os.W_OK):
        return f"{mount} is not writable (needs root)"
    return None


class CpuCaps:
    """Groups ``<mount>/<name>/<member>``, one per member; :meth:`close` moves anything left back to the root group
    and removes them (also a leftover of an interrupted run, on creation)."""

    def __init__(self, name: str, members: list[str], mount: Path = CPU_MOUNT) -> None:
        self.mount, self.base = mount, mount / name
        if self.base.exists():
            self.close()
        self.groups = {m: self.base / m for m in members}
        for group in self.groups.values():
            group.mkdir(parents=True)
            (group / "cpu.cfs_period_us").write_text(str(PERIOD_US))

    def add(self, member: str, pids: list[int]) -> list[int]:
        """Put every process of ``pids`` (each with all its threads) into ``member``'s group; the thread ids now
        in the group, to check that none stayed outside."""
        for pid in pids:
            (self.groups[member] / "cgroup.procs").write_text(str(pid))
        return sorted(int(t) for t in (self.groups[member] / "tasks").read_text().split())

    def set_cores(self, cores: float | None) -> None:
        """Every group's budget: ``cores`` CPUs' worth of time per period, or none (``None``: uncapped)."""
        quota = -1 if cores is None else round(cores * PERIOD_US)
        for group in self.groups.values():
            (group / "cpu.cfs_quota_us").write_text(str(quota))

    def throttling(self, member: str) -> Throttling:
        stat = dict(line.split() for line in (self.groups[member] / "cpu.stat").read_text().splitlines())
        return Throttling(int(stat["nr_periods"]), int(stat["nr_throttled"]), int(stat["throttled_time"]) / 1e6)

    def close(self) -> None:
        if not self.base.exists():
            return
        groups = sorted((p for p in self.base.rglob("*") if p.is_dir()), key=lambda p: len(p.parts), reverse=True)
        for group in [*groups, self.base]:
            for pid in (group / "cgroup.procs").read_text().split():
                with contextlib.suppress(OSError):  # the process ended meanwhile
                    (self.mount / "cgroup.procs").write_text(pid)
            group.rmdir()


# -- CPU use, from /proc


def cpu_s(pids: list[int]) -> float:
    """User + system CPU seconds of ``pids`` so far (/proc/<pid>/stat)."""
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])
    return total / os.sysconf("SC_CLK_TCK")


def busy_s() -> float:
    """CPU seconds the whole machine spent busy (every process, other users' too), from /proc/stat."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    return (sum(fields) - fields[3] - fields[4]) / os.sysconf("SC_CLK_TCK")


def children(pid: int) -> list[int]:
    """The processes whose parent is ``pid``."""
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            if int(stat.read_text().rsplit(")", 1)[1].split()[1]) == pid:
                out.append(int(stat.parent.name))
        except (OSError, ValueError, IndexError):
            continue
    return out
