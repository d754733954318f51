"""g. One trivial JobmonTaskOperator on the local cluster, from execute to success (see
:mod:`benchmarks.local_cluster`)."""

from __future__ import annotations

from typing import Any

from benchmarks.local_cluster import run_single_task


def run() -> dict[str, Any]:
    return run_single_task()
