"""JobmonWorkflowSensor: wait until a Jobmon workflow reaches a status, for cross-DAG dependencies.

Deferrable by default: the wait happens in the triggerer (:class:`JobmonWorkflowTrigger`, one small query per
interval in a thread), the worker slot is free. The workflow is named by its id, or by the DAG run it belongs to
(``external_dag_id`` + ``external_run_id``, both templated, as ``ExternalTaskSensor`` names them):
the newest workflow of that run.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from datetime import timedelta
from typing import Any

from airflow.sdk import BaseSensorOperator
from airflow.sdk.exceptions import AirflowException
from airflow.triggers.base import BaseTrigger, TriggerEvent

from jobmon_airflow import states
from jobmon_airflow.hooks.jobmon import JobmonHook
from jobmon_airflow.service.reaping import Reaping

WFS = states.WorkflowStatus


def _codes(values: Sequence[str], field: str) -> list[str]:
    """Status codes from codes or names ("D" or "DONE"); ValueError naming the field for anything else."""
    codes = {m.value for m in WFS}
    names = {m.name: m.value for m in WFS}
    out = []
    for v in values:
        if v in codes:
            out.append(str(v))
        elif str(v).upper() in names:
            out.append(names[str(v).upper()])
        else:
            raise ValueError(f"{field}: not a workflow status: {v!r} (one of {', '.join(names)})")
    return out


class JobmonWorkflowTrigger(BaseTrigger):
    """Fires when the workflow's status is in ``target`` or ``failed`` (event: workflow id and status)."""

    def __init__(
        self,
        target: list[str],
        failed: list[str],
        workflow_id: int | None = None,
        dag_id: str | None = None,
        run_id: str | None = None,
        jobmon_conn_id: str = "jobmon_default",
        poll_interval: float = 30.0,
    ) -> None:
        super().__init__()
        self.target, self.failed = target, failed
        self.workflow_id, self.dag_id, self.run_id = workflow_id, dag_id, run_id
        self.jobmon_conn_id = jobmon_conn_id
        self.poll_interval = poll_interval

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return (
            f"{type(self).__module__}.{type(self).__qualname__}",
            {
                "target": self.target,
                "failed": self.failed,
                "workflow_id": self.workflow_id,
                "dag_id": self.dag_id,
                "run_id": self.run_id,
                "jobmon_conn_id": self.jobmon_conn_id,
                "poll_interval": self.poll_interval,
            },
        )

    def _look(self) -> tuple[int, str] | None:
        engine = JobmonHook(self.jobmon_conn_id).get_services().engine
        return Reaping(engine).workflow_state(self.workflow_id, self.dag_id, self.run_id)

    async def run(self) -> AsyncIterator[TriggerEvent]:
        while True:
            try:
                found = await asyncio.to_thread(self._look)
            except Exception:  # the state database briefly away: look again next interval
                self.log.exception("Jobmon workflow sensor: could not read the workflow's status")
                found = None
            if found is not None and found[1] in (*self.target, *self.failed):
                yield TriggerEvent({"workflow_id": found[0], "status": found[1]})
                return
            await asyncio.sleep(self.poll_interval)


class JobmonWorkflowSensor(BaseSensorOperator):
    """Waits until a Jobmon workflow reaches one of ``target_statuses`` (default DONE); fails at once when it
    reaches one of ``failed_statuses`` (default none: a failed workflow may be resumed). Returns (XCom)
    ``{"workflow_id", "status"}``."""

    template_fields: Sequence[str] = ("external_dag_id", "external_run_id", "workflow_id")

    def __init__(
        self,
        *,
        workflow_id: int | None = None,
        external_dag_id: str | None = None,
        external_run_id: str | None = None,
        target_statuses: Sequence[str] = ("D",),
        failed_statuses: Sequence[str] = (),
        jobmon_conn_id: str = "jobmon_default",
        deferrable: bool = True,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if workflow_id is None and not (external_dag_id and external_run_id):
            raise ValueError("JobmonWorkflowSensor: give workflow_id, or external_dag_id and external_run_id")
        self.workflow_id = workflow_id
        self.external_dag_id, self.external_run_id = external_dag_id, external_run_id
        self.target_statuses = _codes(target_statuses, "target_statuses")
        self.failed_statuses = _codes(failed_statuses, "failed_statuses")
        self.jobmon_conn_id = jobmon_conn_id
        self.deferrable = deferrable

    def _check(self) -> dict[str, Any] | None:
        engine = JobmonHook(self.jobmon_conn_id).get_services().engine
        wf_id = int(self.workflow_id) if self.workflow_id is not None else None
        found = Reaping(engine).workflow_state(wf_id, self.external_dag_id, self.external_run_id)
        if found is None:
            return None
        return self._judge({"workflow_id": found[0], "status": found[1]})

    def _judge(self, event: dict[str, Any]) -> dict[str, Any] | None:
        if event["status"] in self.failed_statuses:
            raise AirflowException(f"Jobmon workflow {event['workflow_id']} is {WFS(event['status']).name}")
        return event if event["status"] in self.target_statuses else None

    def poke(self, context: Any) -> bool:
        return self._check() is not None

    def execute(self, context: Any) -> Any:
        if not self.deferrable:
            super().execute(context)
            return self._check()
        done = self._check()
        if done is not None:
            return done
        self.defer(
            trigger=JobmonWorkflowTrigger(
                target=self.target_statuses,
                failed=self.failed_statuses,
                workflow_id=int(self.workflow_id) if self.workflow_id is not None else None,
                dag_id=self.external_dag_id,
                run_id=self.external_run_id,
                jobmon_conn_id=self.jobmon_conn_id,
                poll_interval=float(self.poke_interval),
            ),
            method_name="execute_complete",
            timeout=timedelta(seconds=float(self.timeout)) if self.timeout is not None else None,
        )

    def execute_complete(self, context: Any, event: dict[str, Any]) -> dict[str, Any]:
        done = self._judge(event)
        if done is None:  # pragma: no cover - the trigger fires only on a target or failed status
            raise AirflowException(f"Jobmon workflow sensor: unexpected event {event}")
        return done
