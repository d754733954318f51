"""The query API (the seed's Query Service) under ``/jobmon/api/…``: JSON for workflows, one workflow, its tasks,
one task with every instance, grouped errors and resource usage, CSV downloads, and its own OpenAPI schema.

Every route depends on :func:`~.viewer.current_viewer` (401 without an Airflow user; Airflow does not authenticate
plugin apps) and shows only DAGs the viewer may read: lists leave the others out, a workflow or task of another
DAG answers 403. Every parameter is bounded; bad input answers 4xx naming the field, never 500. Routes are sync
``def``: FastAPI runs them in its thread pool, off the event loop, as the database calls block.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from enum import StrEnum
from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Path, Query, Request
from fastapi.openapi.utils import get_openapi
from fastapi.responses import StreamingResponse
from pydantic import BaseModel

from jobmon_airflow import __version__
from jobmon_airflow.server.schemas import MAX_ID, MIN_ID
from jobmon_airflow.server.viewer import CurrentViewer, Viewer
from jobmon_airflow.service import Insights, NotFound
from jobmon_airflow.service.insight_types import (
    MAX_OFFSET,
    MAX_PAGE_LIMIT,
    ErrorGroup,
    PageRequest,
    TaskDetail,
    TaskRow,
    TemplateUsage,
    WorkflowDetail,
    WorkflowSummary,
)

router = APIRouter(prefix="/api", tags=["query"])

MAX_DAG_FILTER = 100
MAX_CSV_ROWS = 2_000_000
CSV_CHUNK = 1000


class Bucket(StrEnum):
    PENDING = "PENDING"
    SCHEDULED = "SCHEDULED"
    RUNNING = "RUNNING"
    DONE = "DONE"
    FATAL = "FATAL"


class WorkflowPage(BaseModel):
    items: list[WorkflowSummary]
    total: int
    offset: int
    limit: int
    next_offset: int | None


class TaskPage(BaseModel):
    items: list[TaskRow]
    total: int
    offset: int
    limit: int
    next_offset: int | None


def get_insights(request: Request) -> Insights:
    insights: Insights = request.app.state.insights
    return insights


WorkflowId = Annotated[int, Path(ge=MIN_ID, le=MAX_ID, description="Jobmon workflow id")]
TaskId = Annotated[int, Path(ge=MIN_ID, le=MAX_ID, description="Jobmon task id")]
Offset = Annotated[int, Query(ge=0, le=MAX_OFFSET)]
Limit = Annotated[int, Query(ge=1, le=MAX_PAGE_LIMIT)]
Template = Annotated[str | None, Query(min_length=1, max_length=255, description="template name")]
StatusFilter = Annotated[str | None, Query(min_length=1, max_length=32, description="Jobmon status letter or name")]


def _unprocessable(field: str, message: str) -> HTTPException:
    return HTTPException(422, [{"loc": ["query", field], "msg": message, "type": "value_error"}])


def _call(fn: Any, *args: Any, **kwargs: Any) -> Any:
    """Service errors as HTTP answers: NotFound → 404, ValueError (a filter the service refused) → 422."""
    try:
        return fn(*args, **kwargs)
    except NotFound as exc:
        raise HTTPException(404, f"no {exc}") from None
    except ValueError as exc:
        field, _, message = str(exc).partition(": ")
        raise _unprocessable(field, message or str(exc)) from None


def _naive_utc(field: str, value: datetime | None) -> datetime | None:
    if value is None or value.tzinfo is None:
        return value
    try:
        return value.astimezone(UTC).replace(tzinfo=None)
    except (OverflowError, ValueError):
        raise _unprocessable(field, "date out of range") from None


def _readable_workflow(request: Request, viewer: Viewer, workflow_id: int) -> Insights:
    insights = get_insights(request)
    if not viewer.can_read(_call(insights.dag_of_workflow, workflow_id)):
        raise HTTPException(403, f"{viewer.username} may not read the DAG of workflow {workflow_id}")
    return insights


def _of_workflow(
    request: Request, viewer: Viewer, workflow_id: int, view: Callable[[Insights], Callable[..., Any]], **kwargs: Any
) -> Any:
    """``view`` of a workflow the viewer may read (403 otherwise), service errors as HTTP answers."""
    return _call(view(_readable_workflow(request, viewer, workflow_id)), workflow_id, **kwargs)


@router.get("/workflows", response_model=WorkflowPage)
def list_workflows(
    request: Request,
    viewer: CurrentViewer,
    dag_id: Annotated[list[str] | None, Query(description=f"DAG ids (at most {MAX_DAG_FILTER})")] = None,
    user: Annotated[str | None, Query(min_length=1, max_length=150)] = None,
    status: StatusFilter = None,
    since: Annotated[datetime | None, Query(description="created at or after (ISO 8601; naive: UTC)")] = None,
    until: Annotated[datetime | None, Query(description="created before (ISO 8601; naive: UTC)")] = None,
    offset: Offset = 0,
    limit: Limit = 50,
) -> WorkflowPage:
    if dag_id is not None and (len(dag_id) > MAX_DAG_FILTER or any(not 0 < len(d) <= 250 for d in dag_id)):
        raise _unprocessable("dag_id", f"at most {MAX_DAG_FILTER} DAG ids of 1 to 250 characters")
    page = _call(
        get_insights(request).workflows,
        dag_ids=viewer.visible(dag_id),
        user=user,
        status=status,
        since=_naive_utc("since", since),
        until=_naive_utc("until", until),
        page=PageRequest(offset, limit),
    )
    return WorkflowPage(
        items=list(page.items), total=page.total, offset=page.offset, limit=page.limit, next_offset=page.next_offset
    )


@router.get("/workflows/{workflow_id}", response_model=WorkflowDetail)
def get_workflow(request: Request, viewer: CurrentViewer, workflow_id: WorkflowId) -> WorkflowDetail:
    detail: WorkflowDetail = _of_workflow(request, viewer, workflow_id, lambda i: i.workflow)
    return detail


@router.get("/workflows/{workflow_id}/tasks", response_model=TaskPage)
def list_tasks(
    request: Request,
    viewer: CurrentViewer,
    workflow_id: WorkflowId,
    bucket: Bucket | None = None,
    template: Template = None,
    status: StatusFilter = None,
    offset: Offset = 0,
    limit: Limit = 100,
) -> TaskPage:
    insights = _readable_workflow(request, viewer, workflow_id)
    page = _call(
        insights.tasks, workflow_id, bucket=bucket, template=template, status=status, page=PageRequest(offset, limit)
    )
    return TaskPage(
        items=list(page.items), total=page.total, offset=page.offset, limit=page.limit, next_offset=page.next_offset
    )


TASK_CSV_COLUMNS = [
    "id", "name", "airflow_task_id", "map_index", "template", "status", "bucket", "num_attempts", "max_attempts",
    "retries", "task_instance_id", "task_instance_status", "distributor_id", "nodename", "exit_status", "maxrss",
    "wallclock", "status_date",
]  # fmt: skip
USAGE_CSV_COLUMNS = [
    "template", "task_instance_id", "task_id", "status", "memory_gib", "runtime_s", "requested_memory_gib",
    "requested_runtime_s",
]  # fmt: skip


def _cell(value: Any) -> Any:
    """A CSV cell that a spreadsheet will not run as a formula."""
    if isinstance(value, str) and value[:1] in ("=", "+", "-", "@", "\t", "\r"):
        return "'" + value
    return "" if value is None else value


def _csv(columns: list[str], rows: Iterator[dict[str, Any]]) -> Iterator[str]:
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(columns)
    for n, row in enumerate(rows, 1):
        writer.writerow([_cell(row.get(c)) for c in columns])
        if n % CSV_CHUNK == 0:
            yield buffer.getvalue()
            buffer.seek(0)
            buffer.truncate()
    yield buffer.getvalue()


def _download(name: str, body: Iterator[str]) -> StreamingResponse:
    return StreamingResponse(
        body, media_type="text/csv; charset=utf-8", headers={"Content-Disposition": f'attachment; filename="{name}"'}
    )


@router.get("/workflows/{workflow_id}/tasks.csv", response_class=StreamingResponse)
def download_tasks(
    request: Request,
    viewer: CurrentViewer,
    workflow_id: WorkflowId,
    bucket: Bucket | None = None,
    template: Template = None,
    status: StatusFilter = None,
) -> StreamingResponse:
    """Every task (filtered) as CSV, read in keyset pages of 1,000."""
    insights = _readable_workflow(request, viewer, workflow_id)
    first = _call(insights.tasks, workflow_id, bucket=bucket, template=template, status=status,
                  page=PageRequest(0, CSV_CHUNK))  # fmt: skip

    def rows() -> Iterator[dict[str, Any]]:
        page, sent = first, 0
        while page.items and sent < MAX_CSV_ROWS:
            for t in page.items:
                yield {c: getattr(t, c) for c in TASK_CSV_COLUMNS}
            sent += len(page.items)
            if page.next_offset is None:
                return
            page = insights.tasks(workflow_id, bucket=bucket, template=template, status=status,
                                  after_id=page.items[-1].id, page=PageRequest(0, CSV_CHUNK))  # fmt: skip

    return _download(f"workflow-{workflow_id}-tasks.csv", _csv(TASK_CSV_COLUMNS, rows()))


@router.get("/tasks/{task_id}", response_model=TaskDetail)
def get_task(request: Request, viewer: CurrentViewer, task_id: TaskId) -> TaskDetail:
    insights = get_insights(request)
    if not viewer.can_read(_call(insights.dag_of_task, task_id)):
        raise HTTPException(403, f"{viewer.username} may not read the DAG of task {task_id}")
    detail: TaskDetail = _call(insights.task, task_id)
    return detail


@router.get("/workflows/{workflow_id}/errors", response_model=list[ErrorGroup])
def grouped_errors(
    request: Request,
    viewer: CurrentViewer,
    workflow_id: WorkflowId,
    template: Template = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
) -> list[ErrorGroup]:
    groups: list[ErrorGroup] = _of_workflow(
        request, viewer, workflow_id, lambda i: i.error_groups, limit=limit, template=template
    )
    return groups


@router.get("/workflows/{workflow_id}/usage", response_model=list[TemplateUsage])
def resource_usage(
    request: Request,
    viewer: CurrentViewer,
    workflow_id: WorkflowId,
    template: Template = None,
    sample: Annotated[int, Query(ge=0, le=20_000, description="at most this many scatter points")] = 2000,
) -> list[TemplateUsage]:
    usage: list[TemplateUsage] = _of_workflow(
        request, viewer, workflow_id, lambda i: i.resource_usage, template=template, sample=sample
    )
    return usage


@router.get("/workflows/{workflow_id}/usage.csv", response_class=StreamingResponse)
def download_usage(
    request: Request,
    viewer: CurrentViewer,
    workflow_id: WorkflowId,
    template: Template = None,
    sample: Annotated[int, Query(ge=1, le=20_000)] = 20_000,
) -> StreamingResponse:
    """The usage points (an evenly spaced sample of at most ``sample`` instances) as CSV."""
    usage = _of_workflow(request, viewer, workflow_id, lambda i: i.resource_usage, template=template, sample=sample)
    rows = (
        {"template": u.template, **{c: getattr(p, c) for c in USAGE_CSV_COLUMNS[1:]}} for u in usage for p in u.points
    )
    return _download(f"workflow-{workflow_id}-usage.csv", _csv(USAGE_CSV_COLUMNS, rows))


@router.get("/openapi.json", include_in_schema=False)
def openapi(request: Request, viewer: CurrentViewer) -> dict[str, Any]:
    """The OpenAPI schema of these routes (paths relative to the server URL it names)."""
    root = request.scope.get("root_path", "")
    cache: dict[str, dict[str, Any]] | None = getattr(request.app.state, "query_openapi", None)
    if cache is None:
        cache = request.app.state.query_openapi = {}
    if root not in cache:
        schema = get_openapi(title="Jobmon query API", version=__version__, routes=router.routes)
        schema["servers"] = [{"url": root or "/"}]
        cache[root] = schema
    return cache[root]
