"""JobmonTaskOperator end to end on the ``local`` cluster: real jobs, real worker nodes, the real State Manager over
HTTP, Airflow's ``dag.test()`` (which runs the trigger inline)."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from datetime import datetime, timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import sqlalchemy as sa
from airflow.sdk import DAG
from airflow.sdk.exceptions import TaskDeferred

from jobmon_airflow import models, paths
from jobmon_airflow.hooks.jobmon import JobmonHook
from jobmon_airflow.operators import JobmonTaskOperator
from jobmon_airflow.resources import ResourceError
from jobmon_airflow.service import Lifecycle, Services
from tests.conftest import free_port, run_dag
from tests.support.state import instances, wait_for

PY = sys.executable
pytestmark = pytest.mark.usefixtures("airflow_db", "state_manager")

FAST = {"poll_interval": 0.5, "retry_delay": timedelta(0), "heartbeat_interval": 5}


def make_dag(dag_id: str, **tasks: dict[str, Any]) -> DAG:
    with DAG(dag_id=dag_id, schedule=None, start_date=datetime(2026, 1, 1), catchup=False) as dag:
        for task_id, kwargs in tasks.items():
            JobmonTaskOperator(task_id=task_id, **{**FAST, **kwargs})
    return dag


@pytest.fixture
def service() -> Services:
    return JobmonHook().get_services()


def ti_states(dag_run: Any) -> dict[str, str]:
    return {ti.task_id: str(ti.state) for ti in dag_run.get_task_instances()}


def test_success_records_the_attempt(service: Services, tmp_path: Path) -> None:
    out = tmp_path / "out.txt"
    dag = make_dag(
        "jobmon_success",
        hello={"command": f"echo 'hello world' > {out}", "compute_resources": {"memory": "300M", "runtime": 60}},
    )
    dag_run: Any = run_dag(dag)
    assert str(dag_run.state) == "success"
    assert out.read_text() == "hello world\n"
    (attempt,) = instances(service, "jobmon_success", "hello")
    assert attempt["status"] == "D" and attempt["task_status"] == "D"
    assert attempt["exit_status"] == 0 and attempt["nodename"] and attempt["distributor_id"]
    assert attempt["resources"] == {"cores": 1, "memory": pytest.approx(300 / 1024), "runtime": 60, "queue": "local"}
    assert attempt["submitted_date"] is not None and attempt["maxrss"] > 0 and attempt["wallclock"] is not None
    rows = service.queries.workflow_status(dag_id="jobmon_success")
    assert rows[0]["WF_STATUS"] == "DONE" and rows[0]["DONE"] == rows[0]["TASKS"] == 1


def test_nonzero_exit_is_retried_with_a_second_instance(
    service: Services, tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    marker = tmp_path / "tried"
    command = f"if [ ! -e {marker} ]; then touch {marker}; echo 'first try broke: disk on fire' >&2; exit 3; fi"
    dag = make_dag("jobmon_retry", flaky={"command": command, "max_attempts": 3})
    dag_run: Any = run_dag(dag)
    assert str(dag_run.state) == "success"
    first, second = instances(service, "jobmon_retry", "flaky")
    assert (first["status"], first["exit_status"]) == ("E", 3)
    assert second["status"] == "D" and second["task_status"] == "D" and second["num_attempts"] == 2
    assert any("disk on fire" in e for e in first["errors"])  # the stderr tail in task_instance_error_log
    assert "disk on fire" in capfd.readouterr().out  # ... and in the Airflow task log


def test_attempts_used_up_fail_the_task(service: Services) -> None:
    dag = make_dag("jobmon_exhausted", broken={"command": "echo nope >&2; exit 5", "max_attempts": 2})
    dag_run: Any = run_dag(dag)
    assert str(dag_run.state) == "failed"
    attempts = instances(service, "jobmon_exhausted", "broken")
    assert [a["status"] for a in attempts] == ["E", "E"]
    assert attempts[-1]["task_status"] == "F"
    assert service.queries.workflow_status(dag_id="jobmon_exhausted")[0]["WF_STATUS"] == "FAILED"


# Memory: a parent python with three children of 60 MiB each sums to ≈ 236 MiB of virtual memory (each process
# alone is far below the per-process limit); the worker node adds ≈ 26 MiB and bash ≈ 8 MiB. 240M kills it,
# 1.5 × 240M = 360M fits.
CHILD = "import time; b = bytearray(60 * 2**20); time.sleep(1.5)"
THREE_CHILDREN = (
    f"{PY} -c \"import subprocess, sys; ps = [subprocess.Popen([sys.executable, '-c', '{CHILD}']) for _ in range(3)];"
    ' sys.exit(max(p.wait() for p in ps))"'
)


def test_memory_kill_is_retried_with_scaled_memory(service: Services) -> None:
    dag = make_dag("jobmon_memory", hungry={"command": THREE_CHILDREN, "compute_resources": {"memory": "240M"}})
    dag_run: Any = run_dag(dag)
    assert str(dag_run.state) == "success", ti_states(dag_run)
    killed, retried = instances(service, "jobmon_memory", "hungry")
    assert killed["status"] == "Z" and killed["exit_status"] == 137
    assert any("h_vmem" in e or "memory" in e for e in killed["errors"]), killed["errors"]
    assert retried["status"] == "D"
    assert retried["resources"]["memory"] == pytest.approx(killed["resources"]["memory"] * 1.5, rel=0.01)
    assert retried["resources"]["runtime"] == killed["resources"]["runtime"] * 1.5


def test_runtime_kill_is_retried_with_scaled_runtime(service: Services) -> None:
    dag = make_dag("jobmon_runtime", slow={"command": "sleep 5", "compute_resources": {"runtime": 4}})
    dag_run: Any = run_dag(dag)
    assert str(dag_run.state) == "success", ti_states(dag_run)
    killed, retried = instances(service, "jobmon_runtime", "slow")
    assert killed["status"] == "Z" and any("wallclock" in e or "runtime" in e for e in killed["errors"])
    assert (killed["resources"]["runtime"], retried["resources"]["runtime"]) == (4, 6)
    assert retried["status"] == "D"


def test_invalid_resources_fail_before_any_job() -> None:
    with pytest.raises(ResourceError, match=r"compute_resources\.memory"):
        JobmonTaskOperator(task_id="bad", command="true", compute_resources={"memory": "lots"})
    with pytest.raises(ResourceError, match=r"compute_resources: unknown key\(s\) mem\b"):
        JobmonTaskOperator(task_id="bad", command="true", compute_resources={"mem": "1G"})
    with pytest.raises(ValueError, match="max_attempts"):
        JobmonTaskOperator(task_id="bad", command="true", max_attempts=0)


def test_invalid_templated_resources_fail_without_submitting(service: Services) -> None:
    dag = make_dag("jobmon_bad_template", bad={"command": "true", "compute_resources": {"runtime": "{{ 'forever' }}"}})
    dag_run: Any = run_dag(dag)
    assert str(dag_run.state) == "failed"
    assert instances(service, "jobmon_bad_template", "bad") == []  # nothing was queued, no job started
    with service.engine.connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(models.Task.__table__)).scalar_one() >= 0


def _execute_until_deferred(op: JobmonTaskOperator, run_id: str) -> Any:
    context: Any = {"ti": SimpleNamespace(try_number=1, map_index=-1), "run_id": run_id}
    with pytest.raises(TaskDeferred) as deferred:
        op.execute(context)
    return deferred.value.trigger


def _process_group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


def test_killing_the_deferred_task_kills_the_job_and_records_k(service: Services) -> None:
    with DAG("jobmon_kill_deferred", schedule=None, start_date=datetime(2026, 1, 1)):
        op = JobmonTaskOperator(task_id="sleeper", command="sleep 300", poll_interval=0.5)
    trigger = _execute_until_deferred(op, "kill-deferred")
    ti_id = trigger.task_instance_id

    async def scenario() -> None:
        waiting = asyncio.create_task(anext(trigger.run()))
        await asyncio.to_thread(wait_for, lambda: service.queries.task_instance(ti_id).status == "R")
        await trigger.on_kill()  # what the triggerer does when the user marks the task failed (Airflow 3.3+)
        event = await asyncio.wait_for(waiting, 20)
        assert event.payload["status"] == "K"

    asyncio.run(scenario())
    view = service.queries.task_instance(ti_id)
    assert view.status == "K"
    (attempt,) = instances(service, "jobmon_kill_deferred", "sleeper")
    wait_for(lambda: not _process_group_alive(attempt["process_group_id"]))
    assert any("killed" in e for e in attempt["errors"])


def test_killing_the_blocking_task_kills_the_job_and_records_k(service: Services) -> None:
    import threading

    from airflow.sdk.exceptions import AirflowFailException

    with DAG("jobmon_kill_blocking", schedule=None, start_date=datetime(2026, 1, 1)):
        op = JobmonTaskOperator(task_id="sleeper", command="sleep 300", poll_interval=0.5, deferrable=False)
    context: Any = {"ti": SimpleNamespace(try_number=1, map_index=-1), "run_id": "kill-blocking"}
    errors: list[BaseException] = []

    def run() -> None:
        try:
            op.execute(context)
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=run)
    thread.start()
    wait_for(lambda: bool(instances(service, "jobmon_kill_blocking", "sleeper")))
    ti_id = instances(service, "jobmon_kill_blocking", "sleeper")[0]["id"]
    wait_for(lambda: service.queries.task_instance(ti_id).status == "R")
    op.on_kill()
    thread.join(20)
    assert not thread.is_alive()
    assert len(errors) == 1 and isinstance(errors[0], AirflowFailException)
    (attempt,) = instances(service, "jobmon_kill_blocking", "sleeper")
    assert attempt["status"] == "K" and attempt["task_status"] == "F"
    wait_for(lambda: not _process_group_alive(attempt["process_group_id"]))


@pytest.mark.parametrize(("command", "expected"), [("echo fine", "D"), ("echo broken >&2; exit 3", "E")])
def test_state_manager_down_the_exit_record_keeps_the_true_outcome(
    service: Services, monkeypatch: pytest.MonkeyPatch, command: str, expected: str
) -> None:
    # Nobody listens on this port: every report of the worker node fails; only its exit record remains.
    monkeypatch.setenv("JOBMON_AIRFLOW_STATE_MANAGER_URL", f"http://127.0.0.1:{free_port()}/jobmon")
    monkeypatch.setenv(
        "AIRFLOW_CONN_JOBMON_DEFAULT", json.dumps({"conn_type": "jobmon", "extra": {"worker_http_retry_seconds": 1}})
    )
    dag_id = f"jobmon_sm_down_{expected}"
    dag = make_dag(dag_id, job={"command": command, "max_attempts": 1})
    dag_run: Any = run_dag(dag)
    assert str(dag_run.state) == ("success" if expected == "D" else "failed")
    (attempt,) = instances(service, dag_id, "job")
    assert attempt["status"] == expected
    assert attempt["exit_status"] == (0 if expected == "D" else 3)
    record = json.loads(Path(attempt["exit_record"]).read_text())
    assert record["reported"] is False and record["status"] == expected
    if expected == "E":
        assert any("broken" in e for e in attempt["errors"])


def test_state_database_is_the_embedded_sqlite_file_by_default() -> None:
    assert JobmonHook().get_db_url() == paths.default_db_url()
    assert (
        paths.default_db_url().startswith("sqlite:///") and os.environ["JOBMON_AIRFLOW_HOME"] in paths.default_db_url()
    )


def test_instance_whose_heartbeats_stop_is_triaged_from_what_the_job_left(service: Services) -> None:
    import signal

    from airflow.sdk.exceptions import AirflowException

    with DAG("jobmon_triage", schedule=None, start_date=datetime(2026, 1, 1)):
        op = JobmonTaskOperator(task_id="hang", command="sleep 300", poll_interval=0.5, heartbeat_interval=1)
    trigger = _execute_until_deferred(op, "triage")
    ti_id = trigger.task_instance_id
    seen: list[str] = []

    async def scenario() -> Any:
        waiting = asyncio.create_task(anext(trigger.run()))
        await asyncio.to_thread(wait_for, lambda: service.queries.task_instance(ti_id).status == "R")
        worker = service.queries.task_instance(ti_id)
        pgid = instances(service, "jobmon_triage", "hang")[0]["process_group_id"]
        assert worker.status == "R" and pgid
        os.killpg(pgid, signal.SIGSTOP)  # the job is frozen: no heartbeats, still in the queue
        await asyncio.to_thread(wait_for, lambda: service.queries.task_instance(ti_id).status == "T")
        seen.append(service.queries.task_instance(ti_id).status)
        os.killpg(pgid, signal.SIGKILL)  # then it dies without reporting
        return (await asyncio.wait_for(waiting, 30)).payload

    event = asyncio.run(scenario())
    assert seen == ["T"]
    assert event["source"] in ("accounting", "lost") and event["status"] in ("E", "Z", "U")
    context: Any = {"ti": SimpleNamespace(try_number=1, map_index=-1), "run_id": "triage"}
    with pytest.raises(AirflowException):
        op.execute_complete(context, event)
    (attempt,) = instances(service, "jobmon_triage", "hang")
    assert attempt["status"] == event["status"] and attempt["task_status"] in ("G", "A")  # retryable


def test_fatal_error_fails_without_retry(service: Services) -> None:
    # 198: Jobmon's worker-node environment failure, fatal (F) whatever attempts remain.
    dag = make_dag("jobmon_fatal", doomed={"command": "echo 'wrong environment' >&2; exit 198", "max_attempts": 3})
    dag_run: Any = run_dag(dag)
    assert str(dag_run.state) == "failed"
    (attempt,) = instances(service, "jobmon_fatal", "doomed")  # one attempt, no retry
    assert (attempt["status"], attempt["task_status"]) == ("F", "F")
    assert any("wrong environment" in e for e in attempt["errors"])


def test_token_appears_in_no_command_line_and_no_environment(service: Services) -> None:
    from pathlib import Path as _Path

    with DAG("jobmon_token_hidden", schedule=None, start_date=datetime(2026, 1, 1)):
        op = JobmonTaskOperator(task_id="sleeper", command="sleep 30", poll_interval=0.5)
    trigger = _execute_until_deferred(op, "token-hidden")
    ti_id = trigger.task_instance_id
    try:
        wait_for(lambda: service.queries.task_instance(ti_id).status == "R")  # the worker authenticated with the token
        token_files = list((paths.jobmon_home() / "logs").rglob(f"ti-{ti_id}.token"))
        (token_file,) = token_files
        assert oct(token_file.stat().st_mode & 0o777) == "0o600"
        token = token_file.read_text().encode()
        seen = []
        for proc in _Path("/proc").iterdir():
            if not proc.name.isdigit():
                continue
            for part in ("cmdline", "environ"):
                try:
                    if token in (proc / part).read_bytes():
                        seen.append((proc.name, part))
                except OSError:
                    continue  # gone, or not ours to read
        assert seen == []
    finally:
        from jobmon_airflow.execution import kill_instances

        kill_instances(service, op.cluster_backend, {ti_id: trigger.job_id})


def test_crash_between_submission_and_storing_the_job_id_reattaches_by_job_name(
    service: Services, monkeypatch: pytest.MonkeyPatch
) -> None:
    from jobmon_airflow.clusters.local import LocalCluster

    def make() -> JobmonTaskOperator:
        with DAG("jobmon_crash_window", schedule=None, start_date=datetime(2026, 1, 1)):
            return JobmonTaskOperator(task_id="orphan", command="sleep 2", poll_interval=0.5, heartbeat_interval=60)

    def crash(*args: Any, **kwargs: Any) -> None:
        raise RuntimeError("the Airflow worker died right after qsub")

    with monkeypatch.context() as m:
        m.setattr(Lifecycle, "log_distributor_ids", crash)
        context: Any = {"ti": SimpleNamespace(try_number=1, map_index=-1), "run_id": "crash"}
        with pytest.raises(RuntimeError, match="died right after qsub"):
            make().execute(context)
    (orphan,) = instances(service, "jobmon_crash_window", "orphan")
    trigger = _execute_until_deferred(make(), "crash")  # the retry finds the job by its name
    (adopted,) = instances(service, "jobmon_crash_window", "orphan")
    assert adopted["id"] == orphan["id"] == trigger.task_instance_id
    cluster = LocalCluster(paths.jobmon_home() / "local-cluster")
    assert cluster.find_jobs(f"ti{orphan['id']}.orphan") in ([trigger.job_id], [])  # one job, maybe already done
    event = asyncio.run(asyncio.wait_for(anext(trigger.run()), 30)).payload
    assert event["status"] == "D"


def test_next_try_adopts_an_end_no_airflow_try_saw_and_a_cleared_task_runs_again(service: Services) -> None:
    def make() -> JobmonTaskOperator:
        with DAG("jobmon_adopt_end", schedule=None, start_date=datetime(2026, 1, 1)):
            return JobmonTaskOperator(task_id="quick", command="echo done", poll_interval=0.5)

    trigger = _execute_until_deferred(make(), "adopt")  # then the Airflow worker dies: nobody completes it
    wait_for(lambda: service.queries.task_instance(trigger.task_instance_id).status == "D")
    context: Any = {"ti": SimpleNamespace(try_number=2, map_index=-1), "run_id": "adopt"}
    result = make().execute(context)  # the retry: the job already succeeded
    assert result["task_instance_id"] == trigger.task_instance_id
    assert len(instances(service, "jobmon_adopt_end", "quick")) == 1  # not run again
    # Airflow saw that end now; running the task again means a user cleared it: a new pass, a new job.
    second = _execute_until_deferred(make(), "adopt")
    assert second.task_instance_id != trigger.task_instance_id
    assert len(instances(service, "jobmon_adopt_end", "quick")) == 2
    event = asyncio.run(asyncio.wait_for(anext(second.run()), 30)).payload
    assert event["status"] == "D"
