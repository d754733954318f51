"""The Jobmon pages shown inside Airflow's UI (external views rendering these server-side pages in Airflow's
iframe): workflows, one workflow, one task, resource usage; plus the two entry points Airflow's DAG-run and
task-instance views open, which resolve Airflow identities to a Jobmon page.

Every route depends on :func:`~jobmon_airflow.server.viewer.current_viewer` (Airflow does not authenticate plugin
apps): 401 without the Airflow token, 403 for a DAG the user may not read, lists filtered to readable DAGs. Pages
are rendered by :mod:`.page_render` (autoescaped Jinja2) and answer with its security headers (CSP allowing framing
by Airflow only and scripts from here only); errors are pages too. Data comes from the service layer's
:class:`~jobmon_airflow.service.insights.Insights`: aggregates, one page of rows, sampled scatter points.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Annotated, Any
from urllib.parse import urlencode

from fastapi import APIRouter, Path, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, HTMLResponse, RedirectResponse, Response
from fastapi.routing import APIRoute
from starlette.exceptions import HTTPException  # FastAPI's is a subclass: both become pages

from jobmon_airflow.server.page_render import SECURITY_HEADERS, STATIC_FILES, Urls, make_environment
from jobmon_airflow.server.viewer import CurrentViewer, Viewer
from jobmon_airflow.service.core import NotFound
from jobmon_airflow.service.insight_types import MAX_OFFSET, InstanceDetail, PageRequest
from jobmon_airflow.service.insights import Insights

PAGE_SIZE = 100  # rows of a task or workflow table
ERROR_GROUPS = 25
SCATTER_POINTS = 2000
MAX_ID = 2**63 - 1
#: Where the query API serves a workflow's usage as CSV (the data helper's route), relative to the app's root.
USAGE_CSV = "/api/workflows/{workflow_id}/usage.csv"

Offset = Annotated[int, Query(ge=0, le=MAX_OFFSET)]
Text = Annotated[str | None, Query(max_length=250)]
Id = Annotated[int, Path(ge=1, le=MAX_ID)]
_ENV = make_environment()
#: Threads for a page's independent service-layer reads (bounded: at most this many at once for all pages).
_READERS = ThreadPoolExecutor(max_workers=6, thread_name_prefix="jobmon-page-read")


class PageError(Exception):
    def __init__(self, status: int, title: str, message: str):
        self.status, self.title, self.message = status, title, message


class PageRoute(APIRoute):
    """Routes whose every answer, errors included (401 from the viewer dependency, 422 from validation), is an
    HTML page with the security headers; validation errors name the parameter, never echo its value."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def page_handler(request: Request) -> Response:
            try:
                response = await handler(request)
            except HTTPException as exc:
                title = {401: "Not signed in", 403: "Not allowed", 404: "Not found"}.get(exc.status_code, "Error")
                response = _message(request, exc.status_code, title, str(exc.detail), exc.headers)
            except RequestValidationError as exc:
                fields = sorted({".".join(str(p) for p in e.get("loc", ())[1:]) or "request" for e in exc.errors()})
                response = _message(request, 422, "Bad request", f"invalid value of {', '.join(fields)}")
            except PageError as exc:
                response = _message(request, exc.status, exc.title, exc.message)
            for header, value in SECURITY_HEADERS.items():
                response.headers.setdefault(header, value)
            return response

        return page_handler


router = APIRouter(prefix="/ui", route_class=PageRoute, include_in_schema=False)


# -- rendering --------------------------------------------------------------------------------------------------------
def _urls(request: Request) -> Urls:
    return Urls(request.scope.get("root_path", ""))


def _render(
    request: Request, template_name: str, viewer: Viewer | None, status: int = 200, **context: Any
) -> HTMLResponse:
    urls = _urls(request)
    query = dict(request.query_params)

    def link(**changes: Any) -> str:
        """This page with some query parameters changed (None removes one)."""
        params = {**query, **changes}
        name = request.scope["route"].name
        return urls.page(name, **{**request.path_params, **params})

    html = _ENV.get_template(template_name).render(
        viewer=viewer or Viewer("", frozenset()), page=urls.page, static=urls.static, link=link, **context
    )
    return HTMLResponse(html, status_code=status)


def _message(
    request: Request, status: int, title: str, message: str, headers: Mapping[str, str] | None = None
) -> HTMLResponse:
    response = _render(request, "message.html", None, status, title=title, message=message)
    response.headers.update(headers or {})
    return response


def _insights(request: Request) -> Insights:
    insights: Insights = request.app.state.insights
    return insights


def _readable(viewer: Viewer, dag_id: str, what: str) -> None:
    if not viewer.can_read(dag_id):
        raise PageError(403, "Not allowed", f"{what} belongs to DAG {dag_id}, which {viewer.username} may not read")


def _found(call: Callable[[], Any], what: str) -> Any:
    try:
        return call()
    except NotFound:
        raise PageError(404, "Not found", f"no {what}") from None
    except ValueError as exc:  # a filter Insights refused, naming it
        raise PageError(422, "Bad request", str(exc)) from None


def _side_by_side(*calls: Callable[[], Any]) -> list[Any]:
    """Run ``calls`` at once on the page threads; their results in order (the first error raised)."""
    futures = [_READERS.submit(call) for call in calls]
    return [f.result() for f in futures]


# -- pages ------------------------------------------------------------------------------------------------------------
@router.get("/", name="home")
def home(request: Request, viewer: CurrentViewer) -> Response:
    return RedirectResponse(_urls(request).page("workflows"), status_code=303)


@router.get("/workflows", name="workflows")
def workflows_page(
    request: Request,
    viewer: CurrentViewer,
    dag_id: Text = None,
    user: Annotated[str | None, Query(max_length=150)] = None,
    status: Annotated[str | None, Query(max_length=20)] = None,
    offset: Offset = 0,
) -> Response:
    dag_ids = viewer.visible([dag_id] if dag_id else None)
    result = _found(
        lambda: _insights(request).workflows(
            dag_ids=dag_ids, user=user or None, status=status or None, page=PageRequest(offset, 50)
        ),
        "workflows",
    )
    filters = {"dag_id": dag_id, "user": user, "status": status, "any": bool(dag_id or user or status)}
    return _render(request, "workflows.html", viewer, result=result, filters=filters)


@router.get("/workflows/{workflow_id}", name="workflow")
def workflow_page(
    request: Request,
    viewer: CurrentViewer,
    workflow_id: Id,
    bucket: Annotated[str | None, Query(max_length=20)] = None,
    template: Text = None,
    offset: Offset = 0,
) -> Response:
    insights = _insights(request)
    _readable(viewer, _found(lambda: _insights(request).dag_of_workflow(workflow_id), f"workflow {workflow_id}"),
              f"Workflow {workflow_id}")  # fmt: skip
    # Three independent reads, side by side (each on its own connection): the page waits for the slowest only.
    what = f"workflow {workflow_id}"
    detail, tasks, errors = _side_by_side(
        lambda: _found(lambda: insights.workflow(workflow_id), what),
        lambda: _found(
            lambda: insights.tasks(
                workflow_id, bucket=bucket or None, template=template or None, page=PageRequest(offset, PAGE_SIZE)
            ),
            what,
        ),
        lambda: _found(lambda: insights.error_groups(workflow_id, limit=ERROR_GROUPS), what),
    )
    filters = {"bucket": (bucket or "").upper() or None, "template": template}
    return _render(request, "workflow.html", viewer, detail=detail, tasks=tasks, errors=errors, filters=filters)


@router.get("/workflows/{workflow_id}/resources", name="resources")
def resources_page(request: Request, viewer: CurrentViewer, workflow_id: Id, template: Text = None) -> Response:
    dag_id = _found(lambda: _insights(request).dag_of_workflow(workflow_id), f"workflow {workflow_id}")
    _readable(viewer, dag_id, f"Workflow {workflow_id}")
    usage = _found(
        lambda: _insights(request).resource_usage(workflow_id, template=template or None, sample=SCATTER_POINTS),
        f"workflow {workflow_id}",
    )
    plot_data = [
        {
            "template": u.template,
            "suggested": u.suggested,
            "memory": [[p.requested_memory_gib, p.memory_gib, p.status, p.task_id] for p in u.points],
            "runtime": [[p.requested_runtime_s, p.runtime_s, p.status, p.task_id] for p in u.points],
        }
        for u in usage
    ]
    csv_url = _urls(request).root + USAGE_CSV.format(workflow_id=workflow_id)
    if template:
        csv_url += "?" + urlencode({"template": template})
    return _render(
        request, "resources.html", viewer, workflow_id=workflow_id, template=template, usage=usage,
        plot_data={"templates": plot_data, "task_url": _urls(request).root + "/ui/tasks/"}, csv_url=csv_url,
    )  # fmt: skip


@dataclass(frozen=True)
class _Attempt:
    """An instance with what it asked for against the attempt before it (the 1.5× after a memory kill)."""

    detail: InstanceDetail
    memory: float | None
    runtime: float | None
    memory_factor: str | None
    runtime_factor: str | None


def _factor(new: float | None, old: float | None) -> str | None:
    if new is None or old is None or old <= 0 or abs(new - old) < 1e-9:
        return None
    return f"{new / old:.2f}".rstrip("0").rstrip(".")


def _attempts(instances: tuple[InstanceDetail, ...]) -> list[_Attempt]:
    out = []
    for i, d in enumerate(instances):  # newest first: the previous attempt is the next one
        before = instances[i + 1].requested_resources if i + 1 < len(instances) else {}
        mem, rt = d.requested_resources.get("memory"), d.requested_resources.get("runtime")
        out.append(_Attempt(d, mem, rt, _factor(mem, before.get("memory")), _factor(rt, before.get("runtime"))))
    return out


@router.get("/tasks/{task_id}", name="task")
def task_page(request: Request, viewer: CurrentViewer, task_id: Id) -> Response:
    task = _found(lambda: _insights(request).task(task_id), f"task {task_id}")
    _readable(viewer, task.dag_id, f"Task {task_id}")
    return _render(request, "task.html", viewer, task=task, instances=_attempts(task.instances))


# -- entry points from Airflow's DAG-run and task-instance views ------------------------------------------------------
@router.get("/dag-run", name="dag_run")
def dag_run_entry(
    request: Request,
    viewer: CurrentViewer,
    dag_id: Annotated[str, Query(min_length=1, max_length=250)],
    run_id: Annotated[str, Query(min_length=1, max_length=250)],
) -> Response:
    _readable(viewer, dag_id, "This DAG run")
    workflow_id = _insights(request).workflow_of_run(dag_id, run_id)
    if workflow_id is None:
        raise PageError(404, "No Jobmon workflow", f"DAG run {run_id} of {dag_id} has no Jobmon workflow (yet).")
    return RedirectResponse(_urls(request).page("workflow", workflow_id=workflow_id), status_code=303)


@router.get("/task-instance", name="task_instance")
def task_instance_entry(
    request: Request,
    viewer: CurrentViewer,
    dag_id: Annotated[str, Query(min_length=1, max_length=250)],
    run_id: Annotated[str, Query(min_length=1, max_length=250)],
    task_id: Annotated[str, Query(min_length=1, max_length=250)],
    map_index: Annotated[str, Query(max_length=20)] = "-1",
) -> Response:
    """Airflow leaves ``{MAP_INDEX}`` unreplaced for an unmapped task: anything not an integer means -1."""
    _readable(viewer, dag_id, "This task instance")
    index = int(map_index) if map_index.lstrip("-").isdigit() else -1
    lookup = _insights(request)
    workflow_id = lookup.workflow_of_run(dag_id, run_id)
    found = None if workflow_id is None else lookup.tasks_of_airflow_task(workflow_id, task_id, index)
    if found is None or not found.task_ids:
        raise PageError(404, "No Jobmon task", f"Task {task_id} of DAG run {run_id} has no Jobmon task (yet).")
    urls = _urls(request)
    if len(found.task_ids) == 1:
        return RedirectResponse(urls.page("task", task_id=found.task_ids[0]), status_code=303)
    # An array operator: its elements, under its template.
    target = urls.page("workflow", workflow_id=found.workflow_id, template=found.templates[0]) + "#tasks"
    return RedirectResponse(target, status_code=303)


# -- static files -----------------------------------------------------------------------------------------------------
@router.get("/static/{name}", name="static")
def static_file(viewer: CurrentViewer, name: Annotated[str, Path(max_length=40)]) -> Response:
    if name not in STATIC_FILES:
        raise PageError(404, "Not found", "no such file")
    path, media_type = STATIC_FILES[name]
    # Versioned URLs (?v=<package version>): the browser may keep them; only this user's browser (private).
    return FileResponse(path, media_type=media_type, headers={"Cache-Control": "private, max-age=86400"})


# -- where Airflow's UI opens these pages (the plugin's external views, the operators' extra link) ---------------------
def airflow_hrefs(url_prefix: str) -> dict[str, str]:
    """The pages an external view opens, with the placeholders Airflow's UI fills in ({DAG_ID}, {RUN_ID},
    {TASK_ID}, {MAP_INDEX}; it leaves {MAP_INDEX} as is for an unmapped task, which the entry point reads as -1)."""
    ui = f"{url_prefix}{router.prefix}"
    return {
        "nav": f"{ui}/workflows",
        "dag_run": f"{ui}/dag-run?dag_id={{DAG_ID}}&run_id={{RUN_ID}}",
        "task_instance": (
            f"{ui}/task-instance?dag_id={{DAG_ID}}&run_id={{RUN_ID}}&task_id={{TASK_ID}}&map_index={{MAP_INDEX}}"
        ),
    }


def task_instance_path(url_prefix: str, dag_id: str, run_id: str, task_id: str, map_index: int) -> str:
    """The entry point of one task instance's Jobmon page (the operator extra link)."""
    query = urlencode({"dag_id": dag_id, "run_id": run_id, "task_id": task_id, "map_index": map_index})
    return f"{url_prefix}{router.prefix}/task-instance?{query}"
