"""Properties of the records that cross process boundaries: exact JSON round trips, and nothing but
:class:`RecordError` from whatever a file or a trigger event may hold.

An exit record sits in the job's log directory, where the job's own command could overwrite it; a watch event comes
back through Airflow's trigger event. Both are read by long-lived processes (the triggerer's shared poll), so a
malformed one must be refused with RecordError, which the readers catch, and never with another exception.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from hypothesis import assume, example, given
from hypothesis import strategies as st

from jobmon_airflow.records import WORKER_OUTCOMES, EventSource, ExitRecord, RecordError, Usage, WatchEvent
from jobmon_airflow.states import TaskInstanceStatus
from jobmon_airflow.watch import read_exit_record

ids = st.integers(1, 2**63 - 1)
finite = st.floats(allow_nan=False, allow_infinity=False)
optional_text = st.none() | st.text(max_size=30)
usages = st.builds(
    Usage,
    maxrss_bytes=st.none() | st.integers(0, 2**63 - 1),
    wallclock_s=st.none() | finite,
    cpu_s=st.none() | finite,
)
exit_records = st.builds(
    ExitRecord,
    task_instance_id=ids,
    status=st.sampled_from(sorted(WORKER_OUTCOMES)),
    exit_status=st.none() | st.integers(-(2**63), 2**63 - 1),
    error_message=st.text(max_size=50),
    nodename=optional_text,
    distributor_id=optional_text,
    usage=usages,
    started_at=st.none() | finite,
    finished_at=st.none() | finite,
    reported=st.booleans(),
    report_error=optional_text,
)
watch_events = st.builds(
    WatchEvent,
    task_instance_id=ids,
    job_id=optional_text,
    status=st.sampled_from(sorted(TaskInstanceStatus)),
    source=st.sampled_from(list(EventSource)),
    exit_status=st.none() | st.integers(-(2**63), 2**63 - 1),
    message=st.text(max_size=50),
    nodename=optional_text,
    usage=usages,
    kill_job=st.booleans(),
)
#: Any JSON value (integers kept within what json.dumps writes: Python refuses to print more than 4300 digits).
json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**80), 2**80) | st.floats() | st.text(max_size=10),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)


# --------------------------------------------------------------------------------------------------------------
# Round trips


@given(usages)
def test_usage_round_trips(usage: Usage) -> None:
    assert Usage.from_dict(usage.to_dict()) == usage
    assert Usage.from_dict(json.loads(json.dumps(usage.to_dict()))) == usage


@given(exit_records)
def test_exit_record_round_trips(record: ExitRecord) -> None:
    text = record.to_json()
    assert ExitRecord.from_json(text) == record
    assert ExitRecord.from_json(text, task_instance_id=record.task_instance_id) == record
    assert isinstance(json.loads(text), dict)


@given(exit_records, ids)
def test_exit_record_of_another_instance_is_refused(record: ExitRecord, other: int) -> None:
    assume(other != record.task_instance_id)
    with pytest.raises(RecordError, match=f"the record is of instance {record.task_instance_id}, expected {other}"):
        ExitRecord.from_json(record.to_json(), task_instance_id=other)


@given(exit_records, optional_text)
def test_exit_record_reported_as_round_trips(record: ExitRecord, error: str | None) -> None:
    after = record.reported_as(error)
    assert (after.reported, after.report_error) == (error is None, error)
    assert ExitRecord.from_json(after.to_json()) == after


@given(watch_events)
def test_watch_event_round_trips(event: WatchEvent) -> None:
    assert WatchEvent.from_dict(event.to_dict()) == event
    restored = WatchEvent.from_dict(json.loads(json.dumps(event.to_dict())))  # as Airflow carries trigger events
    assert restored == event
    assert restored.recorded == (event.source == EventSource.DATABASE)


# --------------------------------------------------------------------------------------------------------------
# Anything else: RecordError only

EXIT_RECORD_KEYS = [
    "task_instance_id", "distributor_id", "status", "exit_status", "error_message", "nodename", "usage",
    "started_at", "finished_at", "reported", "report_error",
]  # fmt: skip
WATCH_EVENT_KEYS = [
    "task_instance_id", "job_id", "status", "source", "exit_status", "message", "nodename", "usage", "kill_job",
]  # fmt: skip
usage_like = st.dictionaries(st.sampled_from(["maxrss_bytes", "wallclock_s", "cpu_s"]), json_values, max_size=3)


def field_values(key: str) -> st.SearchStrategy[Any]:
    """A value for ``key``: sometimes one of the right type, mostly anything JSON holds."""
    right: dict[str, st.SearchStrategy[Any]] = {
        "task_instance_id": ids,
        "status": st.sampled_from(sorted(TaskInstanceStatus)),
        "source": st.sampled_from([s.value for s in EventSource]),
        "usage": usage_like,
    }
    return st.one_of(json_values, right.get(key, json_values))


def near_records(keys: list[str]) -> st.SearchStrategy[dict[str, Any]]:
    """Objects with (some of) a record's keys, their values right or wrong, and maybe extra keys."""
    return st.fixed_dictionaries({}, optional={key: field_values(key) for key in keys} | {"extra": json_values})


def assert_exit_record_or_record_error(text: str) -> None:
    try:
        record = ExitRecord.from_json(text)
    except RecordError:
        return
    assert record.status in WORKER_OUTCOMES
    assert isinstance(record.task_instance_id, int)
    assert ExitRecord.from_json(record.to_json()) == record  # what was accepted is a well-formed record


@given(near_records(EXIT_RECORD_KEYS))
def test_exit_record_from_json_of_near_records_raises_only_record_error(data: dict[str, Any]) -> None:
    assert_exit_record_or_record_error(json.dumps(data))


@given(json_values)
@example([])
@example({"task_instance_id": True, "status": "D"})
@example({"task_instance_id": 1, "status": "D", "usage": []})
@example({"task_instance_id": 1, "status": "D", "started_at": float("nan")})
@example({"task_instance_id": 1, "status": []})
@example({"task_instance_id": 1, "status": {"D": 1}})
@example({"task_instance_id": 1, "status": "D", "started_at": 10**400})
def test_exit_record_from_json_of_any_json_raises_only_record_error(data: Any) -> None:
    assert_exit_record_or_record_error(json.dumps(data))


@given(st.text() | st.binary().map(lambda b: b.decode("utf-8", "replace")))
@example("")
@example("NaN")
@example('{"task_instance_id": 1, "status": "D"')
@example("[" * 100_000 + "]" * 100_000)
@example('{"task_instance_id": 1, "status": "D", "usage": ' + "[" * 5000 + "]" * 5000 + "}")
def test_exit_record_from_json_of_any_text_raises_only_record_error(text: str) -> None:
    assert_exit_record_or_record_error(text)


def assert_watch_event_or_record_error(data: Any) -> None:
    try:
        event = WatchEvent.from_dict(data)
    except RecordError:
        return
    assert event.status in set(TaskInstanceStatus)
    assert WatchEvent.from_dict(event.to_dict()) == event


@given(near_records(WATCH_EVENT_KEYS) | json_values)
@example({"task_instance_id": 1, "status": [], "source": "database"})
@example({"task_instance_id": 1, "status": "D", "source": None})
@example({"task_instance_id": 1, "status": {}, "source": "database"})
@example({"task_instance_id": 1, "status": "D", "source": ["database"]})
@example({"task_instance_id": 1, "status": "D", "source": "database", "usage": {"cpu_s": 10**400}})
@example({"task_instance_id": 10**5000, "status": "D", "source": "database"})
@example({"task_instance_id": 1, "status": "D", "source": "database", "message": [[[[[[[[[[[]]]]]]]]]]]})
def test_watch_event_from_dict_of_any_json_raises_only_record_error(data: Any) -> None:
    assert_watch_event_or_record_error(data)


@pytest.mark.parametrize("status", [[], {}])
def test_exit_record_with_an_unhashable_status_is_a_record_error(status: Any) -> None:
    """Was a TypeError (``status not in WORKER_OUTCOMES`` hashed a JSON list or object), which made the shared
    poll raise: the job's own command can write its exit record."""
    with pytest.raises(RecordError, match="status"):
        ExitRecord.from_json(json.dumps({"task_instance_id": 1, "status": status}))


@pytest.mark.parametrize("depth", [100_000])
def test_exit_record_deeply_nested_json_is_a_record_error(depth: int) -> None:
    """Was a RecursionError from json.loads, which only ValueError was turned into RecordError for."""
    with pytest.raises(RecordError):
        ExitRecord.from_json("[" * depth + "]" * depth)


@given(usage_like | json_values)
@example({"wallclock_s": 10**400})
@example({"maxrss_bytes": [[[[[[[[[[]]]]]]]]]]})
def test_usage_from_dict_of_any_json_raises_only_record_error(data: Any) -> None:
    try:
        usage = Usage.from_dict(data)
    except RecordError:
        return
    assert Usage.from_dict(usage.to_dict()) == usage


@given(
    st.one_of(
        st.binary(max_size=200),
        exit_records.map(lambda r: r.to_json().encode()),
        exit_records.map(lambda r: replace(r, task_instance_id=7).to_json().encode()),
        near_records(EXIT_RECORD_KEYS).map(lambda d: json.dumps(d).encode()),
        st.integers(1, 100_000).map(lambda n: b"[" * n + b"]" * n),
    )
)
@example(json.dumps({"task_instance_id": 7, "status": []}).encode())
@example(b"[" * 100_000 + b"]" * 100_000)
@example(b"\xff\xfe")
def test_read_exit_record_never_raises(content: bytes) -> None:
    """Whatever the file holds (the job's own command may write it), the reader gives a record of this instance or
    None: it never raises into the shared poll."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "ti-7.exit.json"
        path.write_bytes(content)
        os.chmod(path, 0o600)
        record = read_exit_record(str(path), 7)
    assert record is None or (record.task_instance_id == 7 and record.status in WORKER_OUTCOMES)
