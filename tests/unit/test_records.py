"""The records that cross process boundaries refuse a malformed payload with RecordError, and nothing else.

An exit record sits beside the job's logs, where the job's own command can overwrite it, and is read by the
triggerer's shared poll; a watch event comes back through Airflow's trigger event. Whatever they hold, the readers
get a record or RecordError (which they catch), and ``watch.read_exit_record`` never raises.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

import pytest

from jobmon_airflow.records import EventSource, ExitRecord, RecordError, Usage, WatchEvent
from jobmon_airflow.watch import read_exit_record

RECORD = ExitRecord(3, "D", exit_status=0, usage=Usage(maxrss_bytes=1024, wallclock_s=1.5))
EVENT = WatchEvent(3, "42", "D", EventSource.EXIT_RECORD, exit_status=0, usage=Usage(cpu_s=2.0))


@pytest.mark.parametrize("status", [[], {}, ["D"], {"D": 1}])
def test_exit_record_with_an_unhashable_status_is_a_record_error(status: Any) -> None:
    """Was TypeError: ``status not in WORKER_OUTCOMES`` hashed the list or object."""
    with pytest.raises(RecordError, match=r"^status: expected one of D, E, F, U, Z, got "):
        ExitRecord.from_json(json.dumps({"task_instance_id": 3, "status": status}))


@pytest.mark.parametrize("text", ["[" * 100_000 + "]" * 100_000, '{"a": ' * 100_000 + "1" + "}" * 100_000])
def test_exit_record_nested_too_deeply_is_a_record_error(text: str) -> None:
    """Was RecursionError from json.loads, which only ValueError was turned into RecordError for."""
    with pytest.raises(RecordError, match=r"^not JSON: nested too deeply"):
        ExitRecord.from_json(text)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"started_at": 10**400}, "^started_at: expected a finite number, got an integer of about 401 digits"),
        ({"usage": {"wallclock_s": 10**400}}, "^wallclock_s: expected a finite number"),
        ({"usage": [[[[[[[[[[[[]]]]]]]]]]]]}, r"^usage: expected an object, got \[\[\[\[\[\[\["),
        ({"nodename": ["x" * 1_000_000]}, "^nodename: expected text"),
    ],
)
def test_exit_record_odd_values_are_record_errors_with_short_messages(changes: dict[str, Any], message: str) -> None:
    data = {**json.loads(RECORD.to_json()), **changes}
    with pytest.raises(RecordError, match=message) as exc:
        ExitRecord.from_json(json.dumps(data))
    assert len(str(exc.value)) < 300


def test_exit_record_round_trips_still() -> None:
    assert ExitRecord.from_json(RECORD.to_json(), task_instance_id=3) == RECORD
    assert ExitRecord.from_json(RECORD.reported_as("503").to_json()).report_error == "503"


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"status": []}, "^watch event status: not a task instance status: "),
        ({"status": {"D": 1}}, "^watch event status: not a task instance status: "),
        ({"source": ["exit_record"]}, r"^watch event source: unknown \['exit_record'\]"),
        ({"source": [[[[[[[[[[[[[]]]]]]]]]]]]]}, "^watch event source: unknown "),
        ({"source": None}, "^watch event source: unknown None"),
        ({"task_instance_id": "3" * 5000}, "^task_instance_id: expected a whole number, got '333"),
        ({"usage": {"cpu_s": 10**400}}, "^cpu_s: expected a finite number, got an integer of about 401 digits"),
        ({"usage": {"maxrss_bytes": 1.5}}, "^maxrss_bytes: expected a whole number"),
    ],
)
def test_watch_event_from_dict_raises_only_record_error(changes: dict[str, Any], message: str) -> None:
    data = {**EVENT.to_dict(), **changes}
    with pytest.raises(RecordError, match=message):
        WatchEvent.from_dict(data)


def test_watch_event_round_trips_and_takes_a_source_member() -> None:
    assert WatchEvent.from_dict(json.loads(json.dumps(EVENT.to_dict()))) == EVENT
    assert WatchEvent.from_dict({**EVENT.to_dict(), "source": EventSource.EXIT_RECORD}) == EVENT


class NoTruth:
    def __bool__(self) -> bool:
        raise ValueError("the truth value is ambiguous")


@pytest.mark.parametrize(
    "data",
    [
        {"wallclock_s": 10**400},
        {"cpu_s": float("nan")},
        {"maxrss_bytes": "1"},
        [],
        "usage",
    ],
)
def test_usage_from_dict_raises_only_record_error(data: Any) -> None:
    with pytest.raises(RecordError):
        Usage.from_dict(data)


def test_a_flag_without_a_truth_value_is_a_record_error() -> None:
    with pytest.raises(RecordError, match=r"^kill_job: expected true or false"):
        WatchEvent.from_dict({**EVENT.to_dict(), "kill_job": NoTruth()})


# --------------------------------------------------------------------------------------------------------------
# read_exit_record never raises


def write_record(path: Path, content: bytes) -> str:
    path.write_bytes(content)
    os.chmod(path, 0o600)
    return str(path)


@pytest.mark.parametrize(
    ("content", "why"),
    [
        (json.dumps({"task_instance_id": 3, "status": []}).encode(), "status: expected one of"),
        (json.dumps({"task_instance_id": 3, "status": {"D": 1}}).encode(), "status: expected one of"),
        (b"[" * 100_000 + b"]" * 100_000, "not JSON: nested too deeply"),
        (b"\xff\xfe", "can't decode byte"),
        (b" " * (2 << 20), "larger than 1048576 bytes"),
    ],
    ids=["list-status", "object-status", "deeply-nested", "not-utf8", "too-large"],
)
def test_read_exit_record_ignores_a_bad_record_with_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, content: bytes, why: str
) -> None:
    path = write_record(tmp_path / "ti-3.exit.json", content)
    with caplog.at_level(logging.WARNING):
        assert read_exit_record(path, 3) is None
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and warnings[0].startswith(f"Ignoring exit record {path}: ") and why in warnings[0]


def test_read_exit_record_ignores_an_unusable_path(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING):
        assert read_exit_record("/tmp/ti-3\0.exit.json", 3) is None
    assert "not a usable path" in caplog.text


def test_read_exit_record_still_reads_the_workers_record(tmp_path: Path) -> None:
    assert read_exit_record(write_record(tmp_path / "ti-3.exit.json", RECORD.to_json().encode()), 3) == RECORD
