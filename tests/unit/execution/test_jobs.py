"""write_token on a shared log root: only a private directory of this user's own, a fresh file, never a link."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from jobmon_airflow.execution.jobs import write_token
from tests.support.modes import mode, umask


@pytest.fixture
def umask_000() -> Iterator[None]:
    with umask(0):
        yield


def test_token_file_is_0600_in_a_0700_directory_whatever_the_umask(tmp_path: Path, umask_000: None) -> None:
    token, path = write_token(tmp_path / "logs" / "dag" / "run", 7)
    assert path == tmp_path / "logs" / "dag" / "run" / ".tokens" / "ti-7.token"
    assert path.read_text() == token and len(token) >= 40
    assert (mode(path), mode(path.parent)) == (0o600, 0o700)
    assert mode(tmp_path / "logs" / "dag" / "run") == 0o700  # the log directories it made are private too
    token2, path2 = write_token(tmp_path / "logs" / "dag" / "run", "array-3-batch-1")
    assert path2.name == "array-3-batch-1.token" and token2 != token and mode(path2) == 0o600


def test_a_symlinked_token_directory_is_refused(tmp_path: Path) -> None:
    elsewhere = tmp_path / "attacker"
    elsewhere.mkdir(mode=0o700)
    log_dir = tmp_path / "logs"
    log_dir.mkdir()
    (log_dir / ".tokens").symlink_to(elsewhere, target_is_directory=True)
    with pytest.raises(PermissionError, match="must be a directory"):
        write_token(log_dir, 1)
    assert list(elsewhere.iterdir()) == []  # nothing written through the link


def test_a_dangling_link_or_a_file_as_token_directory_is_refused(tmp_path: Path) -> None:
    log_dir = tmp_path / "logs"
    log_dir.mkdir()
    (log_dir / ".tokens").symlink_to(tmp_path / "nowhere")
    with pytest.raises(PermissionError, match="must be a directory"):
        write_token(log_dir, 1)
    assert not (tmp_path / "nowhere").exists()
    (log_dir / ".tokens").unlink()
    (log_dir / ".tokens").write_text("")
    with pytest.raises(PermissionError, match="must be a directory"):
        write_token(log_dir, 1)


@pytest.mark.parametrize("dir_mode", [0o755, 0o750, 0o701, 0o777], ids=oct)
def test_a_token_directory_others_can_enter_is_refused(tmp_path: Path, dir_mode: int) -> None:
    token_dir = tmp_path / ".tokens"
    token_dir.mkdir()
    token_dir.chmod(dir_mode)
    with pytest.raises(PermissionError, match="mode 0700"):
        write_token(tmp_path, 1)
    assert list(token_dir.iterdir()) == []


def test_another_users_token_directory_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    token_dir = tmp_path / ".tokens"
    token_dir.mkdir(mode=0o700)
    if os.geteuid() == 0:
        os.chown(token_dir, 65534, 65534)  # nobody's: as another user would have planted it
    else:
        monkeypatch.setattr(os, "getuid", lambda: os.geteuid() + 1)  # the directory is then "someone else's"
    with pytest.raises(PermissionError, match="owned by uid"):
        write_token(tmp_path, 1)
    assert list(token_dir.iterdir()) == []


def test_a_link_at_the_token_path_is_not_followed(tmp_path: Path) -> None:
    token_dir = tmp_path / ".tokens"
    token_dir.mkdir(mode=0o700)
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    victim.chmod(0o644)
    (token_dir / "ti-5.token").symlink_to(victim)
    token, path = write_token(tmp_path, 5)
    assert not path.is_symlink() and path.read_text() == token and mode(path) == 0o600
    assert victim.read_text() == "precious" and mode(victim) == 0o644


def test_an_old_token_is_replaced_by_a_fresh_private_file(tmp_path: Path) -> None:
    token_dir = tmp_path / ".tokens"
    token_dir.mkdir(mode=0o700)
    old = token_dir / "ti-5.token"
    old.write_text("stale")
    old.chmod(0o644)
    with open(old) as held:  # a new file: whoever had the old one open does not see the new token
        token, path = write_token(tmp_path, 5)
        assert held.read() == "stale"
    assert path.read_text() == token != "stale" and mode(path) == 0o600
