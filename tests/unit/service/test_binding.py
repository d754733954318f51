"""Binding tasks one call at a time, as mapped task instances do, and in bulk."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest
import sqlalchemy as sa

from jobmon_airflow import db, models
from jobmon_airflow.service import Services, TaskSpec


def test_mapped_tasks_bind_one_by_one_and_again(tmp_path: Path) -> None:
    svc = Services.for_engine(db.get_engine(f"sqlite:///{tmp_path / 'bind.sqlite'}"))
    db.upgrade(svc.engine)
    run = svc.binding.bind_workflow_run(dag_id="d", run_id="r")
    ids = [
        svc.binding.bind_tasks(run.workflow_id, [TaskSpec("mapped", f"mapped[{i}]", f"echo {i}", map_index=i)])[0]
        for i in range(3)
    ]
    assert len(set(ids)) == 3  # each map index its own task, whatever was bound before it
    again = svc.binding.bind_tasks(
        run.workflow_id, [TaskSpec("mapped", f"mapped[{i}]", f"echo {i}", map_index=i) for i in range(3)]
    )
    assert again == ids
    changed = svc.binding.bind_tasks(run.workflow_id, [TaskSpec("mapped", "mapped[1]", "echo changed", map_index=1)])
    assert changed == [ids[1]]
    with svc.engine.connect() as conn:
        commands = dict(conn.execute(sa.select(models.Task.id, models.Task.command)).all())
    assert commands == {ids[0]: "echo 0", ids[1]: "echo changed", ids[2]: "echo 2"}


@pytest.mark.parametrize("backend", ["sqlite", "mariadb"])
def test_rebinding_changed_tasks_updates_what_they_run_and_keeps_their_state(
    backend: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """A DAG change re-binds 2,500 tasks (three upsert chunks): commands and attempts change, status does not."""
    url = f"sqlite:///{tmp_path / 'bind.sqlite'}" if backend == "sqlite" else request.getfixturevalue("mariadb_url")
    svc = Services.for_engine(db.get_engine(url))
    db.upgrade(svc.engine)
    run = svc.binding.bind_workflow_run(dag_id=f"rebind_{uuid.uuid4().hex[:8]}", run_id="r")
    n = 2500
    ids = svc.binding.bind_tasks(
        run.workflow_id, [TaskSpec("arr", f"arr[{i}]", f"echo {i}", map_index=i) for i in range(n)]
    )
    task = models.Task.__table__
    with db.session_scope(svc.engine) as s:  # one task has moved on; re-binding must not reset it
        s.execute(task.update().where(task.c.id == ids[7]).values(status="D", num_attempts=1))
    changed = [TaskSpec("arr", f"arr[{i}]", f"echo {i} v2", map_index=i, max_attempts=5) for i in range(n)]
    changed[3] = TaskSpec("arr", "arr[3]", "echo 3", map_index=3)  # unchanged
    assert svc.binding.bind_tasks(run.workflow_id, changed) == ids
    with svc.engine.connect() as conn:
        rows = {r.id: r for r in conn.execute(sa.select(task).where(task.c.workflow_id == run.workflow_id))}
    assert len(rows) == n
    assert [rows[i].command for i in ids] == [spec.command for spec in changed]
    assert [rows[i].max_attempts for i in ids] == [spec.max_attempts for spec in changed]
    assert (rows[ids[7]].status, rows[ids[7]].num_attempts) == ("D", 1)
    assert {rows[i].status for i in ids if i != ids[7]} == {"G"}
    assert {rows[i].name for i in ids} == {f"arr[{i}]" for i in range(n)}


def test_names_are_stored_whole_or_refused_naming_the_field(tmp_path: Path) -> None:
    svc = Services.for_engine(db.get_engine(f"sqlite:///{tmp_path / 'names.sqlite'}"))
    db.upgrade(svc.engine)
    run = svc.binding.bind_workflow_run(dag_id="names", run_id="r")
    with pytest.raises(ValueError, match=r"^task name: at most 255 characters, got 300"):
        svc.binding.bind_tasks(run.workflow_id, [TaskSpec("t", "n" * 300, "true")])
    with pytest.raises(ValueError, match=r"^workflow name: at most 255"):
        svc.binding.bind_workflow_run(dag_id="d" * 200, run_id="r" * 200)
    svc.binding.bind_tasks(run.workflow_id, [TaskSpec("t", "n" * 255, "true")])
    assert len(svc.queries.workflow_tasks(run.workflow_id)[0]["TASK_NAME"]) == 255
