"""Airflow identities to Jobmon ids and back: the workflow of a DAG run and the tasks of a task instance (for the pages
Airflow's UI opens from them), and the DAG of a workflow or a task (whose is it: what the query API and the pages
check a viewer may read). One indexed statement each (``workflow(dag_id)``, the ``task(workflow_id,
airflow_task_id, map_index, ...)`` unique key, primary keys). Read-only."""

from __future__ import annotations

from dataclasses import dataclass

import sqlalchemy as sa

from jobmon_airflow.service.core import TASK, WF, NotFound, Store
from jobmon_airflow.service.insight_tasks import TEMPLATE_NAME, with_template


@dataclass(frozen=True)
class AirflowTaskTasks:
    """The Jobmon tasks one Airflow task instance made: one for a task operator, many for an array operator."""

    workflow_id: int
    task_ids: tuple[int, ...]  # at most ``limit`` of them, in id order
    templates: tuple[str, ...]  # their templates' names (the Airflow task id for a task bound without one)


class Lookup(Store):
    def workflow_of_run(self, dag_id: str, run_id: str) -> int | None:
        """The workflow of a DAG run (one per run), None when the run made none."""
        with self.engine.connect() as conn:
            found = conn.execute(
                sa.select(WF.c.id).where(WF.c.dag_id == dag_id, WF.c.run_id == run_id).order_by(WF.c.id).limit(1)
            ).scalar()
        return None if found is None else int(found)

    def dag_ids(self) -> list[str]:
        """Every DAG id the state database holds (``workflow.dag_id`` is indexed: a loose index scan)."""
        with self.engine.connect() as conn:
            return list(conn.execute(sa.select(WF.c.dag_id).distinct()).scalars())

    def dag_of_workflow(self, workflow_id: int) -> str:
        with self.engine.connect() as conn:
            dag_id = conn.execute(sa.select(WF.c.dag_id).where(WF.c.id == workflow_id)).scalar()
        if dag_id is None:
            raise NotFound(f"workflow {workflow_id}")
        return str(dag_id)

    def dag_of_task(self, task_id: int) -> str:
        with self.engine.connect() as conn:
            dag_id = conn.execute(
                sa.select(WF.c.dag_id).join(TASK, TASK.c.workflow_id == WF.c.id).where(TASK.c.id == task_id)
            ).scalar()
        if dag_id is None:
            raise NotFound(f"task {task_id}")
        return str(dag_id)

    def tasks_of_airflow_task(
        self, workflow_id: int, airflow_task_id: str, map_index: int, limit: int = 2
    ) -> AirflowTaskTasks:
        with self.engine.connect() as conn:
            rows = conn.execute(
                with_template(sa.select(TASK.c.id, TEMPLATE_NAME.label("template")).select_from(TASK))
                .where(
                    TASK.c.workflow_id == workflow_id,
                    TASK.c.airflow_task_id == airflow_task_id,
                    TASK.c.map_index == map_index,
                )
                .order_by(TASK.c.id)
                .limit(limit)
            ).all()
        return AirflowTaskTasks(
            workflow_id, tuple(int(r.id) for r in rows), tuple(dict.fromkeys(str(r.template) for r in rows))
        )
