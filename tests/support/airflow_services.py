"""Airflow's real services (API server, scheduler, DAG processor, triggerer) started as child processes, and a
small client for Airflow's REST API. Used by tests/e2e/test_airflow_services.py and benchmarks/mapped_services.py.

Nothing here imports airflow or pytest: the services run in their own processes with the environment given.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

AIRFLOW = str(Path(sys.executable).with_name("airflow"))
HOST = "127.0.0.1"


def wait_for(predicate: Callable[[], bool], timeout: float, what: str, interval: float = 1.0) -> float:
    """Poll ``predicate`` until true; the seconds waited. ``TimeoutError`` after ``timeout`` seconds."""
    start = time.monotonic()
    while not predicate():
        if time.monotonic() - start > timeout:
            raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(interval)
    return time.monotonic() - start


def services_env(home: Path, dags_folder: Path, port: int, parallelism: int) -> dict[str, str]:
    """This process's environment without its ``AIRFLOW*``/``JOBMON*`` variables, plus an Airflow home and a
    Jobmon home under ``home``, the API server on ``port`` (everyone an admin) and workers reporting to the State
    Manager the Jobmon plugin mounts in the API server."""
    base = f"http://{HOST}:{port}"
    return {
        **{k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "JOBMON"))},
        "AIRFLOW_HOME": str(home / "airflow"),
        "JOBMON_AIRFLOW_HOME": str(home / "jobmon"),
        "AIRFLOW__CORE__DAGS_FOLDER": str(dags_folder),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__API__HOST": HOST,
        "AIRFLOW__API__PORT": str(port),
        "AIRFLOW__API__BASE_URL": base,
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS": "True",
        "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "5",
        "AIRFLOW__CORE__PARALLELISM": str(parallelism),
        "AIRFLOW__SCHEDULER__SCHEDULER_HEARTBEAT_SEC": "1",
        "JOBMON_AIRFLOW_STATE_MANAGER_URL": f"{base}/jobmon",
    }


class AirflowAPI:
    """Airflow's REST API (``/api/v2``) on ``127.0.0.1:port``; ``env`` is the environment the services run with."""

    services: ServiceSet | None = None  # the processes behind it, when started by :func:`airflow_services`

    def __init__(self, port: int, env: dict[str, str], timeout: float = 30.0):
        self.base = f"http://{HOST}:{port}"
        self.env = env
        self.timeout = timeout

    def request(self, method: str, path: str, body: Any = None) -> Any:
        """JSON in, JSON out; ``urllib.error.HTTPError`` on an error status."""
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(
            self.base + path, data=data, method=method, headers={"Content-Type": "application/json"}
        )
        with urllib.request.urlopen(req, timeout=self.timeout) as resp:
            return json.loads(resp.read() or b"null")

    def healthy(self) -> bool:
        """Whether the API server answers and reports its metadata database healthy."""
        try:
            return bool(self.request("GET", "/api/v2/monitor/health")["metadatabase"]["status"] == "healthy")
        except (OSError, ValueError, KeyError):
            return False

    def wait_healthy(self, timeout: float) -> float:
        """Wait (polling each second) until :meth:`healthy`; the seconds waited."""
        return wait_for(self.healthy, timeout, "the API server")

    def unpause(self, dag_id: str, timeout: float) -> None:
        """Unpause the DAG, retrying the 404 while the DAG processor has not yet parsed its file."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                self.request("PATCH", f"/api/v2/dags/{dag_id}", {"is_paused": False})
                return
            except urllib.error.HTTPError as exc:
                if exc.code != 404 or time.monotonic() > deadline:
                    raise
                time.sleep(1)

    def trigger(self, dag_id: str) -> str:
        """Trigger a DAG run now; its run id."""
        return str(self.request("POST", f"/api/v2/dags/{dag_id}/dagRuns", {"logical_date": None})["dag_run_id"])

    def run_state(self, dag_id: str, run_id: str) -> str:
        """The DAG run's state."""
        return str(self.request("GET", f"/api/v2/dags/{dag_id}/dagRuns/{run_id}")["state"])

    def ti_state(self, dag_id: str, run_id: str, task_id: str) -> str | None:
        """One (unmapped) task instance's state, None before it has one."""
        ti = self.request("GET", f"/api/v2/dags/{dag_id}/dagRuns/{run_id}/taskInstances/{task_id}")
        return ti["state"]

    def ti_states(self, dag_id: str, run_id: str) -> dict[str, int]:
        """How many of the DAG run's task instances (mapped ones each counted) are in each state."""
        out: dict[str, int] = {}
        offset = 0
        while True:
            page = self.request(
                "GET", f"/api/v2/dags/{dag_id}/dagRuns/{run_id}/taskInstances?limit=100&offset={offset}"
            )
            for ti in page["task_instances"]:
                out[str(ti["state"])] = out.get(str(ti["state"]), 0) + 1
            offset += len(page["task_instances"])
            if not page["task_instances"] or offset >= page["total_entries"]:
                return out


class ServiceSet:
    """Airflow's services as child processes, each in its own process group writing ``logs/<service>.log``;
    any one can be killed and started again (the chaos suite)."""

    COMMANDS = {"api-server": ["api-server"], "scheduler": ["scheduler"], "dag-processor": ["dag-processor"],
                "triggerer": ["triggerer"]}  # fmt: skip

    def __init__(self, env: dict[str, str], port: int, logs: Path):
        self.env, self.logs = env, logs
        self.commands = {**self.COMMANDS, "api-server": ["api-server", "-H", HOST, "-p", str(port)]}
        self.procs: dict[str, subprocess.Popen[bytes]] = {}

    def start(self, name: str) -> None:
        self.procs[name] = subprocess.Popen(
            [AIRFLOW, *self.commands[name]],
            env=self.env,
            stdout=(self.logs / f"{name}.log").open("a"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def kill(self, name: str, sig: int = signal.SIGKILL) -> None:
        """Kill the service's whole process group (its children too, as a crashed host would) and reap it."""
        proc = self.procs[name]
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)
        proc.wait(60)

    def restart(self, name: str, sig: int = signal.SIGKILL) -> None:
        self.kill(name, sig)
        self.start(name)


@contextmanager
def airflow_services(
    env: dict[str, str],
    port: int,
    logs: Path,
    *,
    migrate_timeout: float,
    stop_timeout: float,
    request_timeout: float = 30.0,
) -> Iterator[AirflowAPI]:
    """``airflow db migrate``, then the API server (on ``port``), scheduler, DAG processor and triggerer
    (:class:`ServiceSet`, as ``.services`` of the client yielded; the API is not yet waited for: see
    :meth:`AirflowAPI.wait_healthy`). On exit every process group gets SIGTERM, and SIGKILL if still there after
    ``stop_timeout`` seconds."""
    subprocess.run([AIRFLOW, "db", "migrate"], env=env, check=True, capture_output=True, timeout=migrate_timeout)
    logs.mkdir(parents=True, exist_ok=True)
    services = ServiceSet(env, port, logs)
    try:
        for name in ServiceSet.COMMANDS:
            services.start(name)
        client = AirflowAPI(port, env, timeout=request_timeout)
        client.services = services
        yield client
    finally:
        stop_process_groups(list(services.procs.values()), stop_timeout)


def stop_process_groups(procs: list[subprocess.Popen[bytes]], timeout: float) -> None:
    """SIGTERM each process's group, then SIGKILL the groups whose leader has not exited within ``timeout``."""
    for p in procs:
        os.killpg(p.pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    for p in procs:
        try:
            p.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)
