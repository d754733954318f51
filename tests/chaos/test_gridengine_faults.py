"""Chaos on the real Grid Engine cluster and MariaDB: each test injects ONE real fault into a real run (the qmaster
down at submission or while jobs are watched, the execd killed under a running job, MariaDB restarted under an
array, the submitting process killed between qsub and storing the job id, the log directory's disk full) and checks
that nothing was lost and nothing ran twice:

* one accounting record (``qacct -j``) per element and attempt, and the command's own marker written once;
* every Jobmon task instance final, in the status the job really ended with (D ⇔ exit 0 in accounting);
* every task in its right final state (D).

Each test fills in its ``fault`` ledger entry. The daemons are stopped and started as ``scripts/setup_services.sh``
starts them (:mod:`tests.chaos.faults`); every test restores them, answering, however it ends.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import textwrap
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import sqlalchemy as sa
from airflow.sdk import DAG
from airflow.sdk.exceptions import AirflowException, AirflowFailException

from jobmon_airflow import states
from jobmon_airflow.hooks.jobmon import JobmonHook
from jobmon_airflow.operators import JobmonArrayOperator, JobmonTaskOperator
from jobmon_airflow.server.app import start_in_thread
from jobmon_airflow.service import Services
from jobmon_airflow.templates import TaskTemplate
from tests.chaos import faults
from tests.chaos.conftest import Fault
from tests.chaos.faults import AccountingRecord, Background
from tests.conftest import MARIADB_URL, free_port, require_service, run_dag
from tests.support.airflow_services import wait_for
from tests.support.arrays import array_instances
from tests.support.databases import mysql_connection
from tests.support.state import instances

pytestmark = [
    pytest.mark.chaos,
    pytest.mark.gridengine,
    pytest.mark.mariadb,
    pytest.mark.usefixtures("airflow_db"),
]

PY = sys.executable
ROOT = Path(__file__).resolve().parents[2]
TIS = states.TaskInstanceStatus
FAST: dict[str, Any] = {"poll_interval": 1.0, "retry_delay": timedelta(0), "lost_grace_s": 30.0}


# -- connections and services ---------------------------------------------------------------------------------------


@dataclass
class Env:
    services: Services
    logs: Path  # the gridengine connection's log_dir
    closed_port: int  # where no State Manager listens


@pytest.fixture(scope="module")
def mariadb_url() -> Iterator[str]:
    """A fresh MariaDB database, as the session's ``mariadb_url`` (tests/conftest.py) makes one, but created and
    dropped through an engine that pings before use: this module restarts MariaDB, which breaks a connection
    pooled across the restart (the session fixture's admin engine would fail its DROP DATABASE at teardown)."""
    name = f"jobmon_test_{uuid.uuid4().hex[:12]}"
    server = sa.engine.make_url(MARIADB_URL)
    admin = sa.create_engine(server, pool_pre_ping=True)
    problem: str | None = None
    try:
        with admin.connect() as conn:
            conn.execute(sa.text(f"CREATE DATABASE `{name}`"))
    except Exception as exc:  # any failure to connect or create means the service is not there
        problem = f"{type(exc).__name__}: {str(exc)[:200]}"
    require_service(problem, "MariaDB")
    yield server.set(database=name).render_as_string(hide_password=False)
    faults.start_mariadb()  # whatever happened
    with admin.connect() as conn:
        conn.execute(sa.text(f"DROP DATABASE IF EXISTS `{name}`"))
    admin.dispose()


@pytest.fixture(scope="module")
def env(gridengine: dict[str, str], mariadb_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    """Connections as a deployment has them: jobmon → MySQL connection → MariaDB, the State Manager over HTTP on
    that database; ``gridengine_default`` waits out an unreachable qmaster for 60 s at submission,
    ``gridengine_impatient`` for 5 s; ``jobmon_no_state_manager`` sends workers to a port nobody listens on."""
    require_service(None if os.geteuid() == 0 else "not root", "root (to stop and start the daemons)")
    faults.restore_services()
    mysql = mysql_connection(mariadb_url)
    logs = tmp_path_factory.mktemp("chaos-sge-logs")
    closed_port = free_port()
    jobmon = {"mysql_conn_id": "chaos_mariadb", "cluster": "gridengine", "worker_http_retry_seconds": 60}
    sge = {"log_dir": str(logs), "poll_interval": 1}
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("AIRFLOW_CONN_CHAOS_MARIADB", json.dumps(mysql))
        mp.setenv("AIRFLOW_CONN_JOBMON_DEFAULT", json.dumps({"conn_type": "jobmon", "extra": jobmon}))
        no_sm = {
            **jobmon,
            "state_manager_url": f"http://127.0.0.1:{closed_port}/jobmon",
            "worker_http_retry_seconds": 2,
        }
        mp.setenv("AIRFLOW_CONN_JOBMON_NO_STATE_MANAGER", json.dumps({"conn_type": "jobmon", "extra": no_sm}))
        mp.setenv(
            "AIRFLOW_CONN_GRIDENGINE_DEFAULT",
            json.dumps({"conn_type": "gridengine", "extra": {**sge, "submit_retry_seconds": 60}}),
        )
        mp.setenv(
            "AIRFLOW_CONN_GRIDENGINE_IMPATIENT",
            json.dumps({"conn_type": "gridengine", "extra": {**sge, "submit_retry_seconds": 5}}),
        )
        hook = JobmonHook()
        port = free_port()
        server = start_in_thread(port, hook.get_db_url())
        mp.setenv("JOBMON_AIRFLOW_STATE_MANAGER_URL", f"http://127.0.0.1:{port}/jobmon")
        yield Env(hook.get_services(), logs, closed_port)
        server.should_exit = True


@pytest.fixture(autouse=True)
def _services_back(env: Env) -> Iterator[None]:
    """Every service up and answering before the test, and again after it, whatever the test did."""
    faults.restore_services()
    yield
    faults.restore_services()


@pytest.fixture
def dag_id(request: pytest.FixtureRequest) -> str:
    """Unique per run: the MariaDB database outlives a pytest session."""
    return f"chaos_{request.node.name[:40]}_{uuid.uuid4().hex[:8]}".replace("[", "_").replace("]", "_")


def context(op: JobmonTaskOperator, run_id: str, try_number: int) -> Any:
    """What ``execute`` reads of an Airflow try (as test_operator_gridengine does)."""
    return {
        "ti": SimpleNamespace(try_number=try_number, map_index=-1, max_tries=op.retries),
        "run_id": run_id,
    }


def when(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    wait_for(predicate, timeout, what, interval=0.2)


# -- judging a run ----------------------------------------------------------------------------------------------------


@dataclass
class Unit:
    """One task or array element: its instances (oldest first), how often its command ran, its accounting."""

    name: str
    instances: list[dict[str, Any]]
    ran: int
    records: dict[str, list[AccountingRecord]] = field(default_factory=dict)


def marker_lines(path: Path) -> int:
    return len(path.read_text().splitlines()) if path.exists() else 0


def agrees(status: str, record: AccountingRecord) -> bool:
    """A final status that matches what Grid Engine says the job did."""
    clean_exit = record.failed == "0" and record.exit_status == 0
    return clean_exit if status == TIS.DONE else not clean_exit


def judge(fault: Fault, units: list[Unit]) -> list[str]:
    """Fill in the ledger from what the units show; the problems found (none: nothing lost, nothing twice).

    A duplicate: a command that ran more than once, or an attempt with more than one accounting record. Lost: a
    unit whose instances are not all final, or not what their jobs did, or whose task did not end D."""
    problems: list[str] = []
    fault.runs = len(units)
    fault.completed = fault.duplicates = fault.lost = 0
    for u in units:
        twice: list[str] = []
        wrong: list[str] = []
        if u.ran > 1:
            twice.append(f"{u.name}: the command ran {u.ran} times")
        if u.ran == 0:
            wrong.append(f"{u.name}: the command never ran")
        for inst in u.instances:
            where = f"{u.name}: instance {inst['id']} (job {inst['distributor_id']})"
            if inst["status"] not in states.TASK_INSTANCE_FINAL:
                wrong.append(f"{where} not final: {inst['status']}")
            if not inst["distributor_id"]:
                if inst["status"] != TIS.NO_DISTRIBUTOR_ID:
                    wrong.append(f"{where}: no job id, yet {inst['status']} rather than W")
                continue
            recs = u.records.get(inst["distributor_id"], [])
            if len(recs) > 1:
                twice.append(f"{where}: {len(recs)} accounting records")
            if not recs:
                wrong.append(f"{where}: no accounting record")
            elif not agrees(inst["status"], recs[-1]):
                wrong.append(f"{where}: ended {inst['status']}, accounting says {recs[-1]}")
        last = u.instances[-1] if u.instances else None
        if last is None or (last["status"], last["task_status"]) != (TIS.DONE, states.TaskStatus.DONE):
            wrong.append(f"{u.name}: last instance/task not D/D: {last and (last['status'], last['task_status'])}")
        fault.duplicates += max(0, u.ran - 1) + sum(
            max(0, len(u.records.get(i["distributor_id"] or "", [])) - 1) for i in u.instances
        )
        fault.lost += int(bool(wrong))
        fault.completed += int(not wrong and not twice)
        problems += twice + wrong
    fault.notes += problems
    return problems


def task_unit(env: Env, dag_id: str, task_id: str, marker: Path, accounting_timeout: float = 30) -> Unit:
    rows = instances(env.services, dag_id, task_id)
    ids = [r["distributor_id"] for r in rows if r["distributor_id"]]
    return Unit(task_id, rows, marker_lines(marker), faults.records_by_element(ids, accounting_timeout) if ids else {})


def array_units(env: Env, dag_id: str, markers: Path) -> list[Unit]:
    rows = array_instances(env.services, dag_id)
    records = faults.records_by_element([r["distributor_id"] for r in rows if r["distributor_id"]])
    by_element: dict[int, list[dict[str, Any]]] = {}
    for r in rows:
        by_element.setdefault(r["element"], []).append(r)
    return [
        Unit(f"element {i}", rs, marker_lines(markers / f"ran-{i}"), records) for i, rs in sorted(by_element.items())
    ]


def jobs_named(env: Env, dag_id: str, task_id: str) -> list[AccountingRecord]:
    """Accounting records of every job of the task's instances, found by job name (``ti<instance id>.<task
    name>``; the task name is the DAG id, unique to the test run): a qsub whose id was never stored would show here
    and nowhere else."""
    return [
        r
        for inst in instances(env.services, dag_id, task_id)
        for r in faults.accounting_records(f"ti{inst['id']}.{dag_id}")
    ]


def worker_report_failures(env: Env, dag_id: str) -> int:
    """State Manager calls the run's worker nodes saw fail (their log lines in the jobs' .e files)."""
    return sum(
        line.count(" failed")
        for path in (env.logs / dag_id).rglob("*.e*")
        for line in path.read_text(errors="replace").splitlines()
        if "jobmon-worker:" in line
    )


def nap_array(dag_id: str, markers: Path, elements: int, seconds: float, **kwargs: Any) -> DAG:
    """An array whose element i sleeps, then appends a line to ``markers/ran-i`` (how often it really ran)."""
    template = TaskTemplate(
        name="nap",
        command_template="sleep {seconds} && echo $JOB_ID.$SGE_TASK_ID >> {folder}/ran-{i}",
        node_args=["i"],
        task_args=["folder"],
        op_args=["seconds"],
        default_resources={"memory": "256M", "runtime": 300},
    )
    with DAG(dag_id=dag_id, schedule=None, start_date=datetime(2026, 1, 1), catchup=False) as dag:
        JobmonArrayOperator(
            task_id="naps",
            task_template=template,
            node_args={"i": list(range(elements))},
            task_args={"folder": str(markers)},
            op_args={"seconds": seconds},
            **{**FAST, **kwargs},
        )
    return dag


def instance_statuses(env: Env, dag_id: str) -> list[str]:
    return [r["status"] for r in array_instances(env.services, dag_id)]


# -- 1. the qmaster down at submission --------------------------------------------------------------------------------


def run_with_outage(
    env: Env,
    dag_id: str,
    dag: Any,
    stop: Callable[[], None],
    start: Callable[[], None],
    down_s: float,
    caplog: pytest.LogCaptureFixture,
) -> tuple[Any, int]:
    """Run the DAG while a thread stops a service once an element runs and starts it again ``down_s`` later;
    the DAG run and how many polls failed meanwhile."""

    def outage() -> None:
        # An element shorter than the worker's running-report delay reports running and done at once (log_ran):
        # it may never be seen in R, so "has run" is R or D.
        when(lambda: {TIS.RUNNING, TIS.DONE} & set(instance_statuses(env, dag_id)), 120, "an element to run")
        stop()
        try:
            time.sleep(down_s)
        finally:
            start()

    fault_thread = Background(outage)
    fault_thread.start()
    with caplog.at_level(logging.INFO, logger="jobmon_airflow"):
        dag_run: Any = run_dag(dag)
    fault_thread.join_checked()
    return dag_run, sum("poll failed" in r.getMessage() for r in caplog.records)


def test_qmaster_down_at_submission_is_waited_out(
    env: Env, dag_id: str, tmp_path: Path, fault: Fault, caplog: pytest.LogCaptureFixture
) -> None:
    fault.fault = "sge_qmaster down at submission, back after 10 s (retry budget 60 s)"
    marker = tmp_path / "ran"
    with DAG(dag_id, schedule=None, start_date=datetime(2026, 1, 1)):
        op = JobmonTaskOperator(task_id="t", name=dag_id, command=f"echo $JOB_ID >> {marker}", deferrable=False, **FAST)
    op.cluster_backend.queue_limits(None)  # limits known: what meets the outage is qsub itself
    faults.stop_qmaster()

    def come_back() -> None:
        time.sleep(10)
        faults.start_qmaster()

    comeback = Background(come_back)
    started = time.monotonic()
    comeback.start()
    with caplog.at_level(logging.WARNING, logger="jobmon_airflow.clusters.gridengine"):
        result = op.execute(context(op, "r1", 1))
    comeback.join_checked()
    waited = time.monotonic() - started

    unit = task_unit(env, dag_id, "t", marker)
    problems = judge(fault, [unit])
    fault.notes.append(f"the try took {waited:.0f}s (qmaster back after 10 s), result {result}")
    assert fault.duplicates == 0 and fault.lost == 0, problems
    assert not problems, problems
    (attempt,) = unit.instances
    assert result["job_id"] == attempt["distributor_id"]
    retries = [r.getMessage() for r in caplog.records if "qmaster unreachable, trying again" in r.getMessage()]
    assert len(retries) >= 2 and all(m.startswith("qsub:") for m in retries), retries  # qsub waited, with back-off
    assert waited >= 9
    assert len(jobs_named(env, dag_id, "t")) == 1


def test_qmaster_down_past_the_budget_fails_the_try_then_the_next_try_submits_once(
    env: Env, dag_id: str, tmp_path: Path, fault: Fault
) -> None:
    fault.fault = "sge_qmaster down past a 5 s retry budget; next try after it is back"
    marker = tmp_path / "ran"
    with DAG(dag_id, schedule=None, start_date=datetime(2026, 1, 1)):
        op = JobmonTaskOperator(
            task_id="t",
            name=dag_id,
            command=f"echo $JOB_ID >> {marker}",
            deferrable=False,
            gridengine_conn_id="gridengine_impatient",
            **FAST,
        )
    op.cluster_backend.queue_limits(None)  # limits known: the try gets as far as qsub (an instance is queued)
    faults.stop_qmaster()
    try:
        started = time.monotonic()
        with pytest.raises(AirflowException) as failed:
            op.execute(context(op, "r1", 1))
        gave_up_after = time.monotonic() - started
    finally:
        faults.start_qmaster()
    assert type(failed.value) is not AirflowFailException, "an unreachable qmaster must leave the task retryable"
    assert "unavailable" in str(failed.value)
    assert 4 <= gave_up_after < 30
    (first,) = instances(env.services, dag_id, "t")
    assert (first["status"], first["distributor_id"]) == (TIS.NO_DISTRIBUTOR_ID, None)
    assert first["task_status"] != states.TaskStatus.ERROR_FATAL
    assert faults.accounting_records(f"ti{first['id']}.{dag_id}") == []  # no job was made
    faults.wait_queue_usable()

    result = op.execute(context(op, "r1", 2))  # Airflow's retry, the qmaster back
    unit = task_unit(env, dag_id, "t", marker)
    problems = judge(fault, [unit])
    fault.notes.append(f"first try gave up after {gave_up_after:.0f}s; second try {result}")
    assert fault.duplicates == 0 and fault.lost == 0, problems
    assert not problems, problems
    assert [i["status"] for i in unit.instances] == [TIS.NO_DISTRIBUTOR_ID, TIS.DONE]
    assert len(jobs_named(env, dag_id, "t")) == 1  # exactly one job over both tries


# -- 2. the qmaster down while jobs are watched -----------------------------------------------------------------------


def test_qmaster_down_while_an_array_runs(
    env: Env, dag_id: str, tmp_path: Path, fault: Fault, caplog: pytest.LogCaptureFixture
) -> None:
    fault.fault = "sge_qmaster down 15 s while a 10-element array runs"
    markers = tmp_path / "markers"
    markers.mkdir()
    dag = nap_array(dag_id, markers, elements=10, seconds=4)

    dag_run, failed_polls = run_with_outage(env, dag_id, dag, faults.stop_qmaster, faults.start_qmaster, 15, caplog)
    units = array_units(env, dag_id, markers)
    problems = judge(fault, units)
    fault.notes.append(f"{failed_polls} polls failed during the outage")
    assert fault.duplicates == 0 and fault.lost == 0, problems
    assert str(dag_run.state) == "success", problems
    assert not problems, problems
    assert len(units) == 10 and all(len(u.instances) == 1 for u in units)
    assert failed_polls > 0, "the outage never met a poll: the fault did not hit the run"


# -- 3. the execd killed under a running job --------------------------------------------------------------------------


def test_execd_killed_and_restarted_under_a_running_job(env: Env, dag_id: str, tmp_path: Path, fault: Fault) -> None:
    fault.fault = "sge_execd SIGKILLed under a running job, restarted 5 s later"
    marker = tmp_path / "ran"
    with DAG(dag_id, schedule=None, start_date=datetime(2026, 1, 1)):
        op = JobmonTaskOperator(
            task_id="t", name=dag_id, command=f"sleep 20 && echo $JOB_ID >> {marker}", deferrable=False, **FAST
        )

    def crash() -> None:
        when(
            lambda: any(i["status"] == TIS.RUNNING for i in instances(env.services, dag_id, "t")),
            120,
            "the job to run",
        )
        time.sleep(2)
        faults.stop_execd(signal.SIGKILL)
        assert not marker.exists(), "the job ended before the execd was killed: no fault injected"
        try:
            time.sleep(5)
        finally:
            faults.start_execd()

    fault_thread = Background(crash)
    fault_thread.start()
    result = op.execute(context(op, "r1", 1))
    fault_thread.join_checked()

    # The worker reported D before its job ended for Grid Engine; a re-attached execd notices the end of a
    # shepherd it did not start only on a later check: the record may come a minute after the job ended.
    unit = task_unit(env, dag_id, "t", marker, accounting_timeout=150)
    problems = judge(fault, [unit])
    fault.notes.append(f"result {result}")
    assert fault.duplicates == 0 and fault.lost == 0, problems
    assert not problems, problems
    assert len(jobs_named(env, dag_id, "t")) == 1


# -- 4. MariaDB restarted under an array ------------------------------------------------------------------------------


def test_mariadb_restarted_while_an_array_runs(
    env: Env, dag_id: str, tmp_path: Path, fault: Fault, caplog: pytest.LogCaptureFixture
) -> None:
    fault.fault = "MariaDB (Jobmon DB) down 10 s while a 10-element array runs"
    markers = tmp_path / "markers"
    markers.mkdir()
    # Heartbeats every 2 s: the outage outlasts a report-by deadline, so heartbeats fail and triage can strike.
    dag = nap_array(dag_id, markers, elements=10, seconds=4, heartbeat_interval=2)

    dag_run, failed_polls = run_with_outage(env, dag_id, dag, faults.stop_mariadb, faults.start_mariadb, 10, caplog)
    units = array_units(env, dag_id, markers)
    problems = judge(fault, units)
    failed_reports = worker_report_failures(env, dag_id)
    fault.notes.append(f"{failed_polls} polls and {failed_reports} worker reports failed during the outage")
    assert fault.duplicates == 0 and fault.lost == 0, problems
    assert str(dag_run.state) == "success", problems
    assert not problems, problems
    assert len(units) == 10 and all(len(u.instances) == 1 for u in units)
    assert failed_polls > 0 and failed_reports > 0, "the outage did not hit the run"


# -- 5. the submitter SIGKILLed between qsub and storing the job id ---------------------------------------------------

SUBMIT_THEN_DIE = textwrap.dedent(
    """
    import os, signal, sys
    from datetime import datetime
    from types import SimpleNamespace
    from airflow.sdk import DAG
    from jobmon_airflow.clusters.gridengine import GridEngineCluster
    from jobmon_airflow.operators import JobmonTaskOperator

    dag_id, marker, seconds, try_number, die = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), sys.argv[5]
    if die == "die":
        real_submit = GridEngineCluster.submit

        def submit_then_die(self, job):
            job_id = real_submit(self, job)  # the real qsub returned: the job exists, its id is not stored yet
            print("submitted", job_id, flush=True)
            os.kill(os.getpid(), signal.SIGKILL)

        GridEngineCluster.submit = submit_then_die
    with DAG(dag_id, schedule=None, start_date=datetime(2026, 1, 1)):
        op = JobmonTaskOperator(
            task_id="t",
            name=dag_id,
            command=f"sleep {seconds}; echo $JOB_ID >> {marker}",
            deferrable=False,
            poll_interval=1,
        )
    ti = SimpleNamespace(try_number=try_number, map_index=-1, max_tries=op.retries)
    print("result", op.execute({"ti": ti, "run_id": "r1"}), flush=True)
    """
)


@pytest.mark.parametrize("seconds", [15, 0], ids=["job-still-running", "job-ended-before-next-try"])
def test_submitter_killed_between_qsub_and_storing_the_job_id(
    env: Env, dag_id: str, tmp_path: Path, fault: Fault, seconds: int
) -> None:
    fault.fault = f"submitter SIGKILLed right after qsub ({'running' if seconds else 'ended'} at next try)"
    script = tmp_path / "submit.py"
    script.write_text(SUBMIT_THEN_DIE)
    marker = tmp_path / "ran"
    child_env = {**os.environ, "PYTHONPATH": str(ROOT)}

    def run(try_number: int, die: str) -> subprocess.CompletedProcess[str]:
        argv = [PY, str(script), dag_id, str(marker), str(seconds), str(try_number), die]
        return subprocess.run(argv, env=child_env, capture_output=True, text=True, timeout=180)

    first = run(1, "die")
    assert first.returncode == -signal.SIGKILL, first.stderr[-3000:]
    submitted = first.stdout.split("submitted", 1)[1].split()[0]
    (orphan,) = instances(env.services, dag_id, "t")
    if seconds:  # still pending or running; its worker may have reported its id already
        assert orphan["distributor_id"] in (None, submitted)
    else:  # let it finish before the next try comes
        when(lambda: marker_lines(marker) > 0 and submitted not in faults.qstat_job_ids(), 60, "the job to end")

    second = run(2, "live")
    output = second.stdout + second.stderr
    assert second.returncode == 0, output[-3000:]
    unit = task_unit(env, dag_id, "t", marker)
    problems = judge(fault, [unit])
    fault.notes.append(f"orphan {orphan['status']}/{orphan['distributor_id']}; job {submitted}")
    assert fault.duplicates == 0 and fault.lost == 0, problems
    assert not problems, problems
    (attempt,) = unit.instances  # adopted: one instance, the job the killed try submitted
    assert attempt["distributor_id"] == submitted
    assert len(jobs_named(env, dag_id, "t")) == 1  # no second qsub
    assert any(
        phrase in output
        for phrase in ("by its name", "Re-attaching to job", "while no Airflow try watched it: adopting")
    ), output[-3000:]


# -- 6. the log directory's disk full ---------------------------------------------------------------------------------


@pytest.fixture
def tiny_disk(tmp_path: Path) -> Iterator[Path]:
    """A 256 KiB tmpfs: the run's log directory, on a disk a job can fill."""
    mount = tmp_path / "tiny"
    mount.mkdir()
    proc = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=256k,mode=0755", "tmpfs", str(mount)], capture_output=True, text=True
    )
    if proc.returncode != 0:
        pytest.fail(f"cannot mount a tmpfs (root needed): {proc.stderr.strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def test_log_disk_full_and_state_manager_down_outcome_from_accounting(
    env: Env, dag_id: str, tmp_path: Path, tiny_disk: Path, fault: Fault, caplog: pytest.LogCaptureFixture
) -> None:
    fault.fault = "log dir's disk full at job end, State Manager down: no exit record, no report"
    marker = tmp_path / "ran"  # off the full disk
    fill = f"dd if=/dev/zero of={tiny_disk}/fill bs=4k 2>/dev/null; echo $JOB_ID >> {marker}; exit 0"
    with DAG(dag_id, schedule=None, start_date=datetime(2026, 1, 1)):
        op = JobmonTaskOperator(
            task_id="t",
            name=dag_id,
            command=fill,
            deferrable=False,
            log_dir=str(tiny_disk),
            jobmon_conn_id="jobmon_no_state_manager",
            **FAST,
        )
    with caplog.at_level(logging.INFO, logger="jobmon_airflow"):
        result = op.execute(context(op, "r1", 1))

    unit = task_unit(env, dag_id, "t", marker)
    problems = judge(fault, [unit])
    fault.notes.append(f"result {result}")
    assert fault.duplicates == 0 and fault.lost == 0, problems
    assert not problems, problems
    (attempt,) = unit.instances
    assert os.statvfs(tiny_disk).f_bavail == 0  # the disk really was full
    assert not Path(attempt["exit_record"]).exists()  # the worker could not leave its record
    sources = [r.getMessage() for r in caplog.records if "outcome D from" in r.getMessage()]
    assert sources and all("accounting" in s for s in sources), sources
