"""JobmonTaskOperator on the real Grid Engine cluster, with the Jobmon state database on the real MariaDB server
(through an Airflow MySQL connection) and the State Manager serving it over HTTP."""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
import uuid
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from airflow.sdk import DAG
from airflow.sdk.exceptions import TaskDeferred

from jobmon_airflow.clusters.gridengine import GridEngineCluster
from jobmon_airflow.hooks.jobmon import JobmonHook
from jobmon_airflow.operators import JobmonTaskOperator
from jobmon_airflow.server.app import start_in_thread
from jobmon_airflow.service import Services
from tests.conftest import free_port, run_dag
from tests.support.databases import mysql_connection
from tests.support.state import instances, wait_for

pytestmark = [pytest.mark.gridengine, pytest.mark.mariadb, pytest.mark.usefixtures("airflow_db")]

PY = sys.executable
FAST = {"poll_interval": 1.0, "retry_delay": timedelta(0), "heartbeat_interval": 10, "lost_grace_s": 20.0}

# Three children of 70 MiB each (≈ 84 MiB of virtual memory each with the interpreter): each far below RLIMIT_AS,
# together (with their parent, ≈ 16 MiB, and the worker node, ≈ 15 MiB) ≈ 285 MiB: over h_vmem=240M by a margin that
# does not depend on the worker node's own size, which only the execd's whole-job accounting catches (failed 37,
# exit 137); 1.5 × 240M = 360M fits. The children live 10 s so that the execd samples them.
CHILD = "import time; b = bytearray(70 * 2**20); time.sleep(10)"
THREE_CHILDREN = (
    f"{PY} -c \"import subprocess, sys; ps = [subprocess.Popen([sys.executable, '-c', '{CHILD}']) for _ in range(3)];"
    ' sys.exit(max(p.wait() for p in ps))"'
)


@pytest.fixture(scope="module")
def service(gridengine: dict[str, str], mariadb_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """Connections as a deployment has them: jobmon → MySQL connection → MariaDB; gridengine with a log dir."""
    mysql_conn = mysql_connection(mariadb_url)
    logs = tmp_path_factory.mktemp("sge-logs")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("AIRFLOW_CONN_JOBMON_MARIADB", json.dumps(mysql_conn))
        mp.setenv(
            "AIRFLOW_CONN_JOBMON_DEFAULT",
            json.dumps({"conn_type": "jobmon", "extra": {"mysql_conn_id": "jobmon_mariadb", "cluster": "gridengine"}}),
        )
        mp.setenv(
            "AIRFLOW_CONN_GRIDENGINE_DEFAULT",
            json.dumps({"conn_type": "gridengine", "extra": {"log_dir": str(logs), "poll_interval": 1}}),
        )
        hook = JobmonHook()
        db_url = hook.get_db_url()
        assert db_url.startswith("mysql+pymysql://")
        port = free_port()
        server = start_in_thread(port, db_url)
        mp.setenv("JOBMON_AIRFLOW_STATE_MANAGER_URL", f"http://127.0.0.1:{port}/jobmon")
        yield hook.get_services()
        server.should_exit = True


@pytest.fixture
def dag_id(request: pytest.FixtureRequest) -> str:
    """Unique per test run: the MariaDB database outlives a pytest session."""
    return f"sge_{request.node.name[:40]}_{uuid.uuid4().hex[:8]}".replace("[", "_").replace("]", "_")


def make_dag(dag_id: str, **tasks: dict[str, Any]) -> DAG:
    with DAG(dag_id=dag_id, schedule=None, start_date=datetime(2026, 1, 1), catchup=False) as dag:
        for task_id, kwargs in tasks.items():
            JobmonTaskOperator(task_id=task_id, **{**FAST, **kwargs})
    return dag


def qstat_job_ids() -> set[str]:
    out = subprocess.run(["qstat", "-u", "*"], capture_output=True, text=True, check=True).stdout
    return {line.split()[0] for line in out.splitlines()[2:] if line.strip()}


def accounting(job_id: str) -> Any:
    deadline = time.monotonic() + 30
    while True:
        info = GridEngineCluster().exit_info([job_id]).get(job_id)
        if info is not None or time.monotonic() > deadline:
            return info
        time.sleep(0.5)


def test_success_on_grid_engine(service: Services, dag_id: str, tmp_path: Path) -> None:
    out = tmp_path / "host.txt"
    dag = make_dag(dag_id, hello={"command": f"hostname > {out}; echo $JOB_ID >> {out}", "compute_resources": {}})
    dag_run: Any = run_dag(dag)
    assert str(dag_run.state) == "success"
    (attempt,) = instances(service, dag_id, "hello")
    assert attempt["status"] == "D" and attempt["exit_status"] == 0
    assert out.read_text().split()[1] == attempt["distributor_id"]  # it really ran as that SGE job
    assert attempt["resources"]["queue"] == "all.q"
    info = accounting(attempt["distributor_id"])
    assert info is not None and info.exit_status == 0


def test_exit_3_is_an_error_and_is_retried(service: Services, dag_id: str, tmp_path: Path) -> None:
    marker = tmp_path / "tried"
    command = f"if [ ! -e {marker} ]; then touch {marker}; echo 'no input yet' >&2; exit 3; fi"
    dag_run: Any = run_dag(make_dag(dag_id, flaky={"command": command}))
    assert str(dag_run.state) == "success"
    first, second = instances(service, dag_id, "flaky")
    assert (first["status"], first["exit_status"], second["status"]) == ("E", 3, "D")
    assert any("no input yet" in e for e in first["errors"])
    assert first["distributor_id"] != second["distributor_id"]


def test_memory_kill_by_execd_is_retried_with_1_5x_h_vmem(service: Services, dag_id: str) -> None:
    dag = make_dag(dag_id, hungry={"command": THREE_CHILDREN, "compute_resources": {"memory": "240M", "runtime": 120}})
    dag_run: Any = run_dag(dag)
    assert str(dag_run.state) == "success"
    killed, retried = instances(service, dag_id, "hungry")
    assert (killed["status"], killed["exit_status"]) == ("Z", 137)
    info = accounting(killed["distributor_id"])
    assert info.resource == "memory" and "failed 37" in info.reason
    assert retried["status"] == "D"
    assert retried["resources"]["memory"] == pytest.approx(360 / 1024, rel=0.01)
    retried_info = accounting(retried["distributor_id"])
    assert retried_info.exit_status == 0


def test_runtime_kill_by_h_rt_is_retried_with_scaled_runtime(service: Services, dag_id: str) -> None:
    dag_run: Any = run_dag(make_dag(dag_id, slow={"command": "sleep 8", "compute_resources": {"runtime": 5}}))
    assert str(dag_run.state) == "success"
    killed, retried = instances(service, dag_id, "slow")
    assert killed["status"] == "Z" and any("runtime" in e or "h_rt" in e for e in killed["errors"])
    assert (killed["resources"]["runtime"], retried["resources"]["runtime"]) == (5, 8)  # ceil(5 × 1.5)
    assert retried["status"] == "D"


def test_two_cores_book_memory_per_slot(service: Services, dag_id: str, tmp_path: Path) -> None:
    out = tmp_path / "limits.txt"
    command = f"echo $NSLOTS $PE $(ulimit -v) > {out}"
    dag_run: Any = run_dag(
        make_dag(dag_id, smp={"command": command, "compute_resources": {"cores": 2, "memory": "2G"}})
    )
    assert str(dag_run.state) == "success"
    (attempt,) = instances(service, dag_id, "smp")
    assert out.read_text().split() == ["2", "smp", str(2 * 1024 * 1024)]  # RLIMIT_AS: 2 slots × h_vmem=1G (KiB)
    info = accounting(attempt["distributor_id"])
    assert (info.slots, info.granted_pe) == (2, "smp")


def test_unsatisfiable_request_fails_at_submission_with_sge_reason(service: Services, dag_id: str) -> None:
    before = qstat_job_ids()
    dag_run: Any = run_dag(make_dag(dag_id, huge={"command": "true", "compute_resources": {"cores": 64}}))
    assert str(dag_run.state) == "failed"
    assert qstat_job_ids() <= before  # nothing left pending
    attempts = instances(service, dag_id, "huge")
    # Refused before submission (over the queue's slots) or by qsub -w e: either way the reason names the cause.
    assert all(a["status"] == "W" for a in attempts)


def _deferred(op: JobmonTaskOperator, run_id: str) -> Any:
    context: Any = {"ti": SimpleNamespace(try_number=1, map_index=-1), "run_id": run_id}
    with pytest.raises(TaskDeferred) as deferred:
        op.execute(context)
    return deferred.value.trigger


def test_killing_the_deferred_task_deletes_the_sge_job(service: Services, dag_id: str) -> None:
    with DAG(dag_id, schedule=None, start_date=datetime(2026, 1, 1)):
        op = JobmonTaskOperator(task_id="sleeper", command="sleep 300", poll_interval=1)
    trigger = _deferred(op, "kill")

    async def scenario() -> Any:
        waiting = asyncio.create_task(anext(trigger.run()))
        await asyncio.to_thread(wait_for, lambda: service.queries.task_instance(trigger.task_instance_id).status == "R")
        # The worker authenticated, yet its token is nowhere in what Grid Engine shows about the job.
        token = next(Path(service.queries.task_instance(trigger.task_instance_id).exit_record).parent.rglob("*.token"))
        details = subprocess.run(["qstat", "-j", trigger.job_id], capture_output=True, text=True).stdout
        assert trigger.job_id in details and token.read_text() not in details
        await trigger.on_kill()
        return (await asyncio.wait_for(waiting, 30)).payload

    event = asyncio.run(scenario())
    assert event["status"] == "K"
    assert service.queries.task_instance(trigger.task_instance_id).status == "K"
    wait_for(lambda: trigger.job_id not in qstat_job_ids(), 30)
    info = accounting(trigger.job_id)
    assert info is not None and info.exit_status == 137  # qdel of a running job: failed 100, exit 137


REATTACH_SCRIPT = textwrap.dedent(
    """
    import sys
    from datetime import datetime
    from types import SimpleNamespace
    from airflow.sdk import DAG
    from jobmon_airflow.operators import JobmonTaskOperator

    dag_id, run_id, marker = sys.argv[1:4]
    with DAG(dag_id, schedule=None, start_date=datetime(2026, 1, 1)):
        op = JobmonTaskOperator(
            task_id="long", command=f"sleep 6; echo ran >> {marker}", deferrable=False, poll_interval=1
        )
    print("result", op.execute({"ti": SimpleNamespace(try_number=int(sys.argv[4]), map_index=-1), "run_id": run_id}))
    """
)


def test_reattach_after_the_operator_process_dies(service: Services, dag_id: str, tmp_path: Path) -> None:
    script = tmp_path / "run_operator.py"
    script.write_text(REATTACH_SCRIPT)
    marker = tmp_path / "marker"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    first = subprocess.Popen([PY, str(script), dag_id, "run1", str(marker), "1"], env=env)
    wait_for(
        lambda: bool(instances(service, dag_id, "long")) and instances(service, dag_id, "long")[0]["status"] == "R"
    )
    first.send_signal(signal.SIGKILL)  # the Airflow worker dies mid-job; the SGE job keeps running
    first.wait()
    (live,) = instances(service, dag_id, "long")
    assert live["distributor_id"] in qstat_job_ids()
    second = subprocess.run(
        [PY, str(script), dag_id, "run1", str(marker), "2"], env=env, capture_output=True, text=True, timeout=120
    )
    assert second.returncode == 0, second.stderr[-2000:]
    (attempt,) = instances(service, dag_id, "long")  # adopted: still one instance, one job
    assert attempt["id"] == live["id"] and attempt["distributor_id"] == live["distributor_id"]
    assert attempt["status"] == "D" and marker.read_text() == "ran\n"
    # Adopted while still running, or (slow start of the new process) after it ended: never resubmitted.
    output = second.stderr + second.stdout
    assert "Re-attaching to job" in output or "while no Airflow try watched it: adopting" in output

    def accounting_records() -> int:
        qacct = subprocess.run(["qacct", "-j", attempt["distributor_id"]], capture_output=True, text=True)
        return qacct.stdout.count("jobnumber")

    # The worker reports done before its job has ended for Grid Engine: the record lands a moment later.
    wait_for(lambda: accounting_records() > 0)
    assert accounting_records() == 1


def test_launched_job_that_vanishes_before_running_is_a_retryable_error(service: Services, dag_id: str) -> None:
    from airflow.sdk.exceptions import AirflowException

    queue = "all.q"
    subprocess.run(["qmod", "-d", queue], check=True, capture_output=True)  # nothing starts: the job stays qw
    try:
        with DAG(dag_id, schedule=None, start_date=datetime(2026, 1, 1)):
            op = JobmonTaskOperator(task_id="ghost", command="true", poll_interval=0.5, lost_grace_s=2)
        trigger = _deferred(op, "ghost")
        subprocess.run(["qdel", trigger.job_id], check=True, capture_output=True)  # deleted while pending
        event = asyncio.run(asyncio.wait_for(anext(trigger.run()), 60)).payload
    finally:
        subprocess.run(["qmod", "-e", queue], check=True, capture_output=True)
    assert event["status"] == "X"
    context: Any = {"ti": SimpleNamespace(try_number=1, map_index=-1), "run_id": "ghost"}
    with pytest.raises(AirflowException):
        op.execute_complete(context, event)
    (attempt,) = instances(service, dag_id, "ghost")
    assert attempt["status"] == "E" and attempt["task_status"] == "G"  # retryable


def test_fifty_deferred_tasks_cost_one_qstat_per_poll(service: Services, dag_id: str) -> None:
    with DAG(dag_id, schedule=None, start_date=datetime(2026, 1, 1)):
        ops = [JobmonTaskOperator(task_id=f"t{i}", command="sleep 120", poll_interval=0.5) for i in range(50)]
    subprocess.run(["qmod", "-d", "all.q"], check=True, capture_output=True)  # 50 pending jobs, none running
    try:
        triggers = [_deferred(op, "fifty") for op in ops]
    finally:
        subprocess.run(["qmod", "-e", "all.q"], check=True, capture_output=True)
    qstat_calls: list[float] = []

    async def scenario() -> float:
        watcher = await triggers[0].watcher()
        cluster = watcher.poller.cluster
        real_run = cluster._run  # type: ignore[attr-defined]

        def counting_run(argv: Any, *args: Any, **kwargs: Any) -> Any:
            if os.path.basename(argv[0]) == "qstat":
                qstat_calls.append(time.monotonic())
            return real_run(argv, *args, **kwargs)

        cluster._run = counting_run  # type: ignore[attr-defined]
        tasks = [asyncio.create_task(anext(t.run())) for t in triggers]
        start = time.monotonic()
        await asyncio.sleep(5)
        elapsed = time.monotonic() - start
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await asyncio.gather(*(t.on_kill() for t in triggers))
        return elapsed

    elapsed = asyncio.run(scenario())
    wait_for(lambda: not {t.job_id for t in triggers} & qstat_job_ids(), 30)  # on_kill deleted every job
    # One poll per 0.5 s interval (plus the first); 50 per-task pollers would make ≥ 50 per interval.
    assert 0 < len(qstat_calls) <= elapsed / 0.5 + 2
    gaps = [b - a for a, b in itertools.pairwise(qstat_calls)]
    assert all(g >= 0.45 for g in gaps), gaps


def test_array_of_twenty_recovers_failures_and_a_memory_kill(service: Services, dag_id: str, tmp_path: Path) -> None:
    from jobmon_airflow.operators import JobmonArrayOperator
    from tests.support.arrays import assert_twenty_elements_recovered, element_template

    template, args = element_template(tmp_path)
    with DAG(dag_id, schedule=None, start_date=datetime(2026, 1, 1)) as dag:
        JobmonArrayOperator(
            task_id="elements",
            task_template=template,
            node_args={"i": list(range(20))},
            task_args={"folder": args["folder"]},
            op_args={"python": args["python"], "script": args["script"], "hold": 10},  # execd samples every few s
            poll_interval=1,
        )
    dag_run: Any = run_dag(dag)
    assert str(dag_run.state) == "success"
    assert_twenty_elements_recovered(service, dag_id)


def test_array_tc_caps_running_elements_in_accounting(service: Services, dag_id: str) -> None:
    from jobmon_airflow.operators import JobmonArrayOperator
    from jobmon_airflow.templates import TaskTemplate
    from tests.support.arrays import array_instances

    tt = TaskTemplate(name="nap", command_template="sleep {seconds} # {i}", node_args=["i"], op_args=["seconds"])
    with DAG(dag_id, schedule=None, start_date=datetime(2026, 1, 1)) as dag:
        JobmonArrayOperator(
            task_id="naps",
            task_template=tt,
            node_args={"i": list(range(4))},
            op_args={"seconds": 3},
            max_concurrently_running=1,  # the cluster has 2 slots: -tc 1 is what keeps them apart
            poll_interval=1,
        )
    dag_run: Any = run_dag(dag)
    assert str(dag_run.state) == "success"
    rows = array_instances(service, dag_id)
    infos = [accounting(r["distributor_id"]) for r in rows]
    spans = sorted((i.start_time, i.end_time) for i in infos)
    assert len(spans) == 4
    assert all(a_end <= b_start for (_, a_end), (b_start, _) in itertools.pairwise(spans)), spans


def test_workflow_concurrency_raised_while_the_array_runs_is_seen_in_accounting(service: Services, dag_id: str) -> None:
    """-tc 1, then `workflow concurrency -m 2` (its service call) once element 1 runs: the operator's trigger
    qalters the running batch within a poll, and accounting shows two elements at once afterwards."""
    import threading

    import sqlalchemy as sa

    from jobmon_airflow import models
    from jobmon_airflow.clusters.base import JobState
    from jobmon_airflow.operators import JobmonArrayOperator
    from jobmon_airflow.templates import TaskTemplate
    from tests.support.arrays import array_instances

    tt = TaskTemplate(name="nap", command_template="sleep {seconds} # {i}", node_args=["i"], op_args=["seconds"])
    with DAG(dag_id, schedule=None, start_date=datetime(2026, 1, 1)) as dag:
        JobmonArrayOperator(
            task_id="naps",
            task_template=tt,
            node_args={"i": list(range(4))},
            op_args={"seconds": 5},
            max_concurrently_running=1,
            poll_interval=1,
        )
    changed: list[float] = []

    def raise_limit() -> None:
        cluster, deadline = GridEngineCluster(), time.monotonic() + 120
        while time.monotonic() < deadline and not changed:
            jobs = [r["distributor_id"] for r in array_instances(service, dag_id) if r["distributor_id"]]
            if jobs and any(st.state is JobState.RUNNING for st in cluster.statuses(jobs).values()):
                wf = models.Workflow.__table__
                with service.engine.connect() as conn:
                    workflow_id = conn.execute(sa.select(wf.c.id).where(wf.c.dag_id == dag_id)).scalar_one()
                service.admin.set_concurrency(workflow_id, 2, user=service.admin.owner(workflow_id) or "")
                changed.append(time.time())
            time.sleep(0.3)

    changer = threading.Thread(target=raise_limit)
    changer.start()
    dag_run: Any = run_dag(dag)
    changer.join()
    assert str(dag_run.state) == "success" and changed
    rows = array_instances(service, dag_id)
    assert len({r["distributor_id"].split(".")[0] for r in rows}) == 1  # one batch, its -tc changed
    spans = sorted((i.start_time, i.end_time) for i in (accounting(r["distributor_id"]) for r in rows))
    assert len(spans) == 4
    assert max(sum(1 for s, e in spans if s <= t < e) for t, _ in spans) == 2, spans


def test_mapped_task_operator_on_grid_engine(service: Services, dag_id: str, tmp_path: Path) -> None:
    with DAG(dag_id, schedule=None, start_date=datetime(2026, 1, 1)) as dag:
        JobmonTaskOperator.partial(task_id="mapped", **FAST).expand(
            command=[f"echo $JOB_ID > {tmp_path}/out_{i}" for i in range(3)]
        )
    dag_run: Any = run_dag(dag)
    assert str(dag_run.state) == "success"
    (row,) = service.queries.workflow_status(dag_id=dag_id)
    tasks = service.queries.workflow_tasks(row["WF_ID"])
    assert sorted(t["TASK_NAME"] for t in tasks) == ["mapped[0]", "mapped[1]", "mapped[2]"]
    assert sorted(p.read_text().strip() for p in tmp_path.glob("out_*")) == sorted(t["DISTRIBUTOR_ID"] for t in tasks)


def test_find_jobs_by_name_on_grid_engine(gridengine: dict[str, str], tmp_path: Path) -> None:
    from jobmon_airflow.clusters.base import JobRequest
    from jobmon_airflow.resources import Resources

    cluster = GridEngineCluster()
    name = f"ti{uuid.uuid4().int % 10**9}.find-me"
    job_id = cluster.submit(JobRequest(name, ["sleep", "30"], Resources(), tmp_path))
    try:
        assert cluster.find_jobs(name) == [job_id]
        assert cluster.find_jobs(name + "x") == []
    finally:
        cluster.kill([job_id])
