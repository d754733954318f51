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
from jobmon_airflow.clusters.base import Cluster, split_job_id
from jobmon_airflow.execution.jobs import JobSettings, queue_limits, submit_array_batches
from jobmon_airflow.execution.outcomes import Verdict, VerdictKind, WorkflowIdentity, kill_instances, record_events
from jobmon_airflow.records import WatchEvent
from jobmon_airflow.resources import Resources
from jobmon_airflow.service import Services, TaskSpec
from jobmon_airflow.templates import TaskTemplate, TemplateTask

log = logging.getLogger(__name__)
TS = states.TaskStatus
READY = (TS.REGISTERING, TS.ADJUSTING_RESOURCES)
DEFAULT_BATCH_SIZE = 500  # Jobmon's MAX_BATCH_SIZE
NO_LIMIT = 0  # ArrayProgress.concurrency: the live batches were given no limit of their own (no -tc)


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


@dataclass
class ArrayProgress:
    """Where a bound array stands: what an operator carries across deferrals (JSON through the trigger).
    ``concurrency`` is updated as batches are submitted and limits applied (:func:`apply_concurrency`)."""

    array_id: int
    workflow_id: int
    workflow_run_id: int
    requested: dict[str, Any] = field(default_factory=dict)
    try_number: int | None = None
    name: str = "array"  # the cluster job name of its batches (the Airflow task id)
    # The array limit the live batches were given (NO_LIMIT: none); None: not known (a new try), applied once.
    concurrency: int | None = None

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
            data["concurrency"] if isinstance(data.get("concurrency"), int) else None,
        )


def concurrency_shares(batches: Sequence[str], limit: int | None) -> dict[str, int | None]:
    """{batch job id: its -tc}: the array's limit split among its live batches (-tc holds per job), at least 1
    each; with one batch (the usual case under a limit: one batch at a time) it gets the whole limit."""
    if limit is None:
        return dict.fromkeys(batches)
    k = len(batches)
    return {job: max(1, limit // k + (1 if i < limit % k else 0)) for i, job in enumerate(batches)}


def apply_concurrency(services: Services, cluster: Cluster, progress: ArrayProgress, live: Mapping[int, str]) -> bool:
    """``jobmon-airflow workflow concurrency`` for batches already in the cluster: when the array's limit as
    stored now differs from what its live batches were given (``progress.concurrency``), give it to them (one
    cluster call, ``qalter -tc``) and note it in ``progress``. True when it changed something. Called every
    advance and every poll of the waiting trigger, so a change holds within one poll."""
    limit, _ = services.insights.concurrency_limits(progress.array_id)
    wanted = NO_LIMIT if limit is None else limit
    if progress.concurrency == wanted:
        return False
    batches = sorted({split_job_id(job_id)[0] for job_id in live.values()}, key=lambda j: (len(j), j))
    if batches:
        cluster.set_array_concurrency(concurrency_shares(batches, limit))
        log.info(
            "Jobmon array %s: max_concurrently_running %s → %s for live batches %s",
            progress.array_id, progress.concurrency, limit or "none", ", ".join(batches),
        )  # fmt: skip
    progress.concurrency = wanted
    return True


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
        if live:
            apply_concurrency(self.services, self.cluster, progress, live)
        else:
            # What was just submitted is what is live (no second read of every element; one that already ended is
            # concluded by the first look).
            live = self._submit_ready(progress)
        return live if live else self._verdict(progress.array_id)

    def apply_concurrency(self, progress: ArrayProgress, live: Mapping[int, str]) -> bool:
        """:func:`apply_concurrency` with this run's services and cluster (blocking mode, every poll)."""
        return apply_concurrency(self.services, self.cluster, progress, live)

    def record(self, events: Iterable[WatchEvent]) -> None:
        record_events(self.services, self.cluster, events)

    def kill(self, array_id: int) -> None:
        kill_instances(self.services, self.cluster, self.services.queries.array_live_instances(array_id))

    def _submit_ready(self, progress: ArrayProgress) -> dict[int, str]:
        """Submit the ready elements; {instance id: element job id} of those submitted."""
        queries, opts = self.services.queries, self.options
        submitted: dict[int, str] = {}
        ready = sorted(t for t, s in queries.array_task_statuses(progress.array_id).items() if s in READY)
        if not ready:
            return submitted
        # Read every round, not taken from the operator: `jobmon-airflow workflow concurrency` changes them while
        # the array runs.
        array_limit, workflow_limit = self.services.insights.concurrency_limits(progress.array_id)
        progress.concurrency = NO_LIMIT if array_limit is None else array_limit  # what the new batches get
        if workflow_limit is not None:
            room = workflow_limit - queries.active_task_count(progress.workflow_id)
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
            submitted |= submit_array_batches(
                self.services,
                self.cluster,
                self.settings,
                workflow_run_id=progress.workflow_run_id,
                cluster_id=cluster_id,
                array_id=progress.array_id,
                name=progress.name,
                plan=plan,
                queue=limits[str(plan.resources.queue)],
                commands=commands,
                try_number=progress.try_number,
                batch_size=opts.batch_size,
                # -tc holds per job: one batch at a time keeps the array under its limit
                max_batches=1 if array_limit is not None else None,
                max_concurrent=array_limit,
            )
            if array_limit is not None:
                break
        return submitted

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
