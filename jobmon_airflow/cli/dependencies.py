"""Task dependencies, from the Airflow DAG: the state database has no edge table, as Airflow holds the graph.

Jobmon tasks depend on each other through their Airflow tasks (every element of an array or mapped task shares its
operator's upstream and downstream). The DAG comes from Airflow's serialized DAGs when the metadata database has
it, else from parsing the DAGs folder.
"""

from __future__ import annotations

import contextlib
import sys
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass

from jobmon_airflow.cli.common import CliError


@dataclass(frozen=True)
class TaskGraph:
    upstream: Mapping[str, frozenset[str]]
    downstream: Mapping[str, frozenset[str]]

    def descendants(self, task_ids: set[str]) -> set[str]:
        """Every task downstream of ``task_ids``, transitively (Jobmon's sub-DAG of ``task update -s G``)."""
        seen: set[str] = set()
        queue = deque(task_ids)
        while queue:
            for child in self.downstream.get(queue.popleft(), frozenset()):
                if child not in seen:
                    seen.add(child)
                    queue.append(child)
        return seen - task_ids


def _load_dag(dag_id: str) -> object | None:
    try:
        from airflow.models.serialized_dag import SerializedDagModel

        dag = SerializedDagModel.get_dag(dag_id)
        if dag is not None:
            return dag
    except Exception:  # no metadata database, or not migrated: parse the DAGs folder instead
        pass
    from airflow.configuration import conf
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=conf.get("core", "dags_folder"))
    return bag.dags.get(dag_id)  # parsed only: get_dag() would look in the metadata database again


def task_graph(dag_id: str) -> TaskGraph:
    with contextlib.redirect_stdout(sys.stderr):  # Airflow may log to stdout
        dag = _load_dag(dag_id)
    if dag is None:
        raise CliError(f"DAG {dag_id!r} not found (in Airflow's database nor in its DAGs folder): cannot tell "
                       f"its task dependencies")  # fmt: skip
    tasks = dag.task_dict  # type: ignore[attr-defined]
    return TaskGraph(
        upstream={t: frozenset(task.upstream_task_ids) for t, task in tasks.items()},
        downstream={t: frozenset(task.downstream_task_ids) for t, task in tasks.items()},
    )
