"""Typed records that cross process boundaries, with explicit (de)serialisation. Standard library only.

* :class:`ExitRecord`: written by the worker node beside the job's logs before it reports, read by the watchers
  when the report did not arrive (State Manager down, job killed with the worker).
* :class:`WatchEvent`: how a watched task instance ended, sent from the trigger (or the blocking poll) to the
  operator through Airflow's trigger event, so it must survive a JSON round trip.
"""

from __future__ import annotations

import json
import math
import reprlib
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from enum import StrEnum
from typing import Any

from jobmon_airflow.states import TaskInstanceStatus

#: The outcomes a worker node reports or records.
WORKER_OUTCOMES = frozenset(
    {
        TaskInstanceStatus.DONE,
        TaskInstanceStatus.ERROR,
        TaskInstanceStatus.RESOURCE_ERROR,
        TaskInstanceStatus.ERROR_FATAL,
        TaskInstanceStatus.UNKNOWN_ERROR,
    }
)


class RecordError(ValueError):
    """A record that is not what its writer promised (a foreign file, a truncated write, a hostile payload)."""


_SHORT = reprlib.Repr()
_SHORT.maxstring = _SHORT.maxother = 80


def _show(value: Any) -> str:
    """A value for an error message, shortened: a hostile one (nested thousands deep, an integer of more digits
    than Python prints, megabytes of text) must make a short message, never an exception of its own."""
    if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > 256:
        return f"an integer of about {int(value.bit_length() * math.log10(2)) + 1} digits"
    try:
        return _SHORT.repr(value)
    except Exception:  # a repr of some odd object failed: its type is enough
        return f"a value of type {type(value).__name__}"


def _int(data: Mapping[str, Any], key: str, *, optional: bool = True) -> int | None:
    value = data.get(key)
    if value is None and optional:
        return None
    if not isinstance(value, int) or isinstance(value, bool):
        raise RecordError(f"{key}: expected a whole number, got {_show(value)}")
    return value


def _float(data: Mapping[str, Any], key: str) -> float | None:
    value = data.get(key)
    if value is None:
        return None
    if not isinstance(value, int | float) or isinstance(value, bool):
        raise RecordError(f"{key}: expected a finite number, got {_show(value)}")
    try:
        number = float(value)
    except OverflowError:  # an integer past the float range
        number = math.inf
    if not math.isfinite(number):
        raise RecordError(f"{key}: expected a finite number, got {_show(value)}")
    return number


def _text(data: Mapping[str, Any], key: str) -> str | None:
    value = data.get(key)
    if value is not None and not isinstance(value, str):
        raise RecordError(f"{key}: expected text, got {_show(value)}")
    return value


def _flag(data: Mapping[str, Any], key: str) -> bool:
    """A flag, read as Python reads truth (absent: false), as the records always have been."""
    value = data.get(key, False)
    try:
        return bool(value)
    except Exception:  # an object whose truth cannot be told (an array, say): not a flag
        raise RecordError(f"{key}: expected true or false, got {_show(value)}") from None


@dataclass(frozen=True)
class Usage:
    """What a command used: peak resident memory, wall-clock and CPU seconds (None: not known)."""

    maxrss_bytes: int | None = None
    wallclock_s: float | None = None
    cpu_s: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"maxrss_bytes": self.maxrss_bytes, "wallclock_s": self.wallclock_s, "cpu_s": self.cpu_s}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None) -> Usage:
        if data is None:
            return cls()
        if not isinstance(data, Mapping):
            raise RecordError(f"usage: expected an object, got {_show(data)}")
        return cls(_int(data, "maxrss_bytes"), _float(data, "wallclock_s"), _float(data, "cpu_s"))


@dataclass(frozen=True)
class ExitRecord:
    """How a task instance ended on its node, as the worker node left it in ``ti-<id>.exit.json``."""

    task_instance_id: int
    status: str  # one of WORKER_OUTCOMES
    exit_status: int | None = None
    error_message: str = ""
    nodename: str | None = None
    distributor_id: str | None = None
    usage: Usage = field(default_factory=Usage)
    started_at: float | None = None
    finished_at: float | None = None
    reported: bool = False
    report_error: str | None = None

    def to_json(self) -> str:
        data = {
            "task_instance_id": self.task_instance_id,
            "distributor_id": self.distributor_id,
            "status": self.status,
            "exit_status": self.exit_status,
            "error_message": self.error_message,
            "nodename": self.nodename,
            "usage": self.usage.to_dict(),
            "started_at": self.started_at,
            "finished_at": self.finished_at,
            "reported": self.reported,
        }
        if self.report_error is not None:
            data["report_error"] = self.report_error
        return json.dumps(data, indent=1)

    @classmethod
    def from_json(cls, text: str, *, task_instance_id: int | None = None) -> ExitRecord:
        """Parse and validate; ``task_instance_id``: the instance the reader expects (a record of another one is
        refused, so a file put in another record's place cannot decide its outcome)."""
        try:
            data = json.loads(text)
        except ValueError as exc:
            raise RecordError(f"not JSON: {exc}") from None
        except RecursionError:  # arrays or objects nested deeper than the decoder goes
            raise RecordError("not JSON: nested too deeply") from None
        if not isinstance(data, dict):
            raise RecordError("expected a JSON object")
        ti_id = _int(data, "task_instance_id", optional=False)
        assert ti_id is not None
        if task_instance_id is not None and ti_id != task_instance_id:
            raise RecordError(f"task_instance_id: the record is of instance {ti_id}, expected {task_instance_id}")
        status = data.get("status")
        if not isinstance(status, str) or status not in WORKER_OUTCOMES:  # a list or object cannot be looked up
            raise RecordError(f"status: expected one of {', '.join(sorted(WORKER_OUTCOMES))}, got {_show(status)}")
        return cls(
            task_instance_id=ti_id,
            status=str(status),
            exit_status=_int(data, "exit_status"),
            error_message=_text(data, "error_message") or "",
            nodename=_text(data, "nodename"),
            distributor_id=_text(data, "distributor_id"),
            usage=Usage.from_dict(data.get("usage")),
            started_at=_float(data, "started_at"),
            finished_at=_float(data, "finished_at"),
            reported=_flag(data, "reported"),
            report_error=_text(data, "report_error"),
        )

    def reported_as(self, error: str | None) -> ExitRecord:
        """The record after the final report: reported, or the report's error."""
        return replace(self, reported=error is None, report_error=error)


class EventSource(StrEnum):
    """Where an outcome was learnt, from the strongest evidence to the weakest."""

    DATABASE = "database"  # the worker reported it: already recorded
    EXIT_RECORD = "exit_record"  # the worker's own record, written before it tried to report
    ACCOUNTING = "accounting"  # the cluster's accounting of the job
    CLUSTER = "cluster"  # the cluster holds the job in an error state (Grid Engine's Eqw)
    TRIAGE = "triage"  # launched and never reported running before its deadline (no heartbeat)
    LOST = "lost"  # gone from the queue with no record and no accounting after a grace period


_EVENT_SOURCES = frozenset(s.value for s in EventSource)
_INSTANCE_STATUSES = frozenset(s.value for s in TaskInstanceStatus)


@dataclass(frozen=True)
class WatchEvent:
    """How a watched task instance ended; ``source`` says whether the database already holds it."""

    task_instance_id: int
    job_id: str | None
    status: str
    source: EventSource
    exit_status: int | None = None
    message: str = ""
    nodename: str | None = None
    usage: Usage = field(default_factory=Usage)
    kill_job: bool = False  # the job is still in the cluster (error state) and must be deleted

    @property
    def recorded(self) -> bool:
        """The database already holds this outcome (the worker reported it)."""
        return self.source == EventSource.DATABASE

    def to_dict(self) -> dict[str, Any]:
        return {
            "task_instance_id": self.task_instance_id,
            "job_id": self.job_id,
            "status": self.status,
            "source": self.source.value,
            "exit_status": self.exit_status,
            "message": self.message,
            "nodename": self.nodename,
            "usage": self.usage.to_dict(),
            "kill_job": self.kill_job,
        }

    @classmethod
    def from_dict(cls, data: Any) -> WatchEvent:
        if not isinstance(data, Mapping):
            raise RecordError(f"watch event: expected an object, got {_show(data)}")
        ti_id = _int(data, "task_instance_id", optional=False)
        assert ti_id is not None
        status = data.get("status")
        if not isinstance(status, str) or status not in _INSTANCE_STATUSES:
            raise RecordError(f"watch event status: not a task instance status: {_show(status)}")
        source = data.get("source")
        if not isinstance(source, str) or source not in _EVENT_SOURCES:
            raise RecordError(f"watch event source: unknown {_show(source)}")
        return cls(
            task_instance_id=ti_id,
            job_id=_text(data, "job_id"),
            status=str(status),
            source=EventSource(source),
            exit_status=_int(data, "exit_status"),
            message=_text(data, "message") or "",
            nodename=_text(data, "nodename"),
            usage=Usage.from_dict(data.get("usage")),
            kill_job=_flag(data, "kill_job"),
        )
