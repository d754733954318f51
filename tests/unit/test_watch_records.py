"""read_exit_record trusts only this instance's record in a regular file of this user's that no one else can write.

An exit record decides an instance's outcome and sits in a log directory that may be on a shared root: anything
else put at its path (a link, another user's file, a group-writable one, a FIFO) is ignored with a warning that
names the path and why.
"""

from __future__ import annotations

import logging
import os
import threading
from pathlib import Path

import pytest

from jobmon_airflow.files import write_atomically
from jobmon_airflow.records import ExitRecord
from jobmon_airflow.watch import read_exit_record

RECORD = ExitRecord(3, "D", exit_status=0)


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "ti-3.exit.json"


def warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]


def test_the_workers_own_record_is_read(path: Path, caplog: pytest.LogCaptureFixture) -> None:
    write_atomically(path, RECORD.to_json(), durable=True)  # as the worker node writes it: 0600, this user's
    assert read_exit_record(str(path), 3) == RECORD
    path.chmod(0o644)  # readable by others is not a reason to distrust it
    assert read_exit_record(str(path), 3) == RECORD
    assert warnings(caplog) == []


def test_a_missing_record_is_not_there_yet_without_a_warning(path: Path, caplog: pytest.LogCaptureFixture) -> None:
    assert read_exit_record(str(path), 3) is None
    assert read_exit_record(None, 3) is None
    assert warnings(caplog) == []


def test_a_symlink_is_ignored(path: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    real = tmp_path / "elsewhere.json"
    write_atomically(real, RECORD.to_json())
    path.symlink_to(real)
    assert read_exit_record(str(path), 3) is None
    assert warnings(caplog) == [f"Ignoring exit record {path}: it is a symbolic link"]


def test_another_users_record_is_ignored(
    path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    write_atomically(path, RECORD.to_json())
    if os.geteuid() == 0:
        os.chown(path, 65534, 65534)  # nobody's
        owner = 65534
    else:
        owner = os.getuid()
        monkeypatch.setattr(os, "getuid", lambda: owner + 1)  # the file is then "someone else's"
    assert read_exit_record(str(path), 3) is None
    (message,) = warnings(caplog)
    assert message.startswith(f"Ignoring exit record {path}: owned by uid {owner}, not by this user")


@pytest.mark.parametrize("file_mode", [0o620, 0o602, 0o666], ids=oct)
def test_a_record_others_can_write_is_ignored(path: Path, file_mode: int, caplog: pytest.LogCaptureFixture) -> None:
    write_atomically(path, RECORD.to_json())
    path.chmod(file_mode)
    assert read_exit_record(str(path), 3) is None
    (message,) = warnings(caplog)
    assert message.startswith(f"Ignoring exit record {path}: writable by group or others")


def test_a_fifo_is_ignored_without_blocking(path: Path, caplog: pytest.LogCaptureFixture) -> None:
    os.mkfifo(path, 0o600)
    result: list[ExitRecord | None] = []
    reader = threading.Thread(target=lambda: result.append(read_exit_record(str(path), 3)), daemon=True)
    reader.start()
    reader.join(timeout=5)
    if reader.is_alive():  # unblock the stuck open before failing, so the thread can end
        os.close(os.open(path, os.O_WRONLY | os.O_NONBLOCK))
        pytest.fail("read_exit_record blocked on a FIFO")
    assert result == [None]
    (message,) = warnings(caplog)
    assert message.startswith(f"Ignoring exit record {path}: not a regular file")


def test_a_directory_is_ignored(path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path.mkdir()
    assert read_exit_record(str(path), 3) is None
    (message,) = warnings(caplog)
    assert message.startswith(f"Ignoring exit record {path}: not a regular file")


def test_a_record_of_another_instance_is_ignored_with_a_warning(path: Path, caplog: pytest.LogCaptureFixture) -> None:
    write_atomically(path, ExitRecord(4, "D").to_json())
    assert read_exit_record(str(path), 3) is None
    (message,) = warnings(caplog)
    assert message.startswith(f"Ignoring exit record {path}: task_instance_id")
