"""JobmonArrayOperator: one task template × node-arg values = one Jobmon Array, run as Grid Engine array jobs.

Each round: every ready element (G, or A after a resource kill) is grouped by resource set and submitted in
``qsub -t`` batches of ``batch_size``; the operator defers until every live element has ended, then starts the next
round with the elements that failed and have attempts left (resource-killed ones with scaled resources). It ends
successful when every element is done and fails listing the elements that used up their attempts.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

from airflow.sdk import Context
from airflow.sdk.exceptions import AirflowException, AirflowFailException

from jobmon_airflow import execution, states
from jobmon_airflow.clusters.base import SubmissionError
from jobmon_airflow.operators.base import JobmonBaseOperator, is_templated
from jobmon_airflow.resources import ResourceError, Resources
from jobmon_airflow.service import TaskSpec
from jobmon_airflow.templates import TaskTemplate
from jobmon_airflow.watch import Poller, kill_instances

DEFAULT_BATCH_SIZE = 500  # Jobmon's MAX_BATCH_SIZE


class JobmonArrayOperator(JobmonBaseOperator):
    """Run every combination of ``node_args`` through ``task_template`` as elements of cluster array jobs.

    :param task_template: the :class:`~jobmon_airflow.templates.TaskTemplate`.
    :param node_args: node arg values; lists expand to their cross product (Jobmon's ``create_tasks``).
    :param task_args: / :param op_args: scalar values of the template's task and op args.
    :param compute_resources: resources of every element (default: the template's ``default_resources``).
    :param batch_size: elements per ``qsub -t`` batch (default 500; one batch per distinct resource set).
    :param max_concurrently_running: elements of this array running at once (``qsub -tc``).
    :param workflow_max_concurrently_running: tasks of the whole workflow (DAG run) queued or running at once.

    Other arguments (``max_attempts`` is per element): :class:`~jobmon_airflow.operators.base.JobmonBaseOperator`.
    """

    template_fields: Sequence[str] = ("node_args", "task_args", "op_args", "compute_resources")
    ui_color = "#c9daf8"

    def __init__(
        self,
        *,
        task_template: TaskTemplate,
        node_args: Mapping[str, Any],
        task_args: Mapping[str, Any] | None = None,
        op_args: Mapping[str, Any] | None = None,
        compute_resources: Mapping[str, Any] | None = None,
        batch_size: int = DEFAULT_BATCH_SIZE,
        max_concurrently_running: int | None = None,
        workflow_max_concurrently_running: int | None = None,
        **kwargs: Any,
    ) -> None:
        kwargs.setdefault("retries", 0)  # elements retry inside the operator, each up to max_attempts
        if compute_resources is None:
            compute_resources = task_template.default_resources_requested
        super().__init__(compute_resources=compute_resources, **kwargs)
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size: expected a whole number ≥ 1, got {batch_size!r}")
        for field, limit in (
            ("max_concurrently_running", max_concurrently_running),
            ("workflow_max_concurrently_running", workflow_max_concurrently_running),
        ):
            if limit is not None and (not isinstance(limit, int) or limit < 1):
                raise ValueError(f"{field}: expected a whole number ≥ 1, got {limit!r}")
        self.task_template = task_template
        self.node_args = dict(node_args)
        self.task_args = dict(task_args or {})
        self.op_args = dict(op_args or {})
        self.batch_size = batch_size
        self.max_concurrently_running = max_concurrently_running
        self.workflow_max_concurrently_running = workflow_max_concurrently_running
        if not any(is_templated(v) for v in (self.node_args, self.task_args, self.op_args)):
            self.task_template.create_tasks(**self.node_args, **self.task_args, **self.op_args)  # fail at parse

    # -- run ------------------------------------------------------------------------------------------------------
    def execute(self, context: Context) -> Any:
        try:
            requested = Resources.parse(self.compute_resources)
            elements = self.task_template.create_tasks(**self.node_args, **self.task_args, **self.op_args)
        except (ResourceError, ValueError) as exc:
            raise AirflowFailException(str(exc)) from None
        svc = self.service
        bound = svc.bind_workflow_run(
            dag_id=self.dag_id,
            run_id=context["run_id"],
            tool=self.tool,
            tool_version=self.tool_version(),
            workflow_args=self.workflow_args,
            max_concurrently_running=self.workflow_max_concurrently_running,
        )
        tt = self.task_template
        ttv_id = svc.bind_task_template_version(
            bound.tool_version_id, tt.name, tt.command_template, tt.arg_mapping_hash, tt.node_args, tt.task_args,
            tt.op_args,
        )  # fmt: skip
        map_index = getattr(context["ti"], "map_index", -1)
        array_id = svc.bind_array(
            bound.workflow_id,
            self.task_id if map_index < 0 else f"{self.task_id}[{map_index}]",
            ttv_id,
            self.max_concurrently_running or 10_000,
        )
        task_ids = svc.bind_tasks(
            bound.workflow_id,
            [
                TaskSpec(
                    airflow_task_id=self.task_id,
                    name=e.name,
                    command=e.command,
                    map_index=map_index,
                    node_args_hash=e.node_args_hash,
                    task_args_hash=e.task_args_hash,
                    max_attempts=self.max_attempts,
                    resource_scales=self.resource_scales,
                    fallback_queues=self.fallback_queues,
                    array_id=array_id,
                    task_template_version_id=ttv_id,
                )
                for e in elements
            ],
        )
        self.log.info("Jobmon array %s: %s elements bound (task ids %s…)", array_id, len(task_ids), task_ids[:3])
        statuses = svc.array_task_statuses(array_id)
        live = svc.array_live_instances(array_id)
        finished = [t for t, s in statuses.items() if s == states.TaskStatus.ERROR_FATAL]
        if finished and not live:
            # Airflow runs the array again only when a user cleared it: failed elements start over (resume).
            self.log.info("Resetting %s failed elements of array %s (new pass)", len(finished), array_id)
            svc.reset_tasks(finished)
        return self._advance(context, array_id, bound.workflow_id, bound.workflow_run_id, requested)

    def execute_complete(self, context: Context, event: dict[str, Any] | None = None, **_: Any) -> Any:
        carry = (event or {}).get("carry") or {}
        if not event or "array_id" not in carry or event.get("array_id") != carry["array_id"]:
            raise AirflowException(f"Jobmon array trigger sent an unexpected event: {event!r}")
        self._apply(event.get("outcomes") or [])
        return self._advance(
            context,
            carry["array_id"],
            carry["workflow_id"],
            carry["workflow_run_id"],
            Resources.parse(carry["requested"]),
        )

    def _apply(self, outcomes: Sequence[Mapping[str, Any]]) -> None:
        """Outcomes learnt without the worker's report; the rest are already in the database."""
        for event in outcomes:  # only the elements whose worker could not report: few
            if event.get("kill_job") and event.get("job_id"):
                self.cluster_backend.kill([str(event["job_id"])])
            self.service.apply_outcome(
                int(event["task_instance_id"]),
                str(event["status"]),
                exit_status=event.get("exit_status"),
                message=event.get("message") or "",
                nodename=event.get("nodename"),
                usage=event.get("usage"),
            )

    def _advance(
        self, context: Context, array_id: int, workflow_id: int, workflow_run_id: int, requested: Resources
    ) -> Any:
        """Submit what is ready, then wait; or finish when nothing is live and nothing is ready."""
        svc = self.service
        while True:
            live = svc.array_live_instances(array_id)
            if not live:
                self._submit_ready(context, array_id, workflow_id, workflow_run_id, requested)
                live = svc.array_live_instances(array_id)
            if not live:
                return self._finish(array_id)
            if self.deferrable:
                from jobmon_airflow.triggers import JobmonArrayTrigger

                self.defer(
                    trigger=JobmonArrayTrigger(
                        array_id=array_id,
                        cluster=self.cluster_spec,
                        jobmon_conn_id=self.jobmon_conn_id,
                        poll_interval=self.resolved_poll_interval,
                        lost_grace_s=self.lost_grace_s,
                        carry={
                            "array_id": array_id,
                            "workflow_id": workflow_id,
                            "workflow_run_id": workflow_run_id,
                            "requested": requested.to_dict(),
                        },
                    ),
                    method_name="execute_complete",
                    timeout=self.execution_timeout,
                )
            poller = Poller(svc, self.cluster_backend, self.lost_grace_s)
            self._array_id = array_id  # for on_kill in blocking mode
            events = poller.wait_all_blocking(live, self.resolved_poll_interval)
            self._apply([e for e in events.values() if e.get("source") != "database"])

    def _submit_ready(
        self, context: Context, array_id: int, workflow_id: int, workflow_run_id: int, requested: Resources
    ) -> None:
        svc, cluster = self.service, self.cluster_backend
        statuses = svc.array_task_statuses(array_id)
        ready = sorted(t for t, s in statuses.items() if s in ("G", "A"))
        if not ready:
            return
        limit = self.workflow_max_concurrently_running
        if limit is not None:
            ready = ready[: max(limit - svc.active_task_count(workflow_id), 0)]
        commands = svc.task_commands(ready)
        plans = svc.plan_resources(ready, requested, cluster.queue_limits, self.resource_scales, self.fallback_queues)
        cluster_id = self.cluster_id
        log_dir = self.run_log_dir(context["run_id"])
        for plan in plans:
            for warning in plan.warnings:
                self.log.warning("Array %s resources: %s", array_id, warning)
            for start in range(0, len(plan.task_ids), self.batch_size):
                batch = dataclasses.replace(plan, task_ids=plan.task_ids[start : start + self.batch_size])
                try:
                    execution.submit_array_batch(
                        svc,
                        cluster,
                        workflow_run_id=workflow_run_id,
                        cluster_id=cluster_id,
                        array_id=array_id,
                        name=self.task_id,
                        plan=batch,
                        commands=commands,
                        log_dir=log_dir,
                        state_manager_url=self.hook.state_manager_url,
                        heartbeat_interval=self.heartbeat_interval,
                        try_number=context["ti"].try_number,
                        max_concurrent=self.max_concurrently_running,
                        http_retry_seconds=self.hook.worker_http_retry_seconds,
                    )
                except (SubmissionError, ResourceError) as exc:
                    raise AirflowFailException(f"{cluster.name} refused array batch: {exc}") from None
                if self.max_concurrently_running is not None:
                    return  # -tc holds per job: one batch at a time keeps the array under its limit

    def _finish(self, array_id: int) -> dict[str, Any]:
        statuses = self.service.array_task_statuses(array_id)
        done = sum(1 for s in statuses.values() if s == states.TaskStatus.DONE)
        if done == len(statuses):
            self.log.info("Jobmon array %s: all %s elements done", array_id, done)
            return {"array_id": array_id, "elements": len(statuses), "done": done}
        failures = self.service.array_failures(array_id)
        lines = [
            f"  {f['name']} (task {f['task_id']}, {f['attempts']} attempts, last {f['status']} job {f['job_id']}): "
            f"{f['error'].strip().splitlines()[-1] if f['error'].strip() else 'no error text'}"
            for f in failures
        ]
        failed = sum(1 for s in statuses.values() if s == states.TaskStatus.ERROR_FATAL)
        raise AirflowFailException(
            f"Jobmon array {array_id}: {failed} of {len(statuses)} elements failed, {done} done\n" + "\n".join(lines)
        )

    def on_kill(self) -> None:
        array_id = getattr(self, "_array_id", None)
        if array_id is not None:
            kill_instances(self.service, self.cluster_backend, self.service.array_live_instances(array_id))
