"""The State Manager is down past the heartbeat deadline while a job runs on the local cluster: the instance is
triaged (T); when the State Manager is back the worker's late heartbeat, or its late final report, must bring the
true outcome into the database. Nothing lost, nothing run twice."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from airflow.sdk import DAG

from jobmon_airflow import paths
from jobmon_airflow.hooks.jobmon import JobmonHook
from jobmon_airflow.operators import JobmonTaskOperator
from jobmon_airflow.server.app import start_in_thread
from tests.chaos.conftest import Fault
from tests.conftest import free_port
from tests.support.state import instances, wait_for

pytestmark = [pytest.mark.chaos, pytest.mark.usefixtures("airflow_db")]


class StateManager:
    """The standalone State Manager on one port, stopped and started again at will."""

    def __init__(self) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/jobmon"
        self.server: Any = None

    def start(self) -> None:
        self.server = start_in_thread(self.port, paths.default_db_url())

    def stop(self) -> None:
        self.server.should_exit = True
        wait_for(lambda: not self.listening(), 15)

    def listening(self) -> bool:
        with socket.socket() as s:
            return s.connect_ex(("127.0.0.1", self.port)) == 0


@pytest.fixture
def state_manager(monkeypatch: pytest.MonkeyPatch) -> Iterator[StateManager]:
    sm = StateManager()
    monkeypatch.setenv("JOBMON_AIRFLOW_STATE_MANAGER_URL", sm.url)
    # The worker retries its start and final reports this long before relying on its exit record.
    extra = {"worker_http_retry_seconds": 60}
    monkeypatch.setenv("AIRFLOW_CONN_JOBMON_DEFAULT", json.dumps({"conn_type": "jobmon", "extra": extra}))
    sm.start()
    yield sm
    sm.server.should_exit = True


def run_blocking(op: JobmonTaskOperator, run_id: str) -> tuple[threading.Thread, list[Any]]:
    context: Any = {"ti": SimpleNamespace(try_number=1, map_index=-1, max_tries=0), "run_id": run_id}
    out: list[Any] = []

    def target() -> None:
        try:
            out.append(op.execute(context))
        except BaseException as exc:
            out.append(exc)

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    return thread, out


@pytest.mark.parametrize(
    ("case", "command", "down_until"),
    [
        ("heartbeat", "sleep 14", "triaged"),  # back while the job still runs: a late heartbeat, T → R → D
        ("final report", "sleep 5", "job ended"),  # back after the job ended: a late log_done, T → R → D
    ],
)
def test_state_manager_down_past_the_heartbeat_deadline(
    state_manager: StateManager, fault: Fault, case: str, command: str, down_until: str
) -> None:
    dag_id = f"chaos_sm_{case.replace(' ', '_')}"
    fault.fault = f"State Manager down past the heartbeat deadline, back after the {case} is due"
    fault.runs = 1
    with DAG(dag_id, schedule=None, start_date=datetime(2026, 1, 1)):
        op = JobmonTaskOperator(
            task_id="job", command=command, deferrable=False, poll_interval=0.5, heartbeat_interval=1
        )
    svc = JobmonHook().get_services()
    thread, out = run_blocking(op, "r1")
    wait_for(lambda: bool(instances(svc, dag_id, "job")) and instances(svc, dag_id, "job")[0]["status"] == "R", 60)
    ti_id = instances(svc, dag_id, "job")[0]["id"]
    state_manager.stop()
    wait_for(lambda: svc.queries.task_instance(ti_id).status == "T", 30)  # deadline 3.1 s: the poller triages it
    if down_until == "job ended":
        record = Path(instances(svc, dag_id, "job")[0]["exit_record"])
        wait_for(record.exists, 30)  # the command ended; the worker keeps retrying its final report
    time.sleep(2)
    state_manager.start()
    thread.join(90)
    assert not thread.is_alive()
    attempts = instances(svc, dag_id, "job")
    final = json.loads(Path(attempts[0]["exit_record"]).read_text())
    fault.completed = int(attempts[-1]["status"] == "D" and attempts[-1]["task_status"] == "D")
    fault.duplicates = len(attempts) - 1
    fault.lost = fault.runs - fault.completed
    fault.notes.append(f"{[a['status'] for a in attempts]}, exit record reported={final['reported']}")
    assert isinstance(out[0], dict) and out[0]["task_instance_id"] == ti_id, out
    assert (fault.duplicates, fault.lost) == (0, 0), fault.notes
    assert final["reported"] is True, final  # the worker's own report was recorded, not refused
