"""AirflowApiHook: what the reaper asks Airflow through its REST API (``/api/v2``), batched.

Connection ``airflow_api_default`` (any type; ``http`` is natural): host (``http://api-server:8080``, or a bare host
with ``schema`` http/https and ``port``), login/password (exchanged at ``POST /auth/token`` for a bearer token), or
extra ``token`` (a token already issued); no credentials: no Authorization header (SimpleAuthManager with
all-admins, a development set-up). Extras ``timeout`` (seconds, default 30) and ``page_limit`` (default 100, the
API server's ``maximum_page_limit``). Transient failures (connection refused, 5xx) are retried with bounded
back-off; anything else fails once, naming the URL and the status.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable
from dataclasses import dataclass
from functools import cached_property
from typing import Any
from urllib.parse import quote

import requests
from airflow.sdk import BaseHook
from requests.adapters import HTTPAdapter
from urllib3.util.retry import Retry

#: Airflow task-instance states in which the task is still, or will again be, in charge of its Jobmon instance
#: (a retry or a cleared try re-attaches to a live job). Anything else, or no task instance at all, is an orphan.
ACTIVE_TASK_STATES = frozenset(
    {None, "scheduled", "queued", "running", "deferred", "up_for_retry", "up_for_reschedule", "restarting"}
)
#: DAG-run states in which the run goes on (its Jobmon run is alive whatever its heartbeat says).
ACTIVE_DAG_RUN_STATES = frozenset({"queued", "running"})
RUN_IDS_PER_REQUEST = 50  # DAG run ids per batch body: keeps requests small, pages do the rest
MAX_PAGES = 10_000  # bounds a listing whatever the server answers


class AirflowApiError(RuntimeError):
    """Airflow's REST API refused a request or answered something unreadable."""


@dataclass(frozen=True)
class TaskInstanceKey:
    dag_id: str
    run_id: str
    task_id: str
    map_index: int


class AirflowApiHook(BaseHook):
    """Airflow's REST API, for the Jobmon reaper."""

    conn_name_attr = "airflow_api_conn_id"
    default_conn_name = "airflow_api_default"
    hook_name = "Airflow REST API (Jobmon reaper)"

    def __init__(self, airflow_api_conn_id: str = default_conn_name, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.airflow_api_conn_id = airflow_api_conn_id
        self._token: str | None = None

    @cached_property
    def _conn(self) -> Any:
        return self.get_connection(self.airflow_api_conn_id)

    @cached_property
    def base_url(self) -> str:
        conn = self._conn
        host = str(conn.host or "").rstrip("/")
        if not host:
            raise AirflowApiError(f"connection {self.airflow_api_conn_id!r}: no host (the API server's URL)")
        if "://" not in host:
            host = f"{conn.schema or 'http'}://{host}" + (f":{conn.port}" if conn.port else "")
        return host

    @cached_property
    def _extra(self) -> dict[str, Any]:
        return dict(self._conn.extra_dejson or {})

    @property
    def timeout(self) -> float:
        return float(self._extra.get("timeout", 30.0))

    @property
    def page_limit(self) -> int:
        return max(1, min(int(self._extra.get("page_limit", 100)), 1000))

    @cached_property
    def session(self) -> requests.Session:
        s = requests.Session()
        retry = Retry(
            total=4,
            connect=4,
            read=2,
            backoff_factor=0.5,
            backoff_max=8,
            status_forcelist=(502, 503, 504),
            allowed_methods=None,  # the batch listings are POSTs that change nothing
        )
        s.mount("http://", HTTPAdapter(max_retries=retry))
        s.mount("https://", HTTPAdapter(max_retries=retry))
        return s

    def _headers(self) -> dict[str, str]:
        token = self._extra.get("token") or self._token
        if not token and self._conn.login:
            token = self._token = self._fetch_token()
        return {"Authorization": f"Bearer {token}"} if token else {}

    def _fetch_token(self) -> str:
        body = self._call("POST", "/auth/token", {"username": self._conn.login, "password": self._conn.password})
        token = body.get("access_token") if isinstance(body, dict) else None
        if not isinstance(token, str):
            raise AirflowApiError(f"{self.base_url}/auth/token: no access_token in the answer")
        return token

    def _call(self, method: str, path: str, body: Any = None, ok_404: bool = False) -> Any:
        url = self.base_url + path
        headers = {} if path == "/auth/token" else self._headers()
        try:
            resp = self.session.request(method, url, json=body, headers=headers, timeout=self.timeout)
        except requests.RequestException as exc:
            raise AirflowApiError(f"{method} {url}: {type(exc).__name__}: {exc}") from None
        if resp.status_code == 401 and self._token:  # an expired token: one new one, once
            self._token = None
            resp = self.session.request(method, url, json=body, headers=self._headers(), timeout=self.timeout)
        if resp.status_code == 404 and ok_404:
            return None
        if resp.status_code >= 400:
            raise AirflowApiError(f"{method} {url}: HTTP {resp.status_code}: {resp.text[:300]}")
        try:
            return resp.json()
        except ValueError:
            raise AirflowApiError(f"{method} {url}: not JSON: {resp.text[:200]!r}") from None

    # -- what the reaper asks --------------------------------------------------------------------------------------
    def task_instance_states(self, dag_runs: Iterable[tuple[str, str]]) -> dict[TaskInstanceKey, str | None]:
        """Every task instance of the given DAG runs with its state: one batch listing
        (``POST /api/v2/dags/~/dagRuns/~/taskInstances/list``) per DAG and up to 50 run ids, paginated. A task
        instance missing from the answer no longer exists (its DAG run was deleted)."""
        runs_by_dag: dict[str, set[str]] = {}
        for dag_id, run_id in dag_runs:
            runs_by_dag.setdefault(dag_id, set()).add(run_id)
        out: dict[TaskInstanceKey, str | None] = {}
        for dag_id, run_ids in sorted(runs_by_dag.items()):
            ordered = sorted(run_ids)
            for i in range(0, len(ordered), RUN_IDS_PER_REQUEST):
                wanted = set(ordered[i : i + RUN_IDS_PER_REQUEST])
                body = {"dag_ids": [dag_id], "dag_run_ids": sorted(wanted), "order_by": "id"}
                for ti in self._pages("/api/v2/dags/~/dagRuns/~/taskInstances/list", body, "task_instances"):
                    if ti.get("dag_run_id") in wanted:
                        key = TaskInstanceKey(dag_id, str(ti["dag_run_id"]), str(ti["task_id"]), int(ti["map_index"]))
                        out[key] = ti.get("state")
        return out

    def _pages(self, path: str, body: dict[str, Any], field: str) -> Iterable[dict[str, Any]]:
        offset = 0
        for _ in range(MAX_PAGES):
            page = self._call("POST", path, {**body, "page_offset": offset, "page_limit": self.page_limit})
            items = page.get(field) if isinstance(page, dict) else None
            if not isinstance(items, list):
                raise AirflowApiError(f"{self.base_url}{path}: no {field!r} list in the answer")
            yield from items
            offset += len(items)
            if not items or offset >= int(page.get("total_entries", 0)):
                return
        raise AirflowApiError(f"{self.base_url}{path}: more than {MAX_PAGES} pages")

    def dag_run_states(self, dag_runs: Collection[tuple[str, str]]) -> dict[tuple[str, str], str | None]:
        """The state of each DAG run, None when it no longer exists. Batched: one listing of the DAGs' queued and
        running runs (``POST /api/v2/dags/~/dagRuns/list``, paginated), then one ``GET`` only for each run not in
        it: those the reaper is about to end, so few, and gone from the next pass."""
        wanted = set(dag_runs)
        if not wanted:
            return {}
        dag_ids = sorted({d for d, _ in wanted})
        body = {"dag_ids": dag_ids, "states": sorted(ACTIVE_DAG_RUN_STATES), "order_by": "id"}
        out: dict[tuple[str, str], str | None] = {}
        for run in self._pages("/api/v2/dags/~/dagRuns/list", body, "dag_runs"):
            key = (str(run.get("dag_id")), str(run.get("dag_run_id")))
            if key in wanted:
                out[key] = str(run.get("state"))
        for dag_id, run_id in sorted(wanted - set(out)):
            path = f"/api/v2/dags/{quote(dag_id, safe='')}/dagRuns/{quote(run_id, safe='')}"
            found = self._call("GET", path, ok_404=True)
            out[(dag_id, run_id)] = None if found is None else str(found.get("state"))
        return out

    def test_connection(self) -> tuple[bool, str]:
        try:
            self._call("GET", "/api/v2/monitor/health")
        except Exception as exc:
            return False, str(exc)
        return True, f"Airflow API at {self.base_url} reachable"
