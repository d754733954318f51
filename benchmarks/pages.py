"""p. The pages Airflow's UI shows, on a 100,000-task workflow (MariaDB).

The workflow of benchmark g (:func:`benchmarks.query._load`: 100,000 tasks × 3 instances, 5 % failing with stderr
tails, 200 small workflows beside it) in a database of its own. Each page is timed in process (server time: FastAPI,
the viewer dependency, the service layer, the template), first call and the median of the next ones; beside each, in
the same run, the service-layer calls the page makes, timed alone one after another (the workflow page makes its
three side by side, so it can take less than their sum, not less than the slowest). The workflow page holds the
grouped errors; they are timed as one of its parts. ``BENCH_PAGES_REUSE=1`` keeps the workflow an earlier run
loaded (the load takes minutes).
"""

from __future__ import annotations

import os
import statistics
import time
import warnings
from collections.abc import Callable
from typing import Any

from benchmarks.common import fresh_database, load_average, log, mariadb_url

DB = "jobmon_test_bench_pages"
REPEATS = 5


def _timed(call: Callable[[], Any]) -> dict[str, float]:
    times = []
    for _ in range(1 + REPEATS):
        t0 = time.perf_counter()
        call()
        times.append((time.perf_counter() - t0) * 1000)
    return {"first_ms": round(times[0], 1), "median_ms": round(statistics.median(times[1:]), 1),
            "max_ms": round(max(times[1:]), 1)}  # fmt: skip


def _time_pages(url: str, wf: int, task_id: int) -> dict[str, Any]:
    from fastapi.testclient import TestClient

    from jobmon_airflow.server import pages
    from jobmon_airflow.server.app import create_app
    from jobmon_airflow.server.viewer import StaticViewerAuth, Viewer
    from jobmon_airflow.service.insight_types import PageRequest

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        app = create_app(url, viewer_auth=StaticViewerAuth({"t": Viewer("bench", None)}))
        client = TestClient(app)
    insights = app.state.insights
    cases: dict[str, tuple[str, dict[str, Callable[[], Any]]]] = {
        "workflows page (50 per page)": (
            "/ui/workflows",
            {"workflows": lambda: insights.workflows(page=PageRequest(0, 50))},
        ),
        "workflow page (templates, 100 tasks, grouped errors)": (
            f"/ui/workflows/{wf}",
            {
                "workflow": lambda: insights.workflow(wf),
                "tasks": lambda: insights.tasks(wf, page=PageRequest(0, pages.PAGE_SIZE)),
                "grouped errors": lambda: insights.error_groups(wf, limit=pages.ERROR_GROUPS),
            },
        ),
        "workflow page, FATAL tasks": (
            f"/ui/workflows/{wf}?bucket=FATAL",
            {
                "workflow": lambda: insights.workflow(wf),
                "tasks": lambda: insights.tasks(wf, bucket="FATAL", page=PageRequest(0, pages.PAGE_SIZE)),
                "grouped errors": lambda: insights.error_groups(wf, limit=pages.ERROR_GROUPS),
            },
        ),
        "resources page (2,000 points)": (
            f"/ui/workflows/{wf}/resources",
            {"resource usage": lambda: insights.resource_usage(wf, sample=pages.SCATTER_POINTS)},
        ),
        "task page (3 instances)": (f"/ui/tasks/{task_id}", {"task": lambda: insights.task(task_id)}),
    }
    out: dict[str, Any] = {}
    for name, (path, parts) in cases.items():
        status = client.get(path, headers={"Authorization": "Bearer t"}).status_code
        if status != 200:
            raise RuntimeError(f"{path}: HTTP {status}")
        page = _timed(lambda path=path: client.get(path, headers={"Authorization": "Bearer t"}))  # type: ignore[misc]
        service = {part: _timed(call) for part, call in parts.items()}
        service_ms = round(sum(s["median_ms"] for s in service.values()), 1)
        slowest_ms = max(s["median_ms"] for s in service.values())
        size = len(client.get(path, headers={"Authorization": "Bearer t"}).content)
        out[name] = {"path": path, **page, "service_parts": service, "service_ms": service_ms,
                     "service_slowest_ms": slowest_ms, "bytes": size}  # fmt: skip
        log(f"pages: {name}: median {page['median_ms']:.0f} ms (its service calls alone: {service_ms:.0f} ms, "
            f"slowest {slowest_ms:.0f} ms), {size:,} bytes")  # fmt: skip
    return out


def _loaded_before(url: str) -> dict[str, Any] | None:
    """The big workflow of an earlier run of this benchmark, when ``BENCH_PAGES_REUSE=1`` and it is complete."""
    import sqlalchemy as sa

    if os.environ.get("BENCH_PAGES_REUSE") != "1":
        return None
    from benchmarks.query import PASSES, TASKS

    try:
        with sa.create_engine(url).connect() as conn:
            wf, first, tasks = conn.execute(
                sa.text(
                    "SELECT w.id, MIN(t.id), COUNT(*) FROM workflow w JOIN task t ON t.workflow_id = w.id "
                    "WHERE w.dag_id = 'big_dag' GROUP BY w.id"
                )
            ).one()
            instances = conn.execute(sa.text("SELECT COUNT(*) FROM task_instance")).scalar_one()
            errors = conn.execute(sa.text("SELECT COUNT(*) FROM task_instance_error_log")).scalar_one()
    except Exception:  # no database, no workflow: load it
        return None
    if tasks != TASKS or instances != TASKS * PASSES:
        return None
    return {"workflow_id": wf, "first_task": first, "instances": instances, "error_logs": errors, "load_s": None}


def run() -> dict[str, Any]:
    from benchmarks.query import PASSES, TASKS, scale_of
    from benchmarks.query import _load as load_big_workflow

    loaded = _loaded_before(mariadb_url(DB))
    if loaded is None:
        url = fresh_database(DB)
        log(f"pages: bulk-loading {TASKS:,} tasks × {PASSES} instances into {DB}")
        loaded = load_big_workflow(url)
        log(f"pages: loaded in {loaded['load_s']} s ({loaded['error_logs']:,} error logs)")
    else:
        url = mariadb_url(DB)
        log(f"pages: reusing the workflow loaded earlier in {DB} (BENCH_PAGES_REUSE=1)")
        from jobmon_airflow import db

        db.upgrade(db.get_engine(url))  # its schema (indexes) as the code under test expects
    pages = _time_pages(url, loaded["workflow_id"], loaded["first_task"] + 7)
    return {**scale_of(loaded), "pages": pages, "load_average": load_average()}
