"""One Jobmon array through an Airflow task: bind the template, the array and its elements
(:meth:`ArrayRun.start`), then round after round submit what is ready in ``qsub -t`` batches and wait
(:meth:`ArrayRun.advance`), recording outcomes the watchers learnt (:meth:`ArrayRun.record`), until every
element is done or has used up its attempts (a verdict)."""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from jobmon_airflow import states
from jobmon_airflow.clusters.base import Cluster
from jobmon_airflow.execution.jobs import JobSettings, queue_limits, submit_array_batch
from jobmon_airflow.execution.outcomes import Verdict, VerdictKind, WorkflowIdentity, kill_instances, record_events
from jobmon_airflow.records import WatchEvent
from jobmon_airflow.resources import Resources
from jobmon_airflow.service import Services, TaskSpec
from jobmon_airflow.templates import TaskTemplate, TemplateTask

log = logging.getLogger(__name__)
TS = states.TaskStatus
READY = (TS.REGISTERING, TS.ADJUSTING_RESOURCES)
DEFAULT_BATCH_SIZE = 500  # Jobmon's MAX_BATCH_SIZE


@dataclass(frozen=True)
class ArrayOptions:
    """How an array runs: per-element attempts and scaling, batching and concurrency limits."""

    max_attempts: int = 3
    resource_scales: Mapping[str, Any] | None = None
    fallback_queues: Sequence[str] = ()
    batch_size: int = DEFAULT_BATCH_SIZE
    max_concurrently_running: int | None = None  # elements of this array at once (qsub -tc)
    workflow_max_concurrently_running: int | None = None  # tasks of the whole workflow queued or running

    def __post_init__(self) -> None:
        for name in ("batch_size", "max_concurrently_running", "workflow_max_concurrently_running"):
            value = getattr(self, name)
            if (value is not None or name == "batch_size") and (
                not isinstance(value, int) or isinstance(value, bool) or value < 1
            ):
                raise ValueError(f"{name}: expected a whole number ≥ 1, got {value!r}")


@dataclass(frozen=True)
class ArrayProgress:
    """Where a bound array stands: what an operator carries across deferrals (JSON through the trigger)."""

    array_id: int
    workflow_id: int
    workflow_run_id: int
    requested: dict[str, Any] = field(default_factory=dict)
    try_number: int | None = None
    name: str = "array"  # the cluster job name of its batches (the Airflow task id)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Any) -> ArrayProgress:
        if not isinstance(data, Mapping) or not all(
            isinstance(data.get(k), int) for k in ("array_id", "workflow_id", "workflow_run_id")
        ):
            raise ValueError(f"array progress: expected array_id, workflow_id and workflow_run_id, got {data!r}")
        return cls(
            int(data["array_id"]),
            int(data["workflow_id"]),
            int(data["workflow_run_id"]),
            dict(data.get("requested") or {}),
            data.get("try_number"),
            str(data.get("name") or "array"),
        )


class ArrayRun:
    """An array's elements on one cluster, for one operator."""

    def __init__(self, services: Services, cluster: Cluster, settings: JobSettings, options: ArrayOptions):
        self.services = services
        self.cluster = cluster
        self.settings = settings
        self.options = options

    def start(
        self,
        workflow: WorkflowIdentity,
        template: TaskTemplate,
        elements: Sequence[TemplateTask],
        *,
        airflow_task_id: str,
        map_index: int,
        requested: Resources,
    ) -> ArrayProgress:
        """Bind the template version, the array and every element (bulk, idempotent). Elements that failed in an
        earlier pass start over when a user cleared the array (a new pass); an Airflow retry of the same pass (its
        last try failed at the resume point) goes on where it was: live elements are waited for, nothing is
        submitted twice, and ended elements keep their outcome."""
        binding, queries = self.services.binding, self.services.queries
        bound = dataclasses.replace(
            workflow, max_concurrently_running=self.options.workflow_max_concurrently_running
        ).bind(self.services)
        ttv_id = binding.bind_task_template_version(
            bound.tool_version_id, template.name, template.command_template, template.arg_mapping_hash,
            template.node_args, template.task_args, template.op_args,
        )  # fmt: skip
        array_id = binding.bind_array(
            bound.workflow_id,
            airflow_task_id if map_index < 0 else f"{airflow_task_id}[{map_index}]",
            ttv_id,
            self.options.max_concurrently_running or 10_000,
        )
        task_ids = binding.bind_tasks(
            bound.workflow_id,
            [
                TaskSpec(
                    airflow_task_id=airflow_task_id,
                    name=e.name,
                    command=e.command,
                    map_index=map_index,
                    node_args_hash=e.node_args_hash,
                    task_args_hash=e.task_args_hash,
                    max_attempts=self.options.max_attempts,
                    resource_scales=self.options.resource_scales,
                    fallback_queues=self.options.fallback_queues,
                    array_id=array_id,
                    task_template_version_id=ttv_id,
                )
                for e in elements
            ],
        )
        log.info("Jobmon array %s: %s elements bound (task ids %s…)", array_id, len(task_ids), task_ids[:3])
        failed = [t for t, s in queries.array_task_statuses(array_id).items() if s == TS.ERROR_FATAL]
        if failed and workflow.new_pass and not queries.array_live_instances(array_id):
            log.info("Resetting %s failed elements of array %s (new pass)", len(failed), array_id)
            binding.reset_tasks(failed)
        return ArrayProgress(
            array_id,
            bound.workflow_id,
            bound.workflow_run_id,
            requested.to_dict(),
            workflow.try_number,
            airflow_task_id,
        )

    def advance(self, progress: ArrayProgress) -> dict[int, str] | Verdict:
        """Submit what is ready when nothing is live; then the live instances to wait for ({instance: job id}), or
        the verdict when nothing is live and nothing is ready."""
        queries = self.services.queries
        live = queries.array_live_instances(progress.array_id)
        if not live:
            self._submit_ready(progress)
            live = queries.array_live_instances(progress.array_id)
        return live if live else self._verdict(progress.array_id)

    def record(self, events: Iterable[WatchEvent]) -> None:
        record_events(self.services, self.cluster, events)

    def kill(self, array_id: int) -> None:
        kill_instances(self.services, self.cluster, self.services.queries.array_live_instances(array_id))

    def _submit_ready(self, progress: ArrayProgress) -> None:
        queries, opts = self.services.queries, self.options
        ready = sorted(t for t, s in queries.array_task_statuses(progress.array_id).items() if s in READY)
        if not ready:
            return
        if opts.workflow_max_concurrently_running is not None:
            room = opts.workflow_max_concurrently_running - queries.active_task_count(progress.workflow_id)
            ready = ready[: max(room, 0)]
        commands = queries.task_commands(ready)
        requested, limits = queue_limits(self.cluster, Resources.parse(progress.requested), opts.fallback_queues)
        plans = self.services.lifecycle.plan_resources(
            ready, requested, limits, opts.resource_scales, opts.fallback_queues
        )
        cluster_id = self.services.binding.cluster_id(self.cluster.name, self.cluster.name)
        for plan in plans:
            for warning in plan.warnings:
                log.warning("Array %s resources: %s", progress.array_id, warning)
            for start in range(0, len(plan.task_ids), opts.batch_size):
                submit_array_batch(
                    self.services,
                    self.cluster,
                    self.settings,
                    workflow_run_id=progress.workflow_run_id,
                    cluster_id=cluster_id,
                    array_id=progress.array_id,
                    name=progress.name,
                    plan=dataclasses.replace(plan, task_ids=plan.task_ids[start : start + opts.batch_size]),
                    queue=limits[str(plan.resources.queue)],
                    commands=commands,
                    try_number=progress.try_number,
                    max_concurrent=opts.max_concurrently_running,
                )
                if opts.max_concurrently_running is not None:
                    return  # -tc holds per job: one batch at a time keeps the array under its limit

    def _verdict(self, array_id: int) -> Verdict:
        statuses = self.services.queries.array_task_statuses(array_id)
        done = sum(1 for s in statuses.values() if s == TS.DONE)
        if done == len(statuses):
            log.info("Jobmon array %s: all %s elements done", array_id, done)
            return Verdict(VerdictKind.SUCCESS, result={"array_id": array_id, "elements": len(statuses), "done": done})
        failed = sum(1 for s in statuses.values() if s == TS.ERROR_FATAL)
        lines = [f"  {f.line()}" for f in self.services.queries.array_failures(array_id)]
        message = f"Jobmon array {array_id}: {failed} of {len(statuses)} elements failed, {done} done"
        return Verdict(VerdictKind.FAIL, "\n".join([message, *lines]))
