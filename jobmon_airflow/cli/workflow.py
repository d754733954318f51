"""``workflow status|tasks|logs|concurrency|reset`` and ``workflow resources usage|yaml``, with Jobmon's columns."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import click

from jobmon_airflow import states
from jobmon_airflow.cli.common import CliError, ids, json_option, output, requesting_user, services

BUCKETS = list(states.TASK_BUCKETS)


def buckets(values: tuple[str, ...]) -> list[str]:
    out = []
    for value in values:
        for part in value.replace(",", " ").split():
            if part.upper() not in BUCKETS:
                raise click.BadParameter(f"{part[:40]!r} is not one of {', '.join(BUCKETS)}", param_hint="-s")
            out.append(part.upper())
    return out


workflow_id_option = click.option("-w", "--workflow-id", "workflow_id", type=click.IntRange(1, 2**63 - 1),
                                  required=True, help="Jobmon workflow id")  # fmt: skip


@click.group("workflow", help="workflows: status, tasks, logs, resources, concurrency, reset")
def workflow() -> None:
    pass


@workflow.command("status", help="task counts per Jobmon bucket (PENDING SCHEDULED RUNNING DONE FATAL)")
@click.option("-w", "--workflow-id", "workflow_ids", multiple=True, help="workflow ids (repeat, or 1,2,3)")
@click.option("-u", "--user", help="workflows run by this user")
@click.option("--dag-id", help="workflows of this DAG")
@click.option("--run-id", help="the workflow of this DAG run")
@click.option("-l", "--limit", type=click.IntRange(1, 1000), default=5, show_default=True, help="newest N workflows")
@json_option
@click.pass_context
def status(
    ctx: click.Context, workflow_ids: tuple[str, ...], user: str | None, dag_id: str | None, run_id: str | None,
    limit: int, as_json: bool,
) -> int:  # fmt: skip
    from jobmon_airflow.service.insight_types import PageRequest
    from jobmon_airflow.service.queries import status_rows_for_display

    wanted = ids(workflow_ids, "-w")
    page = services(ctx).insights.workflows(
        dag_ids=[dag_id] if dag_id else None, workflow_ids=wanted or None, run_id=run_id, user=user,
        page=PageRequest(0, max(limit, len(wanted)) if wanted else limit),
    )  # fmt: skip
    rows = [
        {
            "WF_ID": w.id,
            "WF_NAME": w.name,
            "WF_STATUS": w.status_name,
            "CREATED_DATE": w.created_date.isoformat(sep=" ", timespec="seconds") if w.created_date else "",
            "TASKS": w.tasks,
            **{b: w.buckets.get(b, 0) for b in BUCKETS},
            "RETRIES": w.retries,
        }
        for w in page.items
    ]
    output(rows if as_json else status_rows_for_display(rows), as_json)
    return 0


@workflow.command("tasks", help="tasks of one workflow with their newest instance")
@workflow_id_option
@click.option("-s", "--status", "bucket_names", multiple=True, help=f"only these buckets ({', '.join(BUCKETS)})")
@click.option("-l", "--limit", type=click.IntRange(1, 1000), default=1000, show_default=True)
@json_option
@click.pass_context
def tasks(ctx: click.Context, workflow_id: int, bucket_names: tuple[str, ...], limit: int, as_json: bool) -> int:
    from jobmon_airflow.service.insight_types import PageRequest
    from jobmon_airflow.service.queries import task_status_row

    page = services(ctx).insights.tasks(workflow_id, buckets=buckets(bucket_names), page=PageRequest(0, limit))
    rows = [task_status_row(t) for t in page.items]
    output(rows, as_json)
    if not as_json and page.total > len(rows):
        click.echo(f"({len(rows)} of {page.total} tasks; -l for more)", err=True)
    return 0


@workflow.command("logs", help="stdout / stderr paths of the newest instances")
@workflow_id_option
@click.option("-a", "--array", help="only this array (its name: the Airflow task id)")
@click.option("-j", "--job", help="only this job id (an array's elements too)")
@click.option("-l", "--limit", type=click.IntRange(1, 1000), default=5, show_default=True)
@json_option
@click.pass_context
def logs(ctx: click.Context, workflow_id: int, array: str | None, job: str | None, limit: int, as_json: bool) -> int:
    output(services(ctx).insights.log_paths(workflow_id, limit=limit, array=array, job=job), as_json)
    return 0


@workflow.command("concurrency", help="change a workflow's max_concurrently_running (and its arrays')")
@workflow_id_option
@click.option("-m", "--max-tasks", type=click.IntRange(1, 1_000_000), required=True, help="the new limit")
@click.option("-a", "--array", help="only this array (by name)")
@click.pass_context
def concurrency(ctx: click.Context, workflow_id: int, max_tasks: int, array: str | None) -> int:
    changed = services(ctx).admin.set_concurrency(workflow_id, max_tasks, user=requesting_user(), array=array)
    scope = (
        f"array {array}"
        if array
        else f"workflow {workflow_id}" + (f" and arrays {', '.join(changed)}" if changed else "")
    )
    click.echo(f"max_concurrently_running of {scope}: {max_tasks} (running array operators apply it within one poll)")
    return 0


@workflow.command("reset", help="reset a finished workflow: tasks back to REGISTERING (owner only)")
@workflow_id_option
@click.option("-p", "--partial", is_flag=True, help="keep done tasks")
@click.pass_context
def reset(ctx: click.Context, workflow_id: int, partial: bool) -> int:
    count = services(ctx).admin.reset_workflow(workflow_id, user=requesting_user(), partial=partial)
    click.echo(
        f"workflow {workflow_id} reset: {count} tasks back to REGISTERING; clear its DAG run in Airflow to run it"
    )
    return 0


@workflow.group("resources", help="resource usage of a workflow's templates")
def resources() -> None:
    pass


@resources.command("usage", help="used memory and runtime per template (done instances) against the request")
@workflow_id_option
@click.option("-t", "--template", help="only this template")
@json_option
@click.pass_context
def usage(ctx: click.Context, workflow_id: int, template: str | None, as_json: bool) -> int:
    found = services(ctx).insights.resource_usage(workflow_id, template=template, sample=2000)
    if as_json:
        output([{k: v for k, v in _asdict(u).items() if k != "points"} for u in found], True)
        return 0

    def r(value: float | None, digits: int = 2) -> Any:
        return None if value is None else round(value, digits)

    rows = [
        {
            "TEMPLATE": u.template, "N": u.memory_gib.count,
            "MEM_MIN_GIB": r(u.memory_gib.min), "MEM_MEAN_GIB": r(u.memory_gib.mean),
            "MEM_P95_GIB": r(u.memory_gib.p95), "MEM_MAX_GIB": r(u.memory_gib.max),
            "REQ_MEM_GIB": r(u.requested_memory_gib.max),
            "RT_MIN_S": r(u.runtime_s.min, 1), "RT_MEAN_S": r(u.runtime_s.mean, 1), "RT_P95_S": r(u.runtime_s.p95, 1),
            "RT_MAX_S": r(u.runtime_s.max, 1), "REQ_RT_S": r(u.requested_runtime_s.max, 0),
        }
        for u in found
    ]  # fmt: skip
    output(rows, False)
    return 0


STATISTICS = ["max", "min", "avg", "p50", "p90", "p95", "p99"]


def _asdict(value: Any) -> dict[str, Any]:
    from dataclasses import asdict

    return asdict(value)


def _pick(stats: Any, statistic: str) -> float | None:
    value: float | None = getattr(stats, "mean" if statistic == "avg" else statistic)
    return value


@resources.command("yaml", help="a resource YAML for the next run (Jobmon's task_template_resources)")
@workflow_id_option
@click.option("-t", "--template", help="only this template")
@click.option("--memory", "memory_stat", type=click.Choice(STATISTICS), default="max", show_default=True)
@click.option("--runtime", "runtime_stat", type=click.Choice(STATISTICS), default="max", show_default=True)
@click.option("-c", "--cluster", help="cluster name in the YAML (default: the one the workflow ran on)")
@click.option("-p", "--path", "path", type=click.Path(dir_okay=False, path_type=Path), help="write to this file")
@click.pass_context
def resources_yaml(
    ctx: click.Context, workflow_id: int, template: str | None, memory_stat: str, runtime_stat: str,
    cluster: str | None, path: Path | None,
) -> int:  # fmt: skip
    import yaml

    insights = services(ctx).insights
    found = insights.resource_usage(workflow_id, template=template, sample=2000)
    cluster = cluster or next(iter(insights.workflow_clusters(workflow_id)), "gridengine")
    templates: dict[str, Any] = {}
    for u in found:
        memory, runtime = _pick(u.memory_gib, memory_stat), _pick(u.runtime_s, runtime_stat)
        if memory is None and runtime is None:
            continue
        entry: dict[str, Any] = {k: v for k, v in u.suggested.items() if k in ("cores", "queue")}
        if memory is not None:
            entry["memory"] = f"{max(1, math.ceil(memory))}G"
        if runtime is not None:
            entry["runtime"] = max(1, math.ceil(runtime))
        templates[u.template] = {cluster: entry}
    if not templates:
        raise CliError(f"workflow {workflow_id}: no done instance with measured usage" +
                       (f" for template {template!r}" if template else ""))  # fmt: skip
    text = yaml.safe_dump({"task_template_resources": templates}, sort_keys=True)
    if path is None:
        click.echo(text, nl=False)
    else:
        path.write_text(text)
        click.echo(f"wrote {path}", err=True)
    return 0
