"""JobmonTaskOperator: one Airflow task = one Jobmon task; each Airflow try = one task instance = one cluster job.

bind → (re-attach | scale, queue, submit) → defer → ``execute_complete``. Jobmon's ``max_attempts`` drives Airflow's
retries; after a resource kill the next try runs with scaled resources; a fatal error fails without retry.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import timedelta
from typing import Any

from airflow.sdk import Context
from airflow.sdk.exceptions import AirflowException, AirflowFailException

from jobmon_airflow import execution, states
from jobmon_airflow.clusters.base import SubmissionError
from jobmon_airflow.operators.base import JobmonBaseOperator
from jobmon_airflow.resources import ResourceError, Resources
from jobmon_airflow.service import TaskSpec
from jobmon_airflow.watch import Poller, kill_task_instance


class JobmonTaskOperator(JobmonBaseOperator):
    """Run ``command`` (a shell command line, run by bash on the node; templated) as a cluster job tracked by
    Jobmon. ``max_attempts`` sets Airflow's ``retries`` to ``max_attempts - 1``: one Airflow try per attempt.
    Other arguments: :class:`~jobmon_airflow.operators.base.JobmonBaseOperator`.
    """

    template_fields: Sequence[str] = ("command", "compute_resources", "name")
    ui_color = "#d9ead3"

    def __init__(self, *, command: str, name: str | None = None, max_attempts: int = 3, **kwargs: Any) -> None:
        if isinstance(max_attempts, int) and max_attempts >= 1:
            kwargs.setdefault("retries", max_attempts - 1)
        kwargs.setdefault("retry_delay", timedelta(seconds=5))
        super().__init__(max_attempts=max_attempts, **kwargs)
        self.command = command
        self.name = name

    # -- run ------------------------------------------------------------------------------------------------------
    def execute(self, context: Context) -> Any:
        try:
            requested = Resources.parse(self.compute_resources)
        except ResourceError as exc:
            raise AirflowFailException(str(exc)) from None
        ti = context["ti"]
        run_id = context["run_id"]
        svc, cluster = self.service, self.cluster_backend
        bound = svc.bind_workflow_run(
            dag_id=self.dag_id,
            run_id=run_id,
            tool=self.tool,
            tool_version=self.tool_version(),
            workflow_args=self.workflow_args,
        )
        map_index = getattr(ti, "map_index", -1)
        task_name = self.name or (self.task_id if map_index < 0 else f"{self.task_id}[{map_index}]")
        (task_id,) = svc.bind_tasks(
            bound.workflow_id,
            [
                TaskSpec(
                    airflow_task_id=self.task_id,
                    name=task_name,
                    command=self.command,
                    map_index=map_index,
                    max_attempts=self.max_attempts,
                    resource_scales=self.resource_scales,
                    fallback_queues=self.fallback_queues,
                )
            ],
        )
        submission = execution.reattach(svc, cluster, task_id, task_name)
        if submission is None and (ended := svc.unacknowledged_end(task_id)) is not None:
            self.log.info(
                "Task instance %s (job %s) ended %s while no Airflow try watched it: adopting that outcome",
                ended.id, ended.distributor_id, ended.status,
            )  # fmt: skip
            event = {"task_instance_id": ended.id, "job_id": ended.distributor_id, "status": ended.status}
            return self.execute_complete(context, {**event, "source": "database"})
        if submission is None:
            task = svc.get_task(task_id)
            if task.status not in (states.TaskStatus.REGISTERING, states.TaskStatus.ADJUSTING_RESOURCES):
                # Airflow runs a task Jobmon considers finished (D/F) only when a user cleared it: a new pass.
                self.log.info("Jobmon task %s was %s: starting a new pass (attempts reset)", task_id, task.status)
                svc.reset_tasks([task_id])
            try:
                submission = execution.submit_task_instance(
                    svc,
                    cluster,
                    workflow_run_id=bound.workflow_run_id,
                    cluster_id=self.cluster_id,
                    task_id=task_id,
                    name=task_name,
                    command=self.command,
                    requested=requested,
                    resource_scales=self.resource_scales,
                    fallback_queues=self.fallback_queues,
                    log_dir=self.run_log_dir(run_id),
                    state_manager_url=self.hook.state_manager_url,
                    heartbeat_interval=self.heartbeat_interval,
                    try_number=ti.try_number,
                    http_retry_seconds=self.hook.worker_http_retry_seconds,
                )
            except (SubmissionError, ResourceError) as exc:
                raise AirflowFailException(f"{cluster.name} refused the job: {exc}") from None
        self._submission = submission
        if not self.deferrable:
            event = Poller(svc, cluster, self.lost_grace_s).wait_blocking(
                submission.task_instance_id, submission.job_id, self.resolved_poll_interval
            )
            return self.execute_complete(context, event)
        from jobmon_airflow.triggers import JobmonTaskTrigger

        self.defer(
            trigger=JobmonTaskTrigger(
                task_instance_id=submission.task_instance_id,
                job_id=submission.job_id,
                cluster=self.cluster_spec,
                jobmon_conn_id=self.jobmon_conn_id,
                poll_interval=self.resolved_poll_interval,
                lost_grace_s=self.lost_grace_s,
            ),
            method_name="execute_complete",
            timeout=self.execution_timeout,
        )

    def execute_complete(self, context: Context, event: dict[str, Any] | None = None) -> dict[str, Any]:
        if not event or "task_instance_id" not in event or "status" not in event:
            raise AirflowException(f"Jobmon trigger sent an unexpected event: {event!r}")
        svc = self.service
        ti_id = int(event["task_instance_id"])
        if event.get("kill_job") and event.get("job_id"):
            self.cluster_backend.kill([event["job_id"]])
        if event.get("source") != "database":
            self.log.info("Task instance %s: outcome %s from %s", ti_id, event["status"], event.get("source"))
            svc.apply_outcome(
                ti_id,
                event["status"],
                exit_status=event.get("exit_status"),
                message=event.get("message") or "",
                nodename=event.get("nodename"),
                usage=event.get("usage"),
            )
        view = svc.task_instance(ti_id)
        task = svc.get_task(view.task_id)
        self.log.info(
            "Jobmon task instance %s (job %s on %s): %s, exit status %s, requested %s, max RSS %s bytes",
            ti_id, view.distributor_id, view.nodename, view.status, view.exit_status, view.requested_resources,
            view.maxrss,
        )  # fmt: skip
        if view.status == states.TaskInstanceStatus.DONE:
            svc.acknowledge(view.task_id, ti_id)
            return {"task_instance_id": ti_id, "job_id": view.distributor_id, "nodename": view.nodename}
        for description in svc.error_logs(ti_id):
            self.log.error("Task instance %s error log (stderr tail):\n%s", ti_id, description)
        message = (
            f"Jobmon task instance {ti_id} (job {view.distributor_id}) ended {view.status} "
            f"({states.DESCRIPTIONS[states.TaskInstanceStatus][view.status]}); "
            f"attempt {task.num_attempts} of {task.max_attempts}"
        )
        if view.status == states.TaskInstanceStatus.KILL_SELF:
            svc.end_killed([ti_id])
            raise AirflowFailException(message)
        if task.status == states.TaskStatus.ERROR_FATAL:
            svc.acknowledge(view.task_id, ti_id)
            raise AirflowFailException(message)
        if view.status == states.TaskInstanceStatus.RESOURCE_ERROR:
            message += "; the next try gets scaled resources"
        raise AirflowException(message)

    def on_kill(self) -> None:
        """Blocking mode: the task was killed while polling: record K and delete the job."""
        submission = getattr(self, "_submission", None)
        if submission is not None:
            kill_task_instance(self.service, self.cluster_backend, submission.task_instance_id, submission.job_id)
