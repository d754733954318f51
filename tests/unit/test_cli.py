"""The ``jobmon-airflow`` command line on a throwaway SQLite database."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from jobmon_airflow import cli, db
from jobmon_airflow.resources import QueueLimits, Resources
from jobmon_airflow.service import JobmonService, TaskSpec


def test_db_upgrade_then_status_tables(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    url = f"sqlite:///{tmp_path / 'cli.sqlite'}"
    assert cli.main(["--url", url, "db", "upgrade"]) == 0
    assert db.current_revision(db.get_engine(url)) == db.head_revision()
    svc = JobmonService(db.get_engine(url))
    run = svc.bind_workflow_run(dag_id="d", run_id="r")
    tasks = svc.bind_tasks(run.workflow_id, [TaskSpec(f"t{i}", f"t{i}", "true") for i in range(4)])
    (ti,) = svc.queue_task_instances(
        run.workflow_run_id, svc.cluster_id("local", "local"), tasks[:1], Resources(), "O", QueueLimits("local")
    )
    svc.instantiate([ti], {}, {})
    svc.log_distributor_ids({ti: "7"})
    svc.log_running(ti, "node", 1, "7", 100)
    svc.log_done(ti, "node", {"maxrss_bytes": 2**20})
    capsys.readouterr()

    assert cli.main(["--url", url, "workflow", "status", "--dag-id", "d", "-n"]) == 0
    (row,) = json.loads(capsys.readouterr().out)
    assert (row["TASKS"], row["DONE"], row["PENDING"], row["WF_STATUS"]) == (4, 1, 3, "RUNNING")

    assert cli.main(["--url", url, "workflow", "status", "--dag-id", "d"]) == 0
    table = capsys.readouterr().out
    assert "1 (25.0%)" in table and "3 (75.0%)" in table

    assert cli.main(["--url", url, "workflow", "tasks", "-w", str(run.workflow_id), "-n"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["STATUS"] for r in rows] == ["DONE", "PENDING", "PENDING", "PENDING"]
    assert rows[0]["DISTRIBUTOR_ID"] == "7" and rows[0]["MAXRSS_MB"] == 1.0


def test_bad_arguments_exit_with_usage() -> None:
    with pytest.raises(SystemExit) as exc:
        cli.main(["workflow", "tasks"])
    assert exc.value.code == 2
