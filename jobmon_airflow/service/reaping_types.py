"""The workflow reaper's typed results and requests: what crosses from the service layer to execution, the sensors
(through XCom, as plain dicts: ``to_dict`` / ``from_dict``) and Slack."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any


def iso_or_none(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


@dataclass(frozen=True)
class OrphanCandidate:
    """A live instance with the Airflow task instance that owns it (the sensor asks Airflow about it)."""

    task_instance_id: int
    task_id: int
    workflow_run_id: int
    status: str
    distributor_id: str | None
    cluster: str
    dag_id: str
    run_id: str
    airflow_task_id: str
    map_index: int
    try_number: int | None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> OrphanCandidate:
        return cls(**{k: data[k] for k in cls.__dataclass_fields__})


@dataclass(frozen=True)
class RunCandidate:
    """An alive workflow run whose heartbeat deadline passed (Jobmon's lost workflow run)."""

    workflow_run_id: int
    workflow_id: int
    status: str
    dag_id: str
    run_id: str
    heartbeat_date: str | None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> RunCandidate:
        return cls(**{k: data[k] for k in cls.__dataclass_fields__})


class RunFate(StrEnum):
    """What Airflow says became of a lost run's DAG run."""

    SUCCEEDED = "succeeded"  # DAG run success: D when every task is done, else E (as the listener does)
    FAILED = "failed"  # DAG run failed: E, workflow F (Jobmon's _error_state)
    GONE = "gone"  # DAG run deleted: linking runs abort (A); others are halted cold (C, K, then T)


@dataclass(frozen=True)
class RunDecision:
    workflow_run_id: int
    fate: RunFate
    reason: str

    def to_dict(self) -> dict[str, Any]:
        return {"workflow_run_id": self.workflow_run_id, "fate": self.fate.value, "reason": self.reason}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> RunDecision:
        return cls(int(data["workflow_run_id"]), RunFate(data["fate"]), str(data["reason"]))


@dataclass(frozen=True)
class ReapedRun:
    """One run (or workflow) the reaper moved, with what Jobmon's Slack message shows."""

    workflow_id: int
    workflow_name: str
    workflow_args: str
    workflow_run_id: int
    old_run_status: str
    new_run_status: str
    old_workflow_status: str
    new_workflow_status: str
    reason: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ReapedRun:
        return cls(**{k: data[k] for k in cls.__dataclass_fields__})


@dataclass(frozen=True)
class LiveInstance:
    task_instance_id: int
    workflow_run_id: int
    status: str
    distributor_id: str | None
    cluster: str
