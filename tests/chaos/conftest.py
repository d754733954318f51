"""The chaos suite: each test injects one fault into a real run (Grid Engine, MariaDB, the State Manager, Airflow's
services) and checks that nothing was lost and nothing ran twice. Every test reports what it did to the ledger;
the summary is printed at the end of the test run (and recorded in docs/reliability.md).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import pytest

pytestmark = pytest.mark.chaos


@dataclass
class Fault:
    """What one chaos test injected and what came out of it."""

    test: str
    fault: str
    runs: int = 0  # runs (tasks, array elements) that were supposed to complete
    completed: int = 0  # of those, the ones that ended as the job really did
    duplicates: int = 0  # jobs run more than once for one attempt (accounting records beyond one)
    lost: int = 0  # results missing or wrong (an instance not final, or not what the job did)
    notes: list[str] = field(default_factory=list)


_LEDGER: list[Fault] = []


@pytest.fixture
def fault(request: pytest.FixtureRequest) -> Iterator[Fault]:
    """The ledger entry of this test; the test fills it in and asserts on it."""
    entry = Fault(test=request.node.name, fault="")
    yield entry
    _LEDGER.append(entry)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if not _LEDGER:
        return
    tr = terminalreporter
    tr.section("chaos summary")
    tr.write_line(f"{'fault':<78} {'runs':>5} {'done':>5} {'dup':>4} {'lost':>5}")
    for f in _LEDGER:
        tr.write_line(f"{f.fault[:78]:<78} {f.runs:>5} {f.completed:>5} {f.duplicates:>4} {f.lost:>5}")
    totals = {k: sum(getattr(f, k) for f in _LEDGER) for k in ("runs", "completed", "duplicates", "lost")}
    tr.write_line(
        f"faults injected {len(_LEDGER)}, runs {totals['runs']}, completed {totals['completed']}, "
        f"duplicates {totals['duplicates']}, lost results {totals['lost']}"
    )
    if out := os.environ.get("JOBMON_CHAOS_SUMMARY"):
        Path(out).write_text(json.dumps({"faults": [asdict(f) for f in _LEDGER], "totals": totals}, indent=1))
