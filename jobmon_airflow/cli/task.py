"""``task status|dependencies|update``, with Jobmon's columns."""

from __future__ import annotations

from typing import Any

import click

from jobmon_airflow.cli.common import ids, json_option, output, requesting_user, services

#: Jobmon's instance buckets for ``task status`` (O, T, X and F, which Jobmon's table leaves out, added).
TI_BUCKETS = {
    "PENDING": frozenset("QBI"),
    "SCHEDULED": frozenset("O"),
    "RUNNING": frozenset("RT"),
    "DONE": frozenset("D"),
    "FATAL": frozenset("EZWUKFX"),
}
MAX_STATUS_TASKS = 100


def _ti_bucket(status: str) -> str:
    return next((b for b, members in TI_BUCKETS.items() if status in members), "UNKNOWN")


@click.group("task", help="tasks: status, dependencies, manual status")
def task() -> None:
    pass


def _usage(maxrss: int | None, wallclock: float | None) -> str:
    parts = []
    if maxrss is not None:
        parts.append(f"maxrss={maxrss / 2**30:.2f}G")
    if wallclock is not None:
        parts.append(f"wallclock={wallclock:.0f}s")
    return " ".join(parts)


@task.command("status", help="every instance of some tasks")
@click.option("-t", "--task-id", "task_ids", multiple=True, required=True, help="task ids (repeat, or 1,2,3)")
@click.option("-s", "--status", "bucket_names", multiple=True, help=f"only instances in ({', '.join(TI_BUCKETS)})")
@json_option
@click.pass_context
def status(ctx: click.Context, task_ids: tuple[str, ...], bucket_names: tuple[str, ...], as_json: bool) -> int:
    wanted_buckets = {b.upper() for v in bucket_names for b in v.replace(",", " ").split()}
    unknown = wanted_buckets - set(TI_BUCKETS)
    if unknown:
        raise click.BadParameter(f"{sorted(unknown)[0][:40]!r} is not one of {', '.join(TI_BUCKETS)}", param_hint="-s")
    insights = services(ctx).insights
    rows: list[dict[str, Any]] = []
    for task_id in ids(task_ids, "-t", limit=MAX_STATUS_TASKS):
        detail = insights.task(task_id)
        for i in detail.instances:
            bucket = _ti_bucket(i.status)
            if wanted_buckets and bucket not in wanted_buckets:
                continue
            error = i.errors[-1].description if i.errors else ""
            lines = [line for line in error.strip().splitlines() if line.strip()]
            rows.append(
                {
                    "TASK_ID": detail.id,
                    "task_status": detail.status_name,
                    "TASK_INSTANCE_ID": i.id,
                    "DISTRIBUTOR_ID": i.distributor_id,
                    "STATUS": bucket,
                    "RESOURCE_USAGE": _usage(i.maxrss, i.wallclock),
                    "STDOUT": i.stdout,
                    "STDERR": i.stderr,
                    "ERROR_TRACE": error if as_json else (lines[-1][:120] if lines else ""),
                }
            )
    output(rows, as_json)
    return 0


def _brief(rows: Any) -> list[dict[str, Any]]:
    return [{"TASK_ID": t.id, "TASK_NAME": t.name, "AIRFLOW_TASK": t.airflow_task_id, "STATUS": t.bucket}
            for t in rows]  # fmt: skip


@task.command("dependencies", help="upstream and downstream tasks (from the Airflow DAG)")
@click.option("-t", "--task-id", type=click.IntRange(1, 2**63 - 1), required=True)
@json_option
@click.pass_context
def dependencies(ctx: click.Context, task_id: int, as_json: bool) -> int:
    from jobmon_airflow.cli.dependencies import task_graph

    insights = services(ctx).insights
    detail = insights.task(task_id)
    graph = task_graph(detail.dag_id)
    up = insights.tasks_of_airflow_tasks(detail.workflow_id, graph.upstream.get(detail.airflow_task_id, frozenset()))
    down = insights.tasks_of_airflow_tasks(
        detail.workflow_id, graph.downstream.get(detail.airflow_task_id, frozenset())
    )
    if as_json:
        from jobmon_airflow.cli.common import emit_json

        emit_json({"task_id": task_id, "upstream": _brief(up), "downstream": _brief(down)})
        return 0
    output(_brief(up), False, title="Upstream tasks")
    output(_brief(down), False, title="Downstream tasks")
    return 0


@task.command("update", help="set tasks to DONE (D) or back to REGISTERING (G, with their downstream tasks)")
@click.option("-t", "--task-id", "task_ids", multiple=True, required=True, help="task ids (repeat, or 1,2,3)")
@click.option("-w", "--workflow-id", type=click.IntRange(1, 2**63 - 1), required=True)
@click.option("-s", "--status", "new_status", type=click.Choice(["D", "G"]), required=True)
@json_option
@click.pass_context
def update(ctx: click.Context, task_ids: tuple[str, ...], workflow_id: int, new_status: str, as_json: bool) -> int:
    from jobmon_airflow.service.admin import MAX_TASK_UPDATE

    svc = services(ctx)
    wanted = ids(task_ids, "-t", limit=MAX_TASK_UPDATE)
    downstream: list[int] = []
    if new_status == "G":
        from jobmon_airflow.cli.dependencies import task_graph

        rows = svc.insights.task_rows(wanted)
        detail = svc.insights.workflow(workflow_id)
        graph = task_graph(detail.summary.dag_id)
        below = graph.descendants({r.airflow_task_id for r in rows})
        downstream = [t.id for t in svc.insights.tasks_of_airflow_tasks(workflow_id, below, limit=MAX_TASK_UPDATE + 1)]
    result = svc.admin.update_task_statuses(workflow_id, wanted, new_status, user=requesting_user(),
                                            downstream=downstream)  # fmt: skip
    if as_json:
        from jobmon_airflow.cli.common import emit_json

        emit_json({"status": result.status, "updated": list(result.updated), "unchanged": list(result.unchanged)})
    else:
        click.echo(f"{len(result.updated)} tasks set to {new_status} ({len(result.unchanged)} already were)"
                   + (f"; {len(downstream)} downstream" if new_status == "G" else ""))  # fmt: skip
    return 0
