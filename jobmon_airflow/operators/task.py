"""JobmonTaskOperator: one Airflow task = one Jobmon task; each Airflow try = one task instance = one cluster job.

start (bind, re-attach, adopt or submit) → defer → ``execute_complete``: the verdict becomes success, a retry or a
failure. Jobmon's ``max_attempts`` drives Airflow's retries; after a resource kill the next try runs with scaled
resources; a fatal error fails without retry.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import timedelta
from typing import Any

from airflow.sdk import Context

from jobmon_airflow.execution import Submission, TaskRun, Verdict
from jobmon_airflow.operators.base import JobmonBaseOperator, is_templated
from jobmon_airflow.resources import Resources
from jobmon_airflow.service import TaskSpec
from jobmon_airflow.service.core import bounded_name
from jobmon_airflow.ui.links import JobmonLink

RETRY_DELAY = timedelta(seconds=5)


class JobmonTaskOperator(JobmonBaseOperator):
    """Run ``command`` (a shell command line, run by bash on the node; templated) as a cluster job tracked by
    Jobmon. ``max_attempts`` sets Airflow's ``retries`` to ``max_attempts - 1``: one Airflow try per attempt.
    Other arguments: :class:`~jobmon_airflow.operators.base.JobmonBaseOperator`.
    """

    template_fields: Sequence[str] = ("command", "compute_resources", "name")
    operator_extra_links = (JobmonLink(),)  # the task instance's Jobmon page
    ui_color = "#d9ead3"

    def __init__(self, *, command: str, name: str | None = None, max_attempts: int = 3, **kwargs: Any) -> None:
        super().__init__(max_attempts=max_attempts, **_retries(max_attempts, kwargs))
        self.command = command
        self.name = name
        if name is not None and not is_templated(name):
            bounded_name("name", name)  # fails when the DAG is parsed

    @classmethod
    def partial(cls, **kwargs: Any) -> Any:
        """The scheduler gives mapped task instances the retries of ``partial``'s arguments (``__init__`` runs
        only when a mapped instance executes): set them from ``max_attempts`` here too."""
        return super().partial(**_retries(kwargs.get("max_attempts", 3), kwargs))

    def _run(self, context: Context) -> TaskRun:
        return TaskRun(self.services, self.cluster_backend, self.job_settings(context["run_id"]))

    def execute(self, context: Context) -> Any:
        map_index = getattr(context["ti"], "map_index", -1)
        task = TaskSpec(
            airflow_task_id=self.task_id,
            name=self.name or (self.task_id if map_index < 0 else f"{self.task_id}[{map_index}]"),
            command=self.command,
            map_index=map_index,
            max_attempts=self.max_attempts,
            resource_scales=self.resource_scales,
            fallback_queues=self.fallback_queues,
        )
        run = self._run(context)
        with self.run_errors():
            step = run.start(self.workflow(context), task, Resources.parse(self.compute_resources))
        if isinstance(step, Verdict):
            return self.outcome(step)
        self._submission: Submission = step
        from jobmon_airflow.triggers import JobmonTaskTrigger

        trigger = JobmonTaskTrigger(step.task_instance_id, step.job_id, **self.trigger_kwargs())
        events = self.wait_for(trigger, {step.task_instance_id: step.job_id})  # returns only in blocking mode
        return self.outcome(run.conclude(events[step.task_instance_id]))

    def execute_complete(self, context: Context, event: dict[str, Any] | None = None) -> Any:
        return self.outcome(self._run(context).conclude(self.watch_event(event)))

    def on_kill(self) -> None:
        """Blocking mode: the task was killed while polling: record K and delete the job."""
        submission = getattr(self, "_submission", None)
        if submission is not None:
            TaskRun(self.services, self.cluster_backend, self.job_settings("")).kill(submission)


def _retries(max_attempts: Any, kwargs: dict[str, Any]) -> dict[str, Any]:
    """Airflow's retries from Jobmon's ``max_attempts`` (one try per attempt), unless given."""
    if isinstance(max_attempts, int) and max_attempts >= 1:
        kwargs.setdefault("retries", max_attempts - 1)
    kwargs.setdefault("retry_delay", RETRY_DELAY)
    return kwargs
