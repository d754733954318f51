"""The pages Airflow's UI shows, on a known workflow: authentication, DAG visibility, escaping, the security headers,
what each page says, the entry points from Airflow's DAG-run and task-instance views, bad input."""

from __future__ import annotations

import html
import json
import re
import warnings
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import pytest
from fastapi.testclient import TestClient

from jobmon_airflow.hashing import hash_token
from jobmon_airflow.resources import QueueLimits, Resources
from jobmon_airflow.server.app import URL_PREFIX, create_app
from jobmon_airflow.server.page_render import STATIC_FILES, segments
from jobmon_airflow.server.pages import airflow_hrefs
from jobmon_airflow.service import Services, TaskSpec
from tests.support.insights import ADMIN, KNOWN_ONLY, OTHER_ONLY, KnownApp, known_app

XSS = "<script>alert(1)</script>"
Setup = KnownApp


@pytest.fixture
def setup(tmp_path: Path) -> Iterator[Setup]:
    yield known_app(tmp_path / "pages.sqlite")


def _pages(s: Setup) -> list[str]:
    wf = s.known.workflow_id
    return [
        "/ui/", "/ui/workflows", f"/ui/workflows/{wf}", f"/ui/workflows/{wf}/resources", f"/ui/tasks/{s.known.prep}",
        "/ui/dag-run?dag_id=known_dag&run_id=r1", "/ui/task-instance?dag_id=known_dag&run_id=r1&task_id=prep",
        "/ui/static/plotly.min.js", "/ui/static/jobmon.css", "/ui/static/resources.js",
    ]  # fmt: skip


def test_every_page_needs_an_authenticated_viewer(setup: Setup) -> None:
    for path in _pages(setup):
        for headers in ({}, {"Authorization": "Bearer forged"}, {"Authorization": "Basic YWRtaW46YWRtaW4="}):
            r = setup.client.get(path, headers=headers, follow_redirects=False)
            assert r.status_code == 401, (path, headers)
            assert r.headers["content-type"].startswith("text/html") and "Not signed in" in r.text, path
            assert "frame-ancestors 'self'" in r.headers["content-security-policy"], path
        assert setup.client.get(path, headers=ADMIN, follow_redirects=False).status_code in (200, 303), path


def test_a_task_instance_token_reads_no_page(setup: Setup) -> None:
    """A worker's State Manager token is no Airflow user."""
    (ti,) = [i.id for i in setup.svc.insights.task(setup.known.prep).instances]
    with setup.svc.engine.begin() as conn:
        conn.exec_driver_sql(f"UPDATE task_instance SET token_hash = '{hash_token('ti-token')}' WHERE id = {ti}")
    for path in _pages(setup):
        assert setup.client.get(path, headers={"Authorization": "Bearer ti-token"}).status_code == 401, path


def test_no_viewer_auth_configured_means_no_reader(tmp_path: Path) -> None:
    """The standalone State Manager (no ViewerAuth) serves no page to anyone."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        client = TestClient(create_app(f"sqlite:///{tmp_path / 'x.sqlite'}"))
    assert client.get("/ui/workflows", headers=ADMIN).status_code == 401


def test_every_page_sends_the_security_headers(setup: Setup) -> None:
    wf = setup.known.workflow_id
    for path in [*_pages(setup), f"/ui/workflows/{10**6}", "/ui/workflows/abc", "/ui/static/nope.js"]:
        r = setup.client.get(path, headers=ADMIN, follow_redirects=False)
        csp = {d.split()[0]: d.split()[1:] for d in r.headers["content-security-policy"].split("; ")}
        assert csp["frame-ancestors"] == ["'self'"], path  # framed by Airflow (same origin) only
        assert csp["script-src"] == ["'self'"] and csp["default-src"] == ["'none'"], path  # no inline script
        assert "'unsafe-inline'" not in csp["style-src"], path
        assert r.headers["x-frame-options"] == "SAMEORIGIN" and r.headers["x-content-type-options"] == "nosniff"
    page = setup.client.get(f"/ui/workflows/{wf}/resources", headers=ADMIN).text
    scripts = re.findall(r"<script\b([^>]*)>(.*?)</script>", page, re.S)
    assert scripts and all('src="' in attrs or 'type="application/json"' in attrs for attrs, _ in scripts)
    assert all(not body.strip() for attrs, body in scripts if 'src="' in attrs)  # no inline code anywhere


def _titled_xss_workflow(svc: Services) -> tuple[int, int]:
    """A workflow whose DAG, run, task name, command, template and error text are all a script tag."""
    run = svc.binding.bind_workflow_run(dag_id="xss_dag", run_id=XSS, user=XSS)
    ttv = svc.binding.bind_task_template_version(run.tool_version_id, XSS, "echo {i}", "h", ["i"], [], [])
    (task,) = svc.binding.bind_tasks(
        run.workflow_id, [TaskSpec(XSS, XSS, f"echo {XSS}", node_args_hash="1", task_template_version_id=ttv)]
    )
    cluster = svc.binding.cluster_id("local", "local")
    (ti,) = svc.lifecycle.queue_task_instances(
        run.workflow_run_id, cluster, [task], Resources(memory=1, runtime=60), "O", QueueLimits("all.q")
    )
    svc.lifecycle.instantiate([ti], {}, {ti: {"stdout": f"/logs/{XSS}.o", "stderr": "/logs/e"}})
    svc.lifecycle.log_distributor_ids({ti: "77"})
    svc.reports.log_running(ti, XSS, 1, "77", 100)
    svc.reports.log_error(ti, "E", 1, f"Traceback\n{XSS}", XSS, None)
    return run.workflow_id, task


def test_everything_echoed_is_escaped(setup: Setup) -> None:
    wf, task = _titled_xss_workflow(setup.svc)
    escaped = html.escape(XSS, quote=False)
    pages = [
        "/ui/workflows", f"/ui/workflows/{wf}", f"/ui/workflows/{wf}/resources", f"/ui/tasks/{task}",
        f"/ui/workflows/{wf}?template={quote(XSS)}", f"/ui/workflows?dag_id={quote(XSS)}&user={quote(XSS)}",
        f"/ui/dag-run?dag_id=xss_dag&run_id={quote(XSS + 'x')}",  # not found: the message names the run
    ]  # fmt: skip
    for path in pages:
        r = setup.client.get(path, headers=ADMIN)
        assert r.status_code in (200, 404), (path, r.status_code)
        assert XSS not in r.text, path
        assert "<script>alert" not in r.text.lower(), path
    # and the escaped text is what the reader sees
    assert escaped in setup.client.get(f"/ui/tasks/{task}", headers=ADMIN).text
    assert escaped in setup.client.get(f"/ui/workflows/{wf}", headers=ADMIN).text
    # In the JSON data block, <, > and & are \u-escaped: no text can close the block.
    resources = setup.client.get(f"/ui/workflows/{wf}/resources", headers=ADMIN).text
    (block,) = re.findall(r'<script type="application/json" id="usage-data">(.*?)</script>', resources, re.S)
    assert "<" not in block and json.loads(block)["templates"][0]["template"] == XSS


def test_lists_show_only_readable_dags_and_other_pages_refuse(setup: Setup) -> None:
    c, known = setup.client, setup.known
    listed = c.get("/ui/workflows", headers=KNOWN_ONLY).text
    assert f'data-workflow-id="{known.workflow_id}"' in listed and f'data-workflow-id="{setup.other}"' not in listed
    listed = c.get("/ui/workflows?dag_id=known_dag", headers=OTHER_ONLY).text  # asking for it does not help
    assert f'data-workflow-id="{known.workflow_id}"' not in listed and "No workflow" in listed
    wf = known.workflow_id
    for path in [f"/ui/workflows/{wf}", f"/ui/workflows/{wf}/resources", f"/ui/tasks/{known.models[7]}",
                 "/ui/dag-run?dag_id=known_dag&run_id=r1",
                 "/ui/task-instance?dag_id=known_dag&run_id=r1&task_id=prep"]:  # fmt: skip
        r = setup.client.get(path, headers=OTHER_ONLY, follow_redirects=False)
        assert r.status_code == 403 and "may not read" in r.text, path
        assert setup.client.get(path, headers=KNOWN_ONLY, follow_redirects=False).status_code in (200, 303), path


def test_workflows_page_has_a_bar_per_workflow_in_jobmons_buckets(setup: Setup) -> None:
    page = setup.client.get("/ui/workflows", headers=ADMIN).text
    row = page.split(f'data-workflow-id="{setup.known.workflow_id}"')[1].split("</tr>")[0]
    assert "known_dag" in row and "RUNNING" in row
    legend = dict(re.findall(r'data-bucket="(\w+)">\w+ (\d+)<', row))
    assert legend == {"PENDING": "3", "SCHEDULED": "0", "RUNNING": "0", "DONE": "7", "FATAL": "0"}
    widths = {b: float(w) for b, w in re.findall(r'class="bucket-(\w+)" x="[\d.]+" y="0" width="([\d.]+)"', row)}
    assert widths == {"empty": 1000.0, "pending": 300.0, "done": 700.0}  # of 1000: 3 and 7 of 10 tasks


def test_segments_follow_the_bucket_order_and_fill_the_bar() -> None:
    segs = segments({"DONE": 1, "PENDING": 2, "FATAL": 1}, 4)
    assert [(s.bucket, s.x, s.width) for s in segs] == [("PENDING", 0, 500), ("DONE", 500, 250), ("FATAL", 750, 250)]
    assert segments({}, 0) == []


def test_workflow_page_has_template_progress_tasks_and_grouped_errors(setup: Setup) -> None:
    known = setup.known
    page = setup.client.get(f"/ui/workflows/{known.workflow_id}", headers=ADMIN).text
    templates = re.findall(r'<tr data-template="([^"]+)">', page)
    assert templates == ["agg", "model", "prep"]
    assert len(re.findall(r'<tr data-task-id="\d+">', page)) == 10
    errors = page.split('id="errors"')[1]
    assert "MemoryError: job" in errors and "FileNotFoundError: No such file" in errors and "killed: memory" in errors
    counts = [int(n) for n in re.findall(r'<tr>\s*<td class="num">(\d+)</td>', errors)]
    assert sorted(counts, reverse=True) == [2, 2, 1]  # two messages twice (numbers, paths masked), one kill
    models = setup.client.get(f"/ui/workflows/{known.workflow_id}?template=model&bucket=pending", headers=ADMIN).text
    assert sorted(re.findall(r'<tr data-task-id="(\d+)">', models)) == sorted(str(t) for t in known.models[5:7])


def test_task_table_is_paginated(setup: Setup) -> None:
    from jobmon_airflow.server import pages

    wf = setup.known.workflow_id
    original = pages.PAGE_SIZE
    pages.PAGE_SIZE = 4
    try:
        first = setup.client.get(f"/ui/workflows/{wf}", headers=ADMIN).text
        third = setup.client.get(f"/ui/workflows/{wf}?offset=8", headers=ADMIN).text
    finally:
        pages.PAGE_SIZE = original
    assert len(re.findall(r"<tr data-task-id=", first)) == 4 and "1–4 of 10" in first and "offset=4" in first
    assert len(re.findall(r"<tr data-task-id=", third)) == 2 and "9–10 of 10" in third and "next" not in third


def test_task_page_shows_every_instance_with_the_scaled_retry(setup: Setup) -> None:
    page = setup.client.get(f"/ui/tasks/{setup.known.models[7]}", headers=ADMIN).text
    rows = re.findall(r'<tr data-instance-id="(\d+)" data-status="(\w)">(.*?)</tr>', page, re.S)
    assert [status for _, status, _ in rows] == ["D", "Z"]  # newest first
    retry, killed = rows[0][2], rows[1][2]
    assert "RESOURCE_ERROR" in killed and "2.00 GiB" in killed and "137" in killed
    assert "3.00 GiB" in retry and "×1.5" in retry and "adjusted" in retry
    assert "killed: memory" in page and "/logs/" in page  # the error log and the log paths


def test_resources_page_has_plot_data_the_suggestion_and_the_csv_link(setup: Setup) -> None:
    wf = setup.known.workflow_id
    page = setup.client.get(f"/ui/workflows/{wf}/resources", headers=ADMIN).text
    (block,) = re.findall(r'<script type="application/json" id="usage-data">(.*?)</script>', page, re.S)
    data = json.loads(block)
    model = next(t for t in data["templates"] if t["template"] == "model")
    assert model["suggested"]["memory"] == "5G"  # Jobmon's resources yaml: the maximum used, whole GiB
    assert len(model["memory"]) == 11 and [3.0, 2.5, "D", setup.known.models[7]] in model["memory"]
    assert f'href="/api/workflows/{wf}/usage.csv"' in page
    assert 'src="/ui/static/plotly.min.js?v=' in page and 'id="memory-0"' in page
    one = setup.client.get(f"/ui/workflows/{wf}/resources?template=prep", headers=ADMIN).text
    assert re.findall(r'<section class="template" data-template="([^"]+)"', one) == ["prep"]
    assert f'href="/api/workflows/{wf}/usage.csv?template=prep"' in one


def test_plotly_is_served_from_the_package(setup: Setup) -> None:
    r = setup.client.get("/ui/static/plotly.min.js", headers=ADMIN)
    path, _ = STATIC_FILES["plotly.min.js"]
    assert r.status_code == 200 and r.content == path.read_bytes() and r.content.startswith(b"/**")
    assert "plotly" in str(path) and r.headers["content-type"].startswith("text/javascript")
    assert setup.client.get("/ui/static/..%2Fpages.py", headers=ADMIN).status_code == 404
    assert setup.client.get("/ui/static/app.py", headers=ADMIN).status_code == 404


def test_airflow_entry_points_resolve_to_jobmon_pages(setup: Setup) -> None:
    known, c = setup.known, setup.client
    r = c.get("/ui/dag-run?dag_id=known_dag&run_id=r1", headers=ADMIN, follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"] == f"/ui/workflows/{known.workflow_id}"
    # An unmapped task: Airflow leaves {MAP_INDEX} as it is.
    r = c.get("/ui/task-instance?dag_id=known_dag&run_id=r1&task_id=prep&map_index={MAP_INDEX}", headers=ADMIN,
              follow_redirects=False)  # fmt: skip
    assert r.status_code == 303 and r.headers["location"] == f"/ui/tasks/{known.prep}"
    # An Airflow task with many Jobmon tasks (an array): its template's tasks.
    r = c.get("/ui/task-instance?dag_id=known_dag&run_id=r1&task_id=models&map_index=-1", headers=ADMIN,
              follow_redirects=False)  # fmt: skip
    assert r.status_code == 303 and r.headers["location"] == f"/ui/workflows/{known.workflow_id}?template=model#tasks"
    for path in ["/ui/dag-run?dag_id=known_dag&run_id=nope", "/ui/task-instance?dag_id=known_dag&run_id=r1&task_id=x"]:
        r = c.get(path, headers=ADMIN)
        assert r.status_code == 404 and "no Jobmon" in r.text, path


def test_plugin_views_open_these_pages_once_airflow_fills_them_in(setup: Setup) -> None:
    """The hrefs of the plugin's external views, filled in as Airflow's UI does (encodeURIComponent), land on the
    Jobmon page of that run / task instance."""

    def fill(href: str, **values: str) -> str:
        for key, value in values.items():
            href = href.replace("{" + key + "}", quote(value, safe="-_.!~*'()"))
        assert href.startswith(URL_PREFIX)
        return href[len(URL_PREFIX) :]

    hrefs = airflow_hrefs(URL_PREFIX)
    run = setup.svc.binding.bind_workflow_run(dag_id="d", run_id="manual__2026-01-01T00:00:00+00:00/x&y=1", user="u")
    (task,) = setup.svc.binding.bind_tasks(run.workflow_id, [TaskSpec("t", "t[3]", "true", map_index=3)])
    values = {"DAG_ID": "d", "RUN_ID": "manual__2026-01-01T00:00:00+00:00/x&y=1"}
    r = setup.client.get(fill(hrefs["dag_run"], **values), headers=ADMIN, follow_redirects=False)
    assert r.headers["location"] == f"/ui/workflows/{run.workflow_id}"
    r = setup.client.get(fill(hrefs["task_instance"], TASK_ID="t", MAP_INDEX="3", **values), headers=ADMIN,
                         follow_redirects=False)  # fmt: skip
    assert r.headers["location"] == f"/ui/tasks/{task}"
    assert setup.client.get(fill(hrefs["nav"]), headers=ADMIN).status_code == 200


@pytest.mark.parametrize(
    "path",
    ["/ui/workflows/abc", "/ui/workflows/0", f"/ui/workflows/{2**64}", "/ui/tasks/-1", "/ui/workflows?offset=-1",
     "/ui/workflows?status=nope", "/ui/workflows/1?bucket=nope", "/ui/dag-run?dag_id=d",
     "/ui/workflows?dag_id=" + "x" * 300],
)  # fmt: skip
def test_bad_input_gets_a_4xx_page_that_does_not_echo_it(setup: Setup, path: str) -> None:
    r = setup.client.get(path, headers=ADMIN)
    assert r.status_code in (404, 422), (path, r.status_code)
    assert r.headers["content-type"].startswith("text/html")
    assert "x" * 300 not in r.text and str(2**64) not in r.text and "abc" not in r.text
