"""JobmonArrayOperator: one task template × node-arg values = one Jobmon Array, run as Grid Engine array jobs.

Rounds of ``qsub -t`` batches, then a deferral until every live element has ended (:class:`ArrayRun`); it succeeds
when every element is done and fails listing the elements that used up their attempts."""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from datetime import timedelta
from typing import Any

from airflow.sdk import Context
from airflow.sdk.exceptions import AirflowException

from jobmon_airflow.execution import ArrayOptions, ArrayProgress, ArrayRun
from jobmon_airflow.execution.array_run import DEFAULT_BATCH_SIZE
from jobmon_airflow.operators.base import JobmonBaseOperator, is_templated
from jobmon_airflow.records import WatchEvent
from jobmon_airflow.resources import Resources
from jobmon_airflow.templates import TaskTemplate
from jobmon_airflow.ui.links import JobmonLink


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
    operator_extra_links = (JobmonLink(),)  # the task instance's Jobmon page
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
        # Elements retry inside the operator, each up to max_attempts; Airflow retries the operator itself only when
        # a try fails on its way (e.g. the API server restarted at the resume point): safe, nothing runs twice.
        kwargs.setdefault("retries", 2)
        kwargs.setdefault("retry_delay", timedelta(seconds=30))
        super().__init__(compute_resources=compute_resources or task_template.default_resources_requested, **kwargs)
        self.task_template = task_template
        self.node_args = dict(node_args)
        self.task_args = dict(task_args or {})
        self.op_args = dict(op_args or {})
        self.batch_size = batch_size
        self.max_concurrently_running = max_concurrently_running
        self.workflow_max_concurrently_running = workflow_max_concurrently_running
        self._options()  # bad numbers fail when the DAG is parsed, naming the argument
        if not any(is_templated(v) for v in (self.node_args, self.task_args, self.op_args)):
            self.task_template.create_tasks(**self.node_args, **self.task_args, **self.op_args)

    def _options(self) -> ArrayOptions:
        return ArrayOptions(
            self.max_attempts, self.resource_scales, self.fallback_queues, self.batch_size,
            self.max_concurrently_running, self.workflow_max_concurrently_running,
        )  # fmt: skip

    def _run(self, context: Context) -> ArrayRun:
        return ArrayRun(self.services, self.cluster_backend, self.job_settings(context["run_id"]), self._options())

    def execute(self, context: Context) -> Any:
        run = self._run(context)
        with self.run_errors():
            progress = run.start(
                self.workflow(context),
                self.task_template,
                self.task_template.create_tasks(**self.node_args, **self.task_args, **self.op_args),
                airflow_task_id=self.task_id,
                map_index=getattr(context["ti"], "map_index", -1),
                requested=Resources.parse(self.compute_resources),
            )
        return self._advance(run, progress)

    def execute_complete(self, context: Context, event: dict[str, Any] | None = None, **_: Any) -> Any:
        try:
            progress = ArrayProgress.from_dict((event or {}).get("carry"))
            outcomes = [WatchEvent.from_dict(e) for e in (event or {}).get("outcomes") or []]
        except ValueError as exc:
            raise AirflowException(f"Jobmon array trigger sent an unexpected event {event!r}: {exc}") from None
        run = self._run(context)
        run.record(outcomes)
        return self._advance(run, progress)

    def _advance(self, run: ArrayRun, progress: ArrayProgress) -> Any:
        """Submit what is ready, then wait; until the run reaches its verdict."""
        from jobmon_airflow.triggers import JobmonArrayTrigger

        self._killable = (run, progress.array_id)  # for on_kill in blocking mode
        while True:
            with self.run_errors():
                live = run.advance(progress)
            if not isinstance(live, dict):
                return self.outcome(live)
            trigger = JobmonArrayTrigger(progress.array_id, carry=progress.to_dict(), **self.trigger_kwargs())
            # Each poll also applies a changed concurrency limit to the live batches (the trigger does the same).
            run.record(self.wait_for(trigger, live, functools.partial(run.apply_concurrency, progress, live)).values())

    def on_kill(self) -> None:
        killable = getattr(self, "_killable", None)
        if killable is not None:
            run, array_id = killable
            run.kill(array_id)
