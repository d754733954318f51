"""The pure parts: exit classes, exit codes, error messages, the distributor id."""

from __future__ import annotations

import pytest

from jobmon_airflow import exit_codes
from jobmon_airflow.exit_codes import shell_exit_code
from jobmon_airflow.worker_node.outcome import (
    ERROR_MESSAGE_CHARS,
    EXIT_CLASSES,
    classify_exit,
    distributor_id_from_env,
    error_message,
)


@pytest.mark.parametrize(
    ("exit_status", "state"),
    [(0, "D"), (1, "E"), (3, "E"), (137, "Z"), (247, "Z"), (-9, "Z"), (198, "F"), (199, "F"), (-15, "E")],
)
def test_classify_exit(exit_status: int, state: str) -> None:
    assert classify_exit(exit_status)[0] == state


def test_classify_exit_messages() -> None:
    assert classify_exit(137)[1] == "Insufficient resources requested (exit 137)"
    assert "SIGTERM" in classify_exit(-15)[1]


def test_exit_classes_come_from_the_shared_table() -> None:
    resource_kills = {status for status, (state, _) in EXIT_CLASSES.items() if state == "Z"}
    assert resource_kills == exit_codes.MEMORY_KILL_EXIT_STATUSES | exit_codes.MEMORY_KILL_RETURNCODES
    assert all(exit_codes.is_memory_kill(status) for status in resource_kills)
    fatal = {status for status, (state, _) in EXIT_CLASSES.items() if state == "F"}
    assert fatal == exit_codes.FATAL_EXIT_STATUSES
    assert classify_exit(-9)[1] == "Insufficient resources requested (killed by SIGKILL, exit -9)"
    assert classify_exit(198)[1] == "Fatal error: worker node environment failure (exit 198)"
    assert classify_exit(199)[1] == "Fatal error: worker node command-line failure (exit 199)"


def test_worker_exit_code_follows_shell_convention() -> None:
    assert [shell_exit_code(c) for c in (0, 3, -9, -2)] == [0, 3, 137, 130]


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({"JOB_ID": "4242"}, "4242"),
        ({"JOB_ID": "4242", "SGE_TASK_ID": "7"}, "4242.7"),
        ({"JOB_ID": "4242", "SGE_TASK_ID": "undefined"}, "4242"),
        ({}, None),
    ],
)
def test_distributor_id_from_env(env: dict[str, str], expected: str | None) -> None:
    assert distributor_id_from_env(env) == expected


def test_error_message_keeps_the_end_within_the_limit() -> None:
    tail = "x" * 20_000 + "THE END"
    message = error_message("Insufficient resources requested (exit 137)", tail)
    assert len(message) == ERROR_MESSAGE_CHARS
    assert message.startswith("Insufficient resources requested") and message.endswith("THE END")


# -- the worker's copies of domain formats (it does not import records/states: their dataclasses cost start-up)


def test_statuses_are_the_state_machine_s() -> None:
    from jobmon_airflow.states import TaskInstanceStatus
    from jobmon_airflow.worker_node import outcome

    for name in ("RUNNING", "DONE", "ERROR", "RESOURCE_ERROR", "ERROR_FATAL", "KILL_SELF"):
        assert getattr(outcome, name) == TaskInstanceStatus[name].value


@pytest.mark.parametrize(
    ("reported", "report_error"), [(False, None), (True, None), (False, "log_ran: HTTP 409 Conflict: no")]
)
@pytest.mark.parametrize("status", ["D", "E", "Z", "F"])
def test_exit_record_text_is_what_records_writes_and_reads(
    status: str, reported: bool, report_error: str | None
) -> None:
    from jobmon_airflow.records import ExitRecord, Usage
    from jobmon_airflow.worker_node.node import exit_record_text
    from jobmon_airflow.worker_node.outcome import Outcome

    usage = {"maxrss_bytes": 2048, "wallclock_s": 1.25, "cpu_s": 0.5}
    outcome = Outcome(status, 3, "tail\nof stderr ünï", 3, usage)
    text = exit_record_text(
        17,
        outcome,
        nodename="n1.cluster",
        distributor_id="42.7",
        started_at=1.5,
        finished_at=2.5,
        reported=reported,
        report_error=report_error,
    )
    expected = ExitRecord(
        task_instance_id=17,
        status=status,
        exit_status=3,
        error_message="tail\nof stderr ünï",
        nodename="n1.cluster",
        distributor_id="42.7",
        usage=Usage(2048, 1.25, 0.5),
        started_at=1.5,
        finished_at=2.5,
        reported=reported,
        report_error=report_error,
    )
    assert text == expected.to_json()
    assert ExitRecord.from_json(text, task_instance_id=17) == expected


def test_no_usage_has_the_fields_of_usage() -> None:
    from jobmon_airflow.records import Usage
    from jobmon_airflow.worker_node.outcome import NO_USAGE

    assert Usage.from_dict(NO_USAGE) == Usage(0, 0.0, 0.0) and set(NO_USAGE) == set(Usage().to_dict())
