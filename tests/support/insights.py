"""A known workflow for the query API, pages and CLI tests, built through the real service layer (every status
reached by legal transitions): DAG ``known_dag``, run ``r1``, user ``alice``.

* ``prep`` (no template): done, 1 GiB, 10 s;
* template ``model`` (8 tasks ``model_0..7`` of Airflow task ``models``): ``model_0..4`` done (1..5 GiB, 100..500 s);
  ``model_5`` and ``model_6`` failed twice each ("MemoryError: job <n> at 0x…" and "No such file /data/<n>.csv");
  ``model_7`` killed for memory (Z) then done with the scaled request;
* ``agg`` (no template): registered, never queued.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

from fastapi.testclient import TestClient

from jobmon_airflow import db
from jobmon_airflow.records import Usage
from jobmon_airflow.resources import QueueLimits, Resources
from jobmon_airflow.server.app import create_app
from jobmon_airflow.server.viewer import StaticViewerAuth, Viewer
from jobmon_airflow.service import Services, TaskSpec

GIB = 1024**3
#: Bearer tokens of the viewers :func:`known_app` knows: every DAG, known_dag only, other_dag only.
ADMIN = {"Authorization": "Bearer admin-token"}
KNOWN_ONLY = {"Authorization": "Bearer known-only"}
OTHER_ONLY = {"Authorization": "Bearer other-only"}


@dataclass(frozen=True)
class KnownWorkflow:
    workflow_id: int
    workflow_run_id: int
    prep: int
    models: tuple[int, ...]
    agg: int


def _attempt(
    svc: Services, wfr: int, cluster: int, task: int, job: str, end: str, *, mem_gib: float = 1, rt: float = 10,
    message: str = "", requested: Resources | None = None, resources_type: str = "O",
) -> int:  # fmt: skip
    (ti,) = svc.lifecycle.queue_task_instances(
        wfr, cluster, [task], requested or Resources(memory=2, runtime=600), resources_type, QueueLimits("all.q")
    )
    svc.lifecycle.instantiate([ti], {}, {ti: {"stdout": f"/logs/{job}.o", "stderr": f"/logs/{job}.e"}})
    svc.lifecycle.log_distributor_ids({ti: job})
    svc.reports.log_running(ti, f"node{int(job) % 3}", 1, job, 100)
    usage = Usage(maxrss_bytes=int(mem_gib * GIB), wallclock_s=rt)
    if end == "D":
        svc.reports.log_done(ti, f"node{int(job) % 3}", usage)
    else:
        svc.reports.log_error(ti, end, 1 if end == "E" else 137, message, f"node{int(job) % 3}", usage)
    return ti


def build_known_workflow(svc: Services, dag_id: str = "known_dag", run_id: str = "r1") -> KnownWorkflow:
    run = svc.binding.bind_workflow_run(dag_id=dag_id, run_id=run_id, user="alice")
    ttv = svc.binding.bind_task_template_version(run.tool_version_id, "model", "python m.py {i}", "h", ["i"], [], [])
    prep, agg = svc.binding.bind_tasks(
        run.workflow_id, [TaskSpec("prep", "prep", "true"), TaskSpec("agg", "agg", "true")]
    )
    models = svc.binding.bind_tasks(
        run.workflow_id,
        [
            TaskSpec("models", f"model_{i}", f"python m.py {i}", node_args_hash=str(i), task_template_version_id=ttv)
            for i in range(8)
        ],
    )
    cluster = svc.binding.cluster_id("local", "local")
    wfr = run.workflow_run_id
    job = iter(range(1000, 2000))
    _attempt(svc, wfr, cluster, prep, str(next(job)), "D", mem_gib=1, rt=10)
    for i in range(5):
        _attempt(svc, wfr, cluster, models[i], str(next(job)), "D", mem_gib=i + 1, rt=100 * (i + 1))
    for i in (5, 6):
        for attempt in range(2):
            n = next(job)
            message = (
                f"Traceback (most recent call last):\nMemoryError: job {n} at 0x7f{n:x}"
                if attempt == 0
                else f"FileNotFoundError: No such file /data/{n}.csv"
            )
            _attempt(svc, wfr, cluster, models[i], str(n), "E", message=message)
    _attempt(svc, wfr, cluster, models[7], str(next(job)), "Z", mem_gib=2.5, message="killed: memory")
    _attempt(
        svc, wfr, cluster, models[7], str(next(job)), "D", mem_gib=2.5, rt=50,
        requested=Resources(memory=3, runtime=900), resources_type="A",
    )  # fmt: skip
    return KnownWorkflow(run.workflow_id, wfr, prep, tuple(models), agg)


@dataclass
class KnownApp:
    """The plugin's app (query API and pages) on a SQLite file holding the known workflow and one of other_dag."""

    client: TestClient
    svc: Services
    known: KnownWorkflow
    other: int  # a workflow of other_dag (user bob)


def known_app(database: Path) -> KnownApp:
    url = f"sqlite:///{database}"
    svc = Services.for_engine(db.get_engine(url))
    db.upgrade(svc.engine)
    known = build_known_workflow(svc)
    other = svc.binding.bind_workflow_run(dag_id="other_dag", run_id="r", user="bob").workflow_id
    auth = StaticViewerAuth(
        {
            "admin-token": Viewer("admin", None),
            "known-only": Viewer("alice", frozenset({"known_dag"})),
            "other-only": Viewer("bob", frozenset({"other_dag"})),
        }
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        client = TestClient(create_app(url, viewer_auth=auth))
    return KnownApp(client, svc, known, other)
