"""The README's main command, as a user runs it: the example workflow on the embedded defaults."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_demo_command_prints_a_status_table_with_every_task_done(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "JOBMON"))}
    env["JOBMON_DEMO_HOME"] = str(tmp_path / "demo")
    proc = subprocess.run(
        ["bash", "scripts/demo.sh", "--tasks", "3"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    header = next(line for line in proc.stdout.splitlines() if line.startswith("WF_ID"))
    row = proc.stdout.splitlines()[proc.stdout.splitlines().index(header) + 2]
    starts = [m.start() for m in re.finditer(r"\S+", header)]  # fixed-width columns, cut at the header's words
    cells = {header[a:b].strip(): row[a:b].strip() for a, b in zip(starts, [*starts[1:], None], strict=True)}
    assert cells["WF_STATUS"] == "DONE" and cells["TASKS"] == "5", row  # prepare + 3 + aggregate
    assert cells["DONE"] == "5 (100.0%)" and cells["FATAL"] == "0 (0.0%)", row
    totals = list((tmp_path / "demo" / "jobmon" / "example-data").glob("*/total.txt"))
    assert len(totals) == 1
    assert int(totals[0].read_text()) == sum(n * n for n in range(3000))  # the real work was done
