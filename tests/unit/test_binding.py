"""Binding tasks one call at a time, as mapped task instances do, and in bulk."""

from __future__ import annotations

from pathlib import Path

import sqlalchemy as sa

from jobmon_airflow import db, models
from jobmon_airflow.service import JobmonService, TaskSpec


def test_mapped_tasks_bind_one_by_one_and_again(tmp_path: Path) -> None:
    svc = JobmonService(db.get_engine(f"sqlite:///{tmp_path / 'bind.sqlite'}"))
    db.upgrade(svc.engine)
    run = svc.bind_workflow_run(dag_id="d", run_id="r")
    ids = [
        svc.bind_tasks(run.workflow_id, [TaskSpec("mapped", f"mapped[{i}]", f"echo {i}", map_index=i)])[0]
        for i in range(3)
    ]
    assert len(set(ids)) == 3  # each map index its own task, whatever was bound before it
    again = svc.bind_tasks(
        run.workflow_id, [TaskSpec("mapped", f"mapped[{i}]", f"echo {i}", map_index=i) for i in range(3)]
    )
    assert again == ids
    changed = svc.bind_tasks(run.workflow_id, [TaskSpec("mapped", "mapped[1]", "echo changed", map_index=1)])
    assert changed == [ids[1]]
    with svc.engine.connect() as conn:
        commands = dict(conn.execute(sa.select(models.Task.id, models.Task.command)).all())
    assert commands == {ids[0]: "echo 0", ids[1]: "echo changed", ids[2]: "echo 2"}
