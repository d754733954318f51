"""files: atomic writes are whole, private whatever the umask, and never go through a link planted in the way."""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from jobmon_airflow import files
from tests.support.modes import mode, umask


@pytest.fixture
def umask_000() -> Iterator[None]:
    with umask(0):
        yield


def test_file_is_private_under_umask_000(tmp_path: Path, umask_000: None) -> None:
    target = tmp_path / "record.json"
    files.write_atomically(target, "{}")
    assert mode(target) == 0o600
    files.write_json(target, {"a": 1}, durable=True)
    assert mode(target) == 0o600 and files.read_json(target) == {"a": 1}


def test_missing_directories_are_created_private_under_umask_000(tmp_path: Path, umask_000: None) -> None:
    target = tmp_path / "a" / "b" / "record.json"
    files.write_atomically(target, "x")
    assert target.read_text() == "x"
    assert (mode(tmp_path / "a"), mode(tmp_path / "a" / "b"), mode(target)) == (0o700, 0o700, 0o600)


def test_existing_directories_keep_their_mode(tmp_path: Path, umask_000: None) -> None:
    shared = tmp_path / "shared"
    shared.mkdir(mode=0o755)
    files.make_private_dirs(shared / "mine")
    assert (mode(shared), mode(shared / "mine")) == (0o755, 0o700)


def test_a_link_at_the_temporary_path_is_not_followed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Someone who guessed the temporary name and put a link there: the write goes on under another name, the
    link's target is untouched, and the link (not ours) is left alone."""
    target = tmp_path / "record.json"
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    names = iter(["guessed"])
    real_token_hex = files._token_hex
    monkeypatch.setattr(files, "_token_hex", lambda: next(names, None) or real_token_hex())
    planted = tmp_path / f".record.json.{os.getpid()}.guessed.tmp"
    planted.symlink_to(victim)

    files.write_atomically(target, "mine")

    assert target.read_text() == "mine" and not target.is_symlink()
    assert victim.read_text() == "precious"
    assert planted.is_symlink() and os.readlink(planted) == str(victim)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([target.name, victim.name, planted.name])


def test_a_link_at_the_target_is_replaced_not_followed(tmp_path: Path) -> None:
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    target = tmp_path / "record.json"
    target.symlink_to(victim)
    files.write_atomically(target, "mine")
    assert not target.is_symlink() and target.read_text() == "mine"
    assert victim.read_text() == "precious"


def test_concurrent_writers_of_one_path_never_leave_a_partial_file(tmp_path: Path) -> None:
    target = tmp_path / "state.json"
    size = 256 * 1024  # several write() calls each
    contents = {"a" * size, "b" * size}
    files.write_atomically(target, "a" * size)
    stop = threading.Event()
    seen: list[str] = []
    errors: list[BaseException] = []

    def writer(text: str) -> None:
        try:
            for _ in range(60):
                files.write_atomically(target, text)
        except BaseException as exc:  # reported below, not lost in the thread
            errors.append(exc)

    def reader() -> None:
        while not stop.is_set():
            text = target.read_text()
            if text not in contents:
                seen.append(text[:20] + f"... ({len(text)} chars)")

    threads = [threading.Thread(target=writer, args=(c,)) for c in sorted(contents)]
    watcher = threading.Thread(target=reader)
    watcher.start()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    stop.set()
    watcher.join()
    assert not errors and not seen
    assert target.read_text() in contents and mode(target) == 0o600
    assert [p.name for p in tmp_path.iterdir()] == [target.name]  # no temporary file left behind


def test_a_failed_write_leaves_nothing_behind(tmp_path: Path) -> None:
    target = tmp_path / "record.json"
    with pytest.raises(UnicodeEncodeError):
        files.write_atomically(target, "\udc80")  # a lone surrogate cannot be UTF-8
    assert list(tmp_path.iterdir()) == []


def test_logs_open_private_and_not_through_a_link(tmp_path: Path, umask_000: None) -> None:
    log = tmp_path / "job.o1"
    with files.open_private_append(log) as fh:
        fh.write(b"one\n")
    assert mode(log) == 0o600
    os.chmod(log, 0o644)  # an older, world-readable log: appended to, and made private
    with files.open_private_append(log) as fh:
        fh.write(b"two\n")
    assert log.read_bytes() == b"one\ntwo\n" and mode(log) == 0o600
    victim = tmp_path / "victim"
    victim.write_text("precious")
    (tmp_path / "link.e1").symlink_to(victim)
    with pytest.raises(OSError):
        files.open_private_append(tmp_path / "link.e1")
    assert victim.read_text() == "precious"
