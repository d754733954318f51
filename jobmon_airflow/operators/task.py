"""JobmonTaskOperator: one Airflow task = one Jobmon task; each Airflow try = one task instance = one cluster job.

bind → (re-attach | scale, queue, submit) → defer → ``execute_complete``. Jobmon's ``max_attempts`` drives Airflow's
retries; after a resource kill the next try runs with scaled resources; a fatal error fails without retry.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Mapping, Sequence
from datetime import timedelta
from pathlib import Path
from typing import Any

from airflow.sdk import Context
from airflow.sdk.exceptions import AirflowException, AirflowFailException

from jobmon_airflow import execution, states
from jobmon_airflow.clusters.base import SubmissionError
from jobmon_airflow.hooks.jobmon import JobmonHook
from jobmon_airflow.operators.base import JobmonBaseOperator, is_templated
from jobmon_airflow.resources import ResourceError, Resources
from jobmon_airflow.service import TaskSpec
from jobmon_airflow.watch import DEFAULT_LOST_GRACE_S, Poller, kill_task_instance

log = logging.getLogger(__name__)


class JobmonTaskOperator(JobmonBaseOperator):
    """Run ``command`` (a shell command line) as a cluster job tracked by Jobmon.

    :param command: the command line, run by bash on the node (templated).
    :param compute_resources: Jobmon resource keys: ``cores``, ``memory`` ("2G", "500M" or GiB), ``runtime``
        (seconds, "HH:MM:SS" or "10m"), ``queue``, ``project`` (templated).
    :param max_attempts: Jobmon attempts (default 3); sets Airflow's ``retries`` to ``max_attempts - 1``.
    :param resource_scales: growth after a resource kill, Jobmon's default ``{"memory": 0.5, "runtime": 0.5}``.
    :param fallback_queues: queues to try, in order, when the resources do not fit the requested queue.
    :param cluster: ``local`` or ``gridengine`` (default: the Jobmon connection's ``cluster`` extra, else local).
    :param deferrable: wait in the triggerer (default) or block a worker slot while polling.
    :param poll_interval: seconds between polls (one batched query per process, whatever the task count);
        default: the Grid Engine connection's ``poll_interval``, 10 s on the local cluster.
    :param log_dir: where job logs, exit records and tokens go (default: the Grid Engine connection's ``log_dir``,
        else ``$JOBMON_AIRFLOW_HOME/logs``); on a real cluster a directory every node sees.
    """

    template_fields: Sequence[str] = ("command", "compute_resources", "name")
    ui_color = "#d9ead3"

    def __init__(
        self,
        *,
        command: str,
        compute_resources: Mapping[str, Any] | None = None,
        name: str | None = None,
        max_attempts: int = 3,
        resource_scales: Mapping[str, Any] | None = None,
        fallback_queues: Sequence[str] = (),
        cluster: str | None = None,
        jobmon_conn_id: str = JobmonHook.default_conn_name,
        gridengine_conn_id: str = "gridengine_default",
        tool: str | None = None,
        workflow_args: str | None = None,
        log_dir: str | None = None,
        deferrable: bool = True,
        poll_interval: float | None = None,
        heartbeat_interval: float = 90.0,
        lost_grace_s: float = DEFAULT_LOST_GRACE_S,
        **kwargs: Any,
    ) -> None:
        if not isinstance(max_attempts, int) or max_attempts < 1:
            raise ValueError(f"max_attempts: expected a whole number ≥ 1, got {max_attempts!r}")
        kwargs.setdefault("retries", max_attempts - 1)
        kwargs.setdefault("retry_delay", timedelta(seconds=5))
        super().__init__(**kwargs)
        self.command = command
        self.compute_resources = dict(compute_resources or {})
        self.name = name
        self.max_attempts = max_attempts
        self.resource_scales = dict(resource_scales) if resource_scales is not None else None
        self.fallback_queues = list(fallback_queues)
        self.cluster = cluster
        self.jobmon_conn_id = jobmon_conn_id
        self.gridengine_conn_id = gridengine_conn_id
        self.tool = tool
        self.workflow_args = workflow_args
        self.log_dir = log_dir
        self.deferrable = deferrable
        self.poll_interval = poll_interval
        self.heartbeat_interval = heartbeat_interval
        self.lost_grace_s = lost_grace_s
        if not is_templated(self.compute_resources):
            Resources.parse(self.compute_resources)  # bad values fail when the DAG is parsed, naming the field
        if self.resource_scales is not None:
            from jobmon_airflow.resources import scale_resources

            scale_resources(Resources(), self.resource_scales)

    # -- collaborators (built at run time, never at parse time) ---------------------------------------------------
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
            tool_version=self._tool_version(),
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
        if submission is None:
            task = svc.get_task(task_id)
            if task.status not in (states.TaskStatus.REGISTERING, states.TaskStatus.ADJUSTING_RESOURCES):
                # Airflow runs a task Jobmon considers finished (D/F) only when a user cleared it: a new pass.
                self.log.info("Jobmon task %s was %s: starting a new pass (attempts reset)", task_id, task.status)
                svc.reset_tasks([task_id])
            cluster_id = self.cluster_id
            try:
                submission = execution.submit_task_instance(
                    svc,
                    cluster,
                    workflow_run_id=bound.workflow_run_id,
                    cluster_id=cluster_id,
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
            raise AirflowFailException(message)
        if view.status == states.TaskInstanceStatus.RESOURCE_ERROR:
            message += "; the next try gets scaled resources"
        raise AirflowException(message)

    def on_kill(self) -> None:
        """Blocking mode: the task was killed while polling: record K and delete the job."""
        submission = getattr(self, "_submission", None)
        if submission is not None:
            kill_task_instance(self.service, self.cluster_backend, submission.task_instance_id, submission.job_id)

    # -- helpers --------------------------------------------------------------------------------------------------

    def _tool_version(self) -> str:
        """The DAG's code version: a hash of its file, so a changed DAG binds a new tool version."""
        try:
            return hashlib.sha256(Path(self.dag.fileloc).read_bytes()).hexdigest()[:16]
        except Exception:
            return "1"
