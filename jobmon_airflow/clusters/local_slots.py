"""The local cluster's slots: ``<root>/slots/0..n-1``, one file each, held with ``flock`` by the element using it."""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

from jobmon_airflow.files import PRIVATE_FILE


class SlotPool:
    """The machine's slots, ``<root>/slots/<k>`` files held with ``flock`` by the elements using them: shared by
    every job of the supervisor, and freed by the kernel if it dies."""

    def __init__(self, slots_dir: Path) -> None:
        self.dir = slots_dir
        self.fds: dict[int, int] = {}
        self.held: set[int] = set()  # flock on our own fd would "succeed" again: track what we hold

    def take(self, cores: int, n_slots: int) -> list[int] | None:
        """All ``cores`` of slots 0..n_slots-1 at once or none, so that two multi-core jobs never hold half each
        and deadlock."""
        if n_slots - len(self.held) < cores:
            return None
        got: list[int] = []
        for k in range(n_slots):
            if k in self.held:
                continue
            if k not in self.fds:
                self.fds[k] = os.open(self.dir / str(k), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, PRIVATE_FILE)
            try:
                fcntl.flock(self.fds[k], fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                continue
            got.append(k)
            self.held.add(k)
            if len(got) == cores:
                return got
        self.release(got)
        return None

    def release(self, slots: list[int]) -> None:
        for k in slots:
            fcntl.flock(self.fds[k], fcntl.LOCK_UN)
            self.held.discard(k)
