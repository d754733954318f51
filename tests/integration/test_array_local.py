"""JobmonArrayOperator and mapped JobmonTaskOperator on the ``local`` cluster, through ``dag.test()``."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from airflow.sdk import DAG

from jobmon_airflow.clusters.local import LocalCluster
from jobmon_airflow.hooks.jobmon import JobmonHook
from jobmon_airflow.operators import JobmonArrayOperator, JobmonTaskOperator
from jobmon_airflow.paths import jobmon_home
from jobmon_airflow.service import Services
from tests.conftest import run_dag
from tests.support.arrays import array_instances, assert_twenty_elements_recovered, element_template

pytestmark = pytest.mark.usefixtures("airflow_db", "state_manager")


@pytest.fixture
def service() -> Services:
    return JobmonHook().get_services()


def test_twenty_elements_two_transient_failures_one_memory_kill(service: Services, tmp_path: Path) -> None:
    template, args = element_template(tmp_path)
    with DAG("array_local_twenty", schedule=None, start_date=datetime(2026, 1, 1)) as dag:
        JobmonArrayOperator(
            task_id="elements",
            task_template=template,
            node_args={"i": list(range(20))},
            task_args={"folder": args["folder"]},
            op_args={"python": args["python"], "script": args["script"], "hold": 1.5},
            poll_interval=0.5,
        )
    dag_run: Any = run_dag(dag)
    assert str(dag_run.state) == "success"
    assert_twenty_elements_recovered(service, "array_local_twenty")


def test_failed_elements_are_listed_with_their_last_error(
    service: Services, tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    broken = tmp_path / "broken.sh"
    broken.write_text('if [ "$1" = 2 ]; then echo "element 2 cannot read its input" >&2; exit 4; fi\n')
    from jobmon_airflow.templates import TaskTemplate

    tt = TaskTemplate(name="maybe", command_template="bash {script} {i}", node_args=["i"], op_args=["script"])
    with DAG("array_local_failing", schedule=None, start_date=datetime(2026, 1, 1)) as dag:
        JobmonArrayOperator(
            task_id="elements",
            task_template=tt,
            node_args={"i": [1, 2, 3]},
            op_args={"script": str(broken)},
            max_attempts=2,
            poll_interval=0.5,
        )
    dag_run: Any = run_dag(dag)
    assert str(dag_run.state) == "failed"
    rows = array_instances(service, "array_local_failing")
    assert sorted((r["element"], r["status"]) for r in rows) == [(1, "D"), (2, "E"), (2, "E"), (3, "D")]
    out = capfd.readouterr().out
    assert "1 of 3 elements failed, 2 done" in out
    assert "maybe:i=2 (task" in out and "element 2 cannot read its input" in out


def test_max_concurrently_running_caps_the_running_elements(service: Services, tmp_path: Path) -> None:
    from jobmon_airflow.templates import TaskTemplate

    tt = TaskTemplate(name="nap", command_template="sleep {seconds} # {i}", node_args=["i"], op_args=["seconds"])
    with DAG("array_local_tc", schedule=None, start_date=datetime(2026, 1, 1)) as dag:
        JobmonArrayOperator(
            task_id="naps",
            task_template=tt,
            node_args={"i": list(range(6))},
            op_args={"seconds": 1},
            max_concurrently_running=2,
            poll_interval=0.5,
        )
    dag_run: Any = run_dag(dag)
    assert str(dag_run.state) == "success"
    rows = array_instances(service, "array_local_tc")
    infos = LocalCluster(jobmon_home() / "local-cluster").exit_info([r["distributor_id"] for r in rows])
    spans = sorted((i.start_time, i.end_time) for i in infos.values() if i.start_time and i.end_time)
    assert len(spans) == 6
    most = max(sum(1 for s, e in spans if s <= t < e) for t, _ in spans)
    assert most == 2  # two at a time, never three


def test_mapped_task_operator_is_one_jobmon_task_per_map_index(service: Services, tmp_path: Path) -> None:
    with DAG("mapped_local", schedule=None, start_date=datetime(2026, 1, 1)) as dag:
        JobmonTaskOperator.partial(task_id="mapped", poll_interval=0.5).expand(
            command=[f"echo {i} > {tmp_path}/out_{i}" for i in range(3)]
        )
    dag_run: Any = run_dag(dag)
    assert str(dag_run.state) == "success"
    assert sorted(p.read_text() for p in tmp_path.glob("out_*")) == ["0\n", "1\n", "2\n"]
    (row,) = service.queries.workflow_status(dag_id="mapped_local")
    assert (row["TASKS"], row["DONE"]) == (3, 3)
    names = sorted(t["TASK_NAME"] for t in service.queries.workflow_tasks(row["WF_ID"]))
    assert names == ["mapped[0]", "mapped[1]", "mapped[2]"]
