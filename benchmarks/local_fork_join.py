"""f. The fork-join workflow (start, N trivial tasks as one array, end) on the local cluster through ``dag.test()``
vs ``xargs -P <slots>`` of the same commands (see :mod:`benchmarks.local_cluster`)."""

from __future__ import annotations

from typing import Any

from benchmarks.local_cluster import run_fork_join


def run(sizes: list[int]) -> dict[str, Any]:
    return run_fork_join(sizes)
