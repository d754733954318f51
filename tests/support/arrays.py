"""The array scenario of the acceptance tests, shared by the local and the Grid Engine suites."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from jobmon_airflow import models
from jobmon_airflow.service import Services
from jobmon_airflow.templates import TaskTemplate

# Element i: 3 and 7 exit 3 on their first attempt; 11 is killed for memory on its first attempt (three children
# of 70 MiB: each under the per-process limit, together well over the job's 240M whatever the worker node's own
# size); everything else succeeds.
ELEMENT_SCRIPT = """
import os, subprocess, sys
i, folder, hold = int(sys.argv[1]), sys.argv[2], sys.argv[3]
marker = os.path.join(folder, f"tried-{i}")
first = not os.path.exists(marker)
open(marker, "a").close()
if first and i in (3, 7):
    print(f"element {i}: transient failure", file=sys.stderr)
    sys.exit(3)
if first and i == 11:
    child = f"import time; b = bytearray(70 * 2**20); time.sleep({hold})"
    ps = [subprocess.Popen([sys.executable, "-c", child]) for _ in range(3)]
    sys.exit(max(p.wait() for p in ps))
"""

FAILING_ONCE = (3, 7)
MEMORY_KILLED = 11


def element_template(tmp_path: Path) -> tuple[TaskTemplate, dict[str, Any]]:
    script = tmp_path / "element.py"
    script.write_text(ELEMENT_SCRIPT)
    folder = tmp_path / "markers"
    folder.mkdir()
    template = TaskTemplate(
        name="element",
        command_template="{python} {script} {i} {folder} {hold}",
        node_args=["i"],
        task_args=["folder"],
        op_args=["python", "script", "hold"],
        default_resources={"memory": "240M", "runtime": 120},
    )
    return template, {"python": sys.executable, "script": str(script), "folder": str(folder)}


def array_instances(service: Services, dag_id: str) -> list[dict[str, Any]]:
    """Every instance of the array's elements, with the element's node arg and the resources it ran with."""
    ti, task, wf = models.TaskInstance.__table__, models.Task.__table__, models.Workflow.__table__
    tr = models.TaskResources.__table__
    with service.engine.connect() as conn:
        rows = conn.execute(
            sa.select(
                ti.c.id,
                ti.c.status,
                ti.c.distributor_id,
                ti.c.array_batch_num,
                task.c.name,
                task.c.status.label("task_status"),
                tr.c.requested_resources,
            )
            .join(task, task.c.id == ti.c.task_id)
            .join(wf, wf.c.id == task.c.workflow_id)
            .join(tr, tr.c.id == ti.c.task_resources_id)
            .where(wf.c.dag_id == dag_id)
            .order_by(ti.c.id)
        ).all()
    return [
        {**r._asdict(), "element": int(r.name.rsplit("=", 1)[1]), "resources": json.loads(r.requested_resources)}
        for r in rows
    ]


def assert_twenty_elements_recovered(service: Services, dag_id: str) -> None:
    """20 elements all done, 23 instances, the memory-killed element retried with 1.5× memory."""
    rows = array_instances(service, dag_id)
    assert len(rows) == 23, [(r["element"], r["status"]) for r in rows]
    assert {r["element"] for r in rows if r["task_status"] == "D"} == set(range(20))
    by_element: dict[int, list[dict[str, Any]]] = {}
    for r in rows:
        by_element.setdefault(r["element"], []).append(r)
    for i in FAILING_ONCE:
        assert [r["status"] for r in by_element[i]] == ["E", "D"]
    killed, retried = by_element[MEMORY_KILLED]
    assert (killed["status"], retried["status"]) == ("Z", "D")
    assert retried["resources"]["memory"] == 1.5 * killed["resources"]["memory"]
    assert all(len(v) == 1 and v[0]["status"] == "D" for k, v in by_element.items() if k not in (3, 7, 11))
    first_batch = {r["distributor_id"].split(".")[0] for r in rows if r["array_batch_num"] == 1}
    assert len(first_batch) == 1  # the 20 first attempts went out as ONE array job
