"""JobmonArrayOperator and mapped JobmonTaskOperator on the ``local`` cluster, through ``dag.test()``."""

from __future__ import annotations

import threading
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from airflow.sdk import DAG

from jobmon_airflow.clusters.base import JobState
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


def raise_limit_once_running(service: Services, dag_id: str, limit: int, changed: list[float]) -> None:
    """What `jobmon-airflow workflow concurrency -w <id> -m <limit>` does (its service call), once an element runs."""
    import sqlalchemy as sa

    from jobmon_airflow import models

    cluster = LocalCluster(jobmon_home() / "local-cluster")
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        jobs = [r["distributor_id"] for r in array_instances(service, dag_id) if r["distributor_id"]]
        # The cluster's view: a short element reports only its end to the database (log_ran).
        if jobs and any(s.state == JobState.RUNNING for s in cluster.statuses(jobs).values()):
            wf = models.Workflow.__table__
            with service.engine.connect() as conn:
                workflow_id = conn.execute(sa.select(wf.c.id).where(wf.c.dag_id == dag_id)).scalar_one()
            owner = service.admin.owner(workflow_id)
            assert owner is not None
            service.admin.set_concurrency(workflow_id, limit, user=owner)
            changed.append(time.time())
            return
        time.sleep(0.2)


def test_workflow_concurrency_raised_while_the_batch_runs(service: Services, tmp_path: Path) -> None:
    """Limit 1, raised to 3 while the one batch runs: the elements still pending start more at once (2: the
    local cluster here has 2 slots), without a new batch."""
    from jobmon_airflow.templates import TaskTemplate

    tt = TaskTemplate(name="nap", command_template="sleep {seconds} # {i}", node_args=["i"], op_args=["seconds"])
    with DAG("array_local_raise", schedule=None, start_date=datetime(2026, 1, 1)) as dag:
        JobmonArrayOperator(
            task_id="naps",
            task_template=tt,
            node_args={"i": list(range(6))},
            op_args={"seconds": 3},
            max_concurrently_running=1,
            poll_interval=0.5,
        )
    changed: list[float] = []
    changer = threading.Thread(target=raise_limit_once_running, args=(service, "array_local_raise", 3, changed))
    changer.start()
    dag_run: Any = run_dag(dag)
    changer.join()
    assert str(dag_run.state) == "success" and changed
    rows = array_instances(service, "array_local_raise")
    assert len({r["distributor_id"].split(".")[0] for r in rows}) == 1  # one batch: its -tc was changed
    infos = LocalCluster(jobmon_home() / "local-cluster").exit_info([r["distributor_id"] for r in rows])
    spans = sorted((i.start_time, i.end_time) for i in infos.values() if i.start_time and i.end_time)
    assert len(spans) == 6

    def most_at_once(chosen: list[tuple[float, float]]) -> int:
        return max(sum(1 for s, e in spans if s <= t < e) for t, _ in chosen)

    assert most_at_once([s for s in spans if s[0] < changed[0]]) == 1  # one at a time before the change
    assert most_at_once(spans) >= 2  # more at once after it


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
