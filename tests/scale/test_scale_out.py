"""Issue 13 acceptance: the scale-out set-up (scripts/scale/up.sh) runs a DAG of a 100-element array and 20 mapped
tasks through Airflow's CeleryExecutor on two Celery workers (one inside the namespace host), jobs on two Grid Engine
hosts, reports through nginx to two State Manager replicas on MariaDB (Airflow's own database on PostgreSQL);
meanwhile one replica is killed, a triggerer frozen until its trigger moves to the other one (whose on_kill must
keep the job) and one Celery worker restarted. Also: qstat calls about one per triggerer per interval. Then:
everything done, one job and one accounting record per task, both hosts and both workers used, Prometheus' counts
of the run equal to the state database's, Airflow's StatsD metrics in Prometheus; down.sh tears it all down and
up.sh is idempotent.

Real parts throughout (network namespace, sge_execd, nginx, Redis, Celery, PostgreSQL, Prometheus from Debian);
needs root.
"""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import shutil
import signal
import socket
import subprocess
import time
import urllib.parse
import urllib.request
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from tests.conftest import MARIADB_URL, ROOT, require_service
from tests.support.airflow_services import AirflowAPI, wait_for

pytestmark = [pytest.mark.scale, pytest.mark.gridengine, pytest.mark.mariadb]

STATE = Path("/var/lib/jobmon-scale")
UP, DOWN = ROOT / "scripts/scale/up.sh", ROOT / "scripts/scale/down.sh"
NS, NS_HOST = "jobmon-exec2", "jobmon-exec2"
PROMETHEUS = "http://127.0.0.1:19090"
ACCOUNTING = Path("/var/lib/gridengine/default/common/accounting")
DAG_ID = "scale_out"
ELEMENTS, MAPPED = 100, 20
TRIGGERERS, POLL_INTERVAL_S, QSTAT_WINDOW_S = 2, 2.0, 8.0
HELD_S = 150  # mapped[0]'s job: long enough to outlast moving its trigger between the triggerers
MOVE_S = 45  # [triggerer] triggerer_health_check_threshold (15 s in up.sh) + the other one's next look, loaded

DAG = f'''
from datetime import datetime

from airflow.sdk import DAG

from jobmon_airflow.operators import JobmonArrayOperator, JobmonTaskOperator
from jobmon_airflow.templates import TaskTemplate

RESOURCES = {{"memory": "200M", "runtime": "10m", "queue": "scale.q"}}
with DAG("{DAG_ID}", schedule=None, start_date=datetime(2026, 1, 1), catchup=False, max_active_tasks=32):
    JobmonArrayOperator(
        task_id="array",
        task_template=TaskTemplate(
            name="scale_element", command_template="echo element {{i}}", node_args=["i"], default_resources=RESOURCES
        ),
        node_args={{"i": list(range({ELEMENTS}))}},
        cluster="gridengine",
        poll_interval=2,
    )
    JobmonTaskOperator.partial(
        task_id="mapped", cluster="gridengine", poll_interval=2, compute_resources=RESOURCES
    ).expand(command=["sleep {HELD_S}"] + [f"echo mapped {{i}}" for i in range(1, {MAPPED})])
'''


def script(path: Path, *args: str, timeout: float = 600) -> str:
    """Run up.sh / down.sh; its stderr (one line per step)."""
    proc = subprocess.run(["bash", str(path), *args], capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{path.name} {' '.join(args)} failed:\n{proc.stderr[-4000:]}"
    return proc.stderr


def scale_env() -> dict[str, str]:
    env: dict[str, str] = {}
    for line in (STATE / "scale.env").read_text().splitlines():
        if line and not line.startswith("#"):
            ((key, value),) = [part.split("=", 1) for part in shlex.split(line)]
            env[key] = value
    return env


def pid_of(name: str) -> int:
    return int((STATE / "run" / f"{name}.pid").read_text())


def alive(pid: int) -> bool:
    try:
        return "State:\tZ" not in Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False


def prometheus(query: str) -> dict[str, float]:
    """An instant query: each series' value by its ``status`` label (or ``""``)."""
    url = f"{PROMETHEUS}/api/v1/query?" + urllib.parse.urlencode({"query": query})
    with urllib.request.urlopen(url, timeout=10) as resp:
        result = json.load(resp)["data"]["result"]
    return {r["metric"].get("status", ""): float(r["value"][1]) for r in result}


def telemetry_counts() -> dict[str, float]:
    counts = {
        f"to_{k}": v
        for k, v in prometheus('sum by (status) (jobmon_transitions_total{machine="task_instance"})').items()
    }
    counts["submissions"] = prometheus("sum(jobmon_submissions_total)").get("", 0.0)
    return counts


@pytest.fixture(scope="module")
def scale() -> Iterator[dict[str, str]]:
    if os.geteuid() != 0:
        require_service("not root", "the scale-out set-up (scripts/scale/up.sh)")
    require_service(None if shutil.which("qconf") else "qconf not on PATH", "Grid Engine")
    script(DOWN, "--purge")
    try:
        script(UP, timeout=900)
        (STATE / "dags" / f"{DAG_ID}.py").write_text(DAG)
        yield scale_env()
    finally:
        for log in sorted((STATE / "logs").glob("*.log")) if STATE.exists() else []:
            print(f"==== {log.name} (tail) ====\n" + log.read_text(errors="replace")[-1500:])
        script(DOWN)


def run_instances(engine: sa.Engine, run_id: str) -> list[Any]:
    with engine.connect() as conn:
        return list(
            conn.execute(
                sa.text(
                    "SELECT ti.id, ti.task_id, ti.status, ti.distributor_id FROM task_instance ti"
                    " JOIN workflow_run wr ON ti.workflow_run_id = wr.id JOIN workflow w ON wr.workflow_id = w.id"
                    " WHERE w.dag_id = :dag AND w.run_id = :run"
                ),
                {"dag": DAG_ID, "run": run_id},
            )
        )


def accounting_records(job_numbers: set[str]) -> list[tuple[str, str, str]]:
    """(host, job number, task number) of every accounting record of the given jobs."""
    out = []
    for line in ACCOUNTING.read_text(errors="replace").splitlines():
        fields = line.split(":")
        if len(fields) > 36 and fields[5] in job_numbers:
            out.append((fields[1], fields[5], fields[35]))
    return out


def deferred(airflow: AirflowAPI, run_id: str) -> int:
    path = f"/api/v2/dags/{DAG_ID}/dagRuns/{run_id}/taskInstances?state=deferred&limit=1"
    return int(airflow.request("GET", path)["total_entries"])


def qstat_calls() -> float:
    return prometheus('sum(jobmon_cluster_command_seconds_count{command="qstat"})').get("", 0.0)


def holder(airflow_db: sa.Engine, run_id: str) -> int | None:
    """The triggerer job holding mapped[0]'s trigger (Airflow's metadata database)."""
    with airflow_db.connect() as conn:
        return conn.execute(
            sa.text(
                "SELECT t.triggerer_id FROM trigger t JOIN task_instance ti ON ti.trigger_id = t.id"
                " WHERE ti.dag_id = :dag AND ti.run_id = :run AND ti.task_id = 'mapped' AND ti.map_index = 0"
            ),
            {"dag": DAG_ID, "run": run_id},
        ).scalar()


def move_trigger(airflow_db: sa.Engine, run_id: str) -> None:
    """Freeze the triggerer holding mapped[0]'s trigger (SIGSTOP to its process group) until Airflow hands the
    trigger to the other one, then let it go on: it finds the trigger assigned elsewhere and cancels it, which
    Airflow 3.3 does through on_kill while the task is still deferred and its job running. Airflow's jobs table
    does not say which process is which triggerer: each is frozen in turn until the trigger moves."""
    wait_for(lambda: holder(airflow_db, run_id) is not None, 300, "mapped[0] deferred in a triggerer")
    held_by = holder(airflow_db, run_id)
    for name in ("triggerer-1", "triggerer-2"):
        pid = pid_of(name)
        os.killpg(pid, signal.SIGSTOP)
        try:
            with contextlib.suppress(TimeoutError):
                wait_for(
                    lambda: holder(airflow_db, run_id) not in (None, held_by), MOVE_S, "mapped[0]'s trigger to move"
                )
                return
        finally:
            os.killpg(pid, signal.SIGCONT)
    pytest.fail("mapped[0]'s trigger did not move to the other triggerer")


def test_scale_out_run_survives_a_replica_kill_and_a_worker_restart(scale: dict[str, str]) -> None:
    main_host = socket.gethostname()
    airflow = AirflowAPI(int(scale["AIRFLOW__API__PORT"]), scale, timeout=60)
    airflow.base = scale["AIRFLOW__API__BASE_URL"]
    engine = sa.create_engine(sa.engine.make_url(MARIADB_URL).set(database="jobmon_scale"), pool_pre_ping=True)
    wait_for(lambda: bool(prometheus("up")), 60, "Prometheus' first scrape")
    before = telemetry_counts()

    airflow.unpause(DAG_ID, timeout=180)
    run_id = airflow.trigger(DAG_ID)

    # Each triggerer polls the cluster once per interval for all its deferred tasks (issue 13, item 3): qstat
    # calls of the whole set-up over a window while many tasks are deferred, against one call per deferred task.
    wait_for(lambda: deferred(airflow, run_id) >= 10, 300, "10 tasks deferred", interval=1)
    waiting, calls_before = deferred(airflow, run_id), qstat_calls()
    time.sleep(QSTAT_WINDOW_S)
    qstat_per_interval = (qstat_calls() - calls_before) / (QSTAT_WINDOW_S / POLL_INTERVAL_S)
    waiting = min(waiting, deferred(airflow, run_id))
    print(f"qstat calls per {POLL_INTERVAL_S:g}s interval: {qstat_per_interval:.2f} ({waiting} tasks deferred)")
    assert waiting > 2 * TRIGGERERS * 1.5, "too few deferred tasks to tell shared from per-task polling"
    assert 0 < qstat_per_interval <= TRIGGERERS * 1.5  # one per triggerer (+ scrape jitter), not one per task

    # Faults in the middle of the run: one replica killed (nginx sends its share to the other), a triggerer frozen,
    # then one Celery worker restarted (warm: TERM to its main process, as `celery control shutdown` does); up.sh
    # brings the replica and the worker back (it starts what is down).
    wait_for(lambda: sum(r.status in ("R", "D") for r in run_instances(engine, run_id)) >= 20, 300, "20 jobs running")
    os.kill(pid_of("replica-1"), signal.SIGKILL)
    # mapped[0]'s trigger moved between the two triggerers: the one it left calls on_kill, which must keep the job.
    airflow_db = sa.create_engine(scale["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"], pool_pre_ping=True)
    move_trigger(airflow_db, run_id)
    wait_for(lambda: sum(r.status == "D" for r in run_instances(engine, run_id)) >= 50, 300, "50 jobs done")
    worker = pid_of("worker-2")
    os.kill(worker, signal.SIGTERM)  # the main process only: Celery's warm shutdown lets running tasks finish
    wait_for(lambda: not alive(worker), 120, "Celery worker-2 to stop")
    restarted = script(UP, timeout=600)
    assert "replica-1: started" in restarted and "worker-2: started" in restarted, restarted

    wait_for(lambda: airflow.run_state(DAG_ID, run_id) in ("success", "failed"), 600, "the DAG run", interval=3)
    assert airflow.run_state(DAG_ID, run_id) == "success"

    # Jobmon: one instance per task, each done, each with its own job; one accounting record each; both hosts.
    instances = run_instances(engine, run_id)
    assert len(instances) == ELEMENTS + MAPPED
    assert Counter(r.status for r in instances) == {"D": ELEMENTS + MAPPED}
    assert len({r.task_id for r in instances}) == ELEMENTS + MAPPED
    jobs = [r.distributor_id for r in instances]
    assert len(set(jobs)) == len(jobs)
    wait_for(lambda: len(accounting_records({j.split(".")[0] for j in jobs})) >= len(jobs), 60, "accounting")
    records = accounting_records({j.split(".")[0] for j in jobs})
    assert sorted(f"{job}.{task}" if task != "0" else job for _, job, task in records) == sorted(jobs)
    assert {host for host, _, _ in records} == {main_host, NS_HOST}

    # Airflow: task instances ran on both Celery workers' hosts.
    tis = airflow.request("GET", f"/api/v2/dags/{DAG_ID}/dagRuns/{run_id}/taskInstances?limit=100")["task_instances"]
    assert {ti["hostname"] for ti in tis} == {main_host, NS_HOST}

    # Telemetry read back from Prometheus: this run's submissions and task instance transitions, as in the database.
    expected = {"submissions": len(jobs), "to_O": len(jobs), "to_R": len(jobs), "to_D": len(jobs)}

    def delta() -> dict[str, float]:
        now = telemetry_counts()
        return {k: now.get(k, 0.0) - before.get(k, 0.0) for k in expected}

    with contextlib.suppress(TimeoutError):
        wait_for(lambda: delta() == expected, 30, "Prometheus to scrape the run's last counts", interval=2)
    assert delta() == expected

    # Airflow's own metrics beside Jobmon's: its StatsD counters, through the bridge, in Prometheus.
    assert prometheus("sum(airflow_scheduler_heartbeat_total)").get("", 0.0) > 0
    ti_successes = lambda: prometheus("sum(airflow_ti_successes_total)").get("", 0.0)  # noqa: E731
    with contextlib.suppress(TimeoutError):
        wait_for(lambda: ti_successes() >= 1 + MAPPED, 30, "Airflow's ti_successes in Prometheus", interval=2)
    assert ti_successes() >= 1 + MAPPED  # the array task and the mapped tasks (this set-up runs nothing else)

    # The triggerer mapped[0]'s trigger left did call on_kill, found the task still deferred and kept the job
    # (done above, one job, one accounting record).
    logs = STATE / "airflow" / "logs" / f"dag_id={DAG_ID}" / f"run_id={run_id}" / "task_id=mapped" / "map_index=0"
    trigger_logs = "".join(p.read_text(errors="replace") for p in logs.glob("*.trigger.*.log"))
    assert "invoking on_kill" in trigger_logs and "moved to another triggerer" in trigger_logs


def test_down_tears_everything_down_and_up_is_idempotent(scale: dict[str, str]) -> None:
    pids = [int(p.read_text()) for p in (STATE / "run").glob("*.pid")]
    script(DOWN)
    assert not [p for p in pids if alive(p)]
    assert NS not in subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert subprocess.run(["ip", "link", "show", "jmx2-host"], capture_output=True).returncode != 0  # veth gone
    assert subprocess.run(["qconf", "-sq", "scale.q"], capture_output=True).returncode != 0
    assert subprocess.run(["qconf", "-se", NS_HOST], capture_output=True).returncode != 0
    assert "all.q" in subprocess.run(["qconf", "-sql"], capture_output=True, text=True).stdout  # untouched

    first = script(UP, timeout=900)
    assert "started" in first
    again = script(UP, timeout=300)
    assert " started" not in again and "added" not in again and "updated" not in again, again
