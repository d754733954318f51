"""Running Jobmon tasks and arrays as cluster jobs, between the service layer and the operators.

:class:`TaskRun` and :class:`ArrayRun` hold the sequence (bind, re-attach, adopt, submit, record outcomes,
decide); operators defer and turn a :class:`Verdict` into an Airflow outcome. No Airflow here.
"""

from jobmon_airflow.execution.array_run import ArrayOptions, ArrayProgress, ArrayRun, apply_concurrency
from jobmon_airflow.execution.jobs import JobSettings, Submission
from jobmon_airflow.execution.outcomes import Verdict, VerdictKind, WorkflowIdentity, kill_instances, record_events
from jobmon_airflow.execution.task_run import TaskRun

__all__ = [
    "ArrayOptions",
    "ArrayProgress",
    "ArrayRun",
    "JobSettings",
    "Submission",
    "TaskRun",
    "Verdict",
    "VerdictKind",
    "WorkflowIdentity",
    "apply_concurrency",
    "kill_instances",
    "record_events",
]
