"""The README's main command, as a user runs it: the example workflow on the embedded defaults, shown as a live
view in Jobmon's buckets (Airflow's log in a file), its independent tasks run as one array, ending with Jobmon's
status table and the workflow's page."""

from __future__ import annotations

import os
import re
import sqlite3
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

    # Airflow's log went to a file, the terminal got the live view (its last frame: every task done).
    assert "[DAG TEST]" not in proc.stdout + proc.stderr
    assert "[DAG TEST]" in (tmp_path / "demo" / "demo.log").read_text()
    assert re.search(r"^all\s+5\s+\S+\s+0\s+0\s+0\s+5\s+0\s*$", proc.stdout, re.M), proc.stdout[-3000:]
    assert re.search(r"^sum_of_squares\s+3\s+\S+\s+0\s+0\s+0\s+3\s+0\s*$", proc.stdout, re.M)
    # It ends with the workflow's page in Airflow's UI.
    page = rf"^The workflow's page: http://\S+/plugin/jobmon/jobmon/ui/workflows/{cells['WF_ID']}$"
    assert re.search(page, proc.stdout, re.M), proc.stdout[-1000:]
    # The three independent tasks were one submission: elements of one array job, in one batch.
    with sqlite3.connect(tmp_path / "demo" / "jobmon" / "jobmon.sqlite") as conn:
        elements = conn.execute(
            "SELECT distributor_id, array_batch_num FROM task_instance WHERE array_id IS NOT NULL"
        ).fetchall()
    assert len(elements) == 3 and len({(job.split(".")[0], batch) for job, batch in elements}) == 1, elements
    assert "3 tasks (sum_of_squares:part=0 ... sum_of_squares:part=2) ran as elements of one array job" in proc.stdout
