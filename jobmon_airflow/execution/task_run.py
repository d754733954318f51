"""One Jobmon task through one Airflow try: bind, re-attach or adopt or submit (:meth:`TaskRun.start`), then turn
how the instance ended into a verdict (:meth:`TaskRun.conclude`). The operator only defers and raises."""

from __future__ import annotations

import logging

from jobmon_airflow import states
from jobmon_airflow.clusters.base import Cluster, JobState
from jobmon_airflow.execution.jobs import JobSettings, Submission, job_name, queue_limits, submit_task_instance
from jobmon_airflow.execution.outcomes import Verdict, VerdictKind, WorkflowIdentity, kill_instances, record_events
from jobmon_airflow.records import EventSource, WatchEvent
from jobmon_airflow.resources import Resources
from jobmon_airflow.service import Services, TaskSpec

log = logging.getLogger(__name__)
TIS = states.TaskInstanceStatus
TS = states.TaskStatus


class TaskRun:
    """A task's attempt on one cluster, for one operator."""

    def __init__(self, services: Services, cluster: Cluster, settings: JobSettings):
        self.services = services
        self.cluster = cluster
        self.settings = settings

    def start(self, workflow: WorkflowIdentity, task: TaskSpec, requested: Resources) -> Submission | Verdict:
        """Bind, then re-attach to a live job of this task, or adopt an end no Airflow try saw, or submit.

        A verdict comes back only when an adopted end decides the try at once."""
        binding = self.services.binding
        bound = workflow.bind(self.services)
        (task_id,) = binding.bind_tasks(bound.workflow_id, [task])
        submission = self.reattach(task_id, task.name)
        if submission is not None:
            return submission
        ended = binding.unacknowledged_end(task_id)
        if ended is not None:
            log.info(
                "Task instance %s (job %s) ended %s while no Airflow try watched it: adopting that outcome",
                ended.id, ended.distributor_id, ended.status,
            )  # fmt: skip
            return self.conclude(WatchEvent(ended.id, ended.distributor_id, ended.status, EventSource.DATABASE))
        current = self.services.queries.get_task(task_id)
        if current.status not in (TS.REGISTERING, TS.ADJUSTING_RESOURCES):
            # Airflow runs a task Jobmon considers finished (D/F) only when a user cleared it: a new pass.
            log.info("Jobmon task %s was %s: starting a new pass (attempts reset)", task_id, current.status)
            binding.reset_tasks([task_id])
        requested, limits = queue_limits(self.cluster, requested, task.fallback_queues)
        (plan,) = self.services.lifecycle.plan_resources(
            [task_id], requested, limits, task.resource_scales, task.fallback_queues
        )
        for warning in plan.warnings:
            log.warning("Resources of %s: %s", task.name, warning)
        if plan.kind == states.TaskResourcesType.ADJUSTED:
            log.info("Last attempt was killed for resources: scaled to %s", plan.resources.to_dict())
        return submit_task_instance(
            self.services,
            self.cluster,
            self.settings,
            workflow_run_id=bound.workflow_run_id,
            cluster_id=self.services.binding.cluster_id(self.cluster.name, self.cluster.name),
            task_id=task_id,
            name=task.name,
            command=task.command,
            plan=plan,
            queue=limits[str(plan.resources.queue)],
            try_number=workflow.try_number,
        )

    def reattach(self, task_id: int, task_name: str) -> Submission | None:
        """A live job of this task from an earlier try or a crashed worker: adopt it instead of submitting twice."""
        lifecycle, queries = self.services.lifecycle, self.services.queries
        live = queries.live_task_instance(task_id)
        if live is None:
            return None
        if live.status == TIS.KILL_SELF:
            if live.distributor_id:
                self.cluster.kill([live.distributor_id])  # killed on purpose: make sure, and start afresh
            return None
        if not live.distributor_id:
            # The submitter died between qsub and storing the job id: the job's name still leads to it.
            found = self.cluster.find_jobs(job_name(live.id, task_name))
            if len(found) != 1:
                lifecycle.log_no_distributor_id([live.id], f"submission interrupted; jobs found by name: {found}")
                if found:
                    self.cluster.kill(found)
                return None
            log.info("Found job %s of task instance %s by its name", found[0], live.id)
            lifecycle.log_distributor_ids({live.id: found[0]})
            live = queries.task_instance(live.id)
            assert live.distributor_id is not None
        state = self.cluster.statuses([live.distributor_id])[live.distributor_id].state
        log.info(
            "Re-attaching to job %s of task instance %s (status %s, cluster says %s)",
            live.distributor_id, live.id, live.status, state.value,
        )  # fmt: skip
        if state == JobState.GONE:
            log.info("Job %s already left the queue: its outcome is read from its exit record or accounting", live.id)
        return Submission(live.id, live.distributor_id, live.requested_resources, reattached=True)

    def conclude(self, event: WatchEvent) -> Verdict:
        """Record what the watchers learnt, then decide: success, a retry (with scaled resources after a resource
        kill), or a failure no retry can help."""
        binding, queries = self.services.binding, self.services.queries
        ti_id = event.task_instance_id
        record_events(self.services, self.cluster, [event])
        view = queries.task_instance(ti_id)
        task = queries.get_task(view.task_id)
        log.info(
            "Jobmon task instance %s (job %s on %s): %s, exit status %s, requested %s, max RSS %s bytes",
            ti_id, view.distributor_id, view.nodename, view.status, view.exit_status, view.requested_resources,
            view.maxrss,
        )  # fmt: skip
        if view.status == TIS.DONE:
            binding.acknowledge(view.task_id, ti_id)
            return Verdict(
                VerdictKind.SUCCESS,
                result={"task_instance_id": ti_id, "job_id": view.distributor_id, "nodename": view.nodename},
            )
        message = (
            f"Jobmon task instance {ti_id} (job {view.distributor_id}) ended {view.status} "
            f"({states.DESCRIPTIONS[TIS][view.status]}); attempt {task.num_attempts} of {task.max_attempts}"
        )
        details = queries.error_logs(ti_id)
        if view.status == TIS.KILL_SELF:
            self.services.lifecycle.end_killed([ti_id])
            return Verdict(VerdictKind.FAIL, message, details=details)
        if task.status == TS.ERROR_FATAL:
            binding.acknowledge(view.task_id, ti_id)
            return Verdict(VerdictKind.FAIL, message, details=details)
        if view.status == TIS.RESOURCE_ERROR:
            message += "; the next try gets scaled resources"
        return Verdict(VerdictKind.RETRY, message, details=details)

    def kill(self, submission: Submission) -> None:
        """The Airflow task was killed: record K, delete the job, fail the task."""
        kill_instances(self.services, self.cluster, {submission.task_instance_id: submission.job_id})
