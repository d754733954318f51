"""Jobmon's state machines, held as data: codes, meanings, legal and untimely transitions.

Codes and transitions are Jobmon's (``jobmon_core/.../constants.py`` and the server models' ``valid_transitions``
/ ``untimely_transitions``). An *untimely* transition is a race between reporters (a late heartbeat after the job
already finished, ...) and is ignored on purpose; any other transition not listed is illegal and raises.
The service layer (``jobmon_airflow.service``) enforces these tables on every write.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from enum import StrEnum


class WorkflowStatus(StrEnum):
    REGISTERING = "G"
    QUEUED = "Q"
    INSTANTIATING = "I"
    LAUNCHED = "O"
    RUNNING = "R"
    DONE = "D"
    FAILED = "F"
    HALTED = "H"
    ABORTED = "A"


class WorkflowRunStatus(StrEnum):
    REGISTERED = "G"
    LINKING = "L"
    BOUND = "B"
    INSTANTIATED = "I"
    LAUNCHED = "O"
    RUNNING = "R"
    DONE = "D"
    ERROR = "E"
    STOPPED = "S"
    COLD_RESUME = "C"
    HOT_RESUME = "H"
    TERMINATED = "T"
    ABORTED = "A"


class TaskStatus(StrEnum):
    REGISTERING = "G"
    QUEUED = "Q"
    INSTANTIATING = "I"
    LAUNCHED = "O"
    RUNNING = "R"
    DONE = "D"
    ERROR_RECOVERABLE = "E"
    ADJUSTING_RESOURCES = "A"
    ERROR_FATAL = "F"


class TaskInstanceStatus(StrEnum):
    QUEUED = "Q"
    INSTANTIATED = "I"
    LAUNCHED = "O"
    RUNNING = "R"
    DONE = "D"
    ERROR = "E"
    ERROR_FATAL = "F"
    KILL_SELF = "K"
    TRIAGING = "T"
    UNKNOWN_ERROR = "U"
    NO_DISTRIBUTOR_ID = "W"
    NO_HEARTBEAT = "X"
    RESOURCE_ERROR = "Z"


DESCRIPTIONS: dict[type[StrEnum], dict[str, str]] = {
    WorkflowStatus: {
        "G": "Workflow is being validated and bound",
        "Q": "Workflow is bound and waiting for a run to start",
        "I": "A workflow run is being instantiated",
        "O": "A workflow run was launched",
        "R": "A workflow run is running",
        "D": "Workflow finished successfully",
        "F": "Workflow failed: a run ended in error",
        "H": "Workflow was halted by a resume",
        "A": "Workflow was aborted while its run was linking",
    },
    WorkflowRunStatus: {
        "G": "Run registered",
        "L": "Run is linking to its workflow",
        "B": "Run has bound its tasks",
        "I": "Run is instantiated",
        "O": "Run was launched",
        "R": "Run is running tasks",
        "D": "Run finished, all tasks done",
        "E": "Run ended with failed tasks, or was lost (no heartbeat)",
        "S": "Run was stopped by the user",
        "C": "Cold resume requested: running jobs are killed",
        "H": "Hot resume requested: running jobs may finish",
        "T": "Run was terminated after a resume",
        "A": "Run was aborted while linking",
    },
    TaskStatus: {
        "G": "Task is registered, waiting for upstream tasks",
        "Q": "Task is queued for submission",
        "I": "Task is being submitted",
        "O": "Task's job was launched",
        "R": "Task's job is running",
        "D": "Task finished successfully",
        "E": "Task failed; it may be retried",
        "A": "Task is getting scaled resources after a resource kill",
        "F": "Task failed and will not be retried",
    },
    TaskInstanceStatus: {
        "Q": "Queued: created, not submitted yet",
        "I": "Instantiated: being submitted",
        "O": "Launched: submitted, job id known, not running yet",
        "R": "Running: the worker node reported in",
        "D": "Done: the command exited 0",
        "E": "Error: the command exited non-zero",
        "F": "Fatal error: not retried",
        "K": "Kill self: the job is asked to stop",
        "T": "Triaging: running, but its heartbeats stopped",
        "U": "Unknown error: the job was lost",
        "W": "No distributor id: the submission returned no job id",
        "X": "No heartbeat: launched but never reported running",
        "Z": "Resource error: killed for memory or runtime",
    },
}


class TaskResourcesType(StrEnum):
    """Why an attempt got its resources (Jobmon's ``task_resources_type``)."""

    ORIGINAL = "O"  # as requested
    VALIDATED = "V"  # moved to a fallback queue or coerced to a queue's limits
    ADJUSTED = "A"  # scaled after a resource kill


class IllegalTransition(ValueError):
    """A transition the state machine does not allow."""


@dataclass(frozen=True)
class StateMachine:
    name: str
    valid: frozenset[tuple[str, str]]
    untimely: frozenset[tuple[str, str]] = frozenset()

    def check(self, old: str, new: str) -> bool:
        """True if ``old → new`` is legal, False if it is untimely (ignore it), IllegalTransition otherwise."""
        if (old, new) in self.valid:
            return True
        if (old, new) in self.untimely:
            return False
        raise IllegalTransition(f"{self.name}: illegal transition {old} → {new}")

    def sources(self, new: str) -> frozenset[str]:
        """Statuses from which ``new`` is legal: the WHERE clause of a conditional UPDATE."""
        return frozenset(old for old, target in self.valid if target == new)


def _pairs(spec: str) -> frozenset[tuple[str, str]]:
    """'G→Q G→A' → {('G','Q'), ('G','A')}: transition tables written the way Jobmon's docs write them."""
    return frozenset((p[0], p[2]) for p in spec.split())


WORKFLOW_FSM = StateMachine(
    "workflow",
    valid=_pairs("G→Q G→A A→G F→G H→G Q→I Q→F I→O I→F O→F O→R R→H Q→H R→D R→F"),
    untimely=_pairs("G→G"),
)

WORKFLOW_RUN_FSM = StateMachine(
    "workflow_run",
    valid=_pairs("G→L L→B L→A B→I I→O O→R B→E I→E O→E R→D R→E R→S B→C R→C B→H R→H C→T H→T"),
    untimely=_pairs("R→R L→L"),
)

TASK_FSM = StateMachine(
    "task",
    valid=_pairs("G→Q A→Q Q→I I→O I→E O→R O→E I→R R→D R→E E→A E→Q E→F E→G"),
)

TASK_INSTANCE_FSM = StateMachine(
    "task_instance",
    valid=_pairs("Q→I Q→K I→K O→K R→K I→O I→W I→R O→R O→X O→U O→Z O→F R→D R→E R→Z R→U R→T T→R T→Z T→U T→F K→F K→D X→E"),
    untimely=_pairs("R→O E→O E→U E→E U→D U→E U→Z Z→U D→U K→E K→Z K→U"),
)

MACHINES: Mapping[str, StateMachine] = {
    m.name: m for m in (WORKFLOW_FSM, WORKFLOW_RUN_FSM, TASK_FSM, TASK_INSTANCE_FSM)
}

#: A workflow follows its run (Jobmon's ``WorkflowRun.transition``).
WORKFLOW_FOLLOWS_RUN: Mapping[str, str] = {
    "L": "G", "B": "Q", "A": "A", "I": "I", "O": "O", "R": "R", "D": "D", "T": "H", "S": "F", "E": "F",
}  # fmt: skip

#: A task follows its instance while the instance progresses (errors go through ``task_after_instance_error``).
TASK_FOLLOWS_INSTANCE: Mapping[str, str] = {"Q": "Q", "I": "I", "O": "O", "R": "R", "D": "D"}

# Buckets, as Jobmon's CLI and GUI count them.
WORKFLOW_RUN_ALIVE = frozenset("LBRCH")  # must heartbeat
TASK_BUCKETS: Mapping[str, frozenset[str]] = {
    "PENDING": frozenset("AGQIE"),
    "SCHEDULED": frozenset("O"),
    "RUNNING": frozenset("R"),
    "DONE": frozenset("D"),
    "FATAL": frozenset("F"),
}
#: Instances whose job may still be in the cluster (re-attach candidates).
TASK_INSTANCE_LIVE = frozenset("IORTK")
#: Instances that ended; the task decides what comes next.
TASK_INSTANCE_FINAL = frozenset("DEFUWXZ")
#: Instance errors that feed a task retry (X does through X→E); F is fatal.
TASK_INSTANCE_RETRYABLE = frozenset("EUWZ")


def bucket_of(buckets: Mapping[str, Iterable[str]], status: str) -> str:
    for name, members in buckets.items():
        if status in members:
            return name
    return "UNKNOWN"


def task_after_instance_error(ti_status: str, num_attempts: int, max_attempts: int) -> list[str]:
    """The task's transitions after an instance error (Jobmon's ``transition_after_task_instance_error``).

    → E; then F when attempts are used up or the instance was fatal; A (scale resources) after a resource kill;
    otherwise G (ready to be queued again).
    """
    if ti_status == TaskInstanceStatus.ERROR_FATAL or num_attempts >= max_attempts:
        return ["E", "F"]
    if ti_status == TaskInstanceStatus.RESOURCE_ERROR:
        return ["E", "A"]
    return ["E", "G"]
