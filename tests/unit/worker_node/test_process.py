"""The command's process tree, found through /proc, and its stderr tail."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

from jobmon_airflow.worker_node.outcome import ERROR_MESSAGE_CHARS
from jobmon_airflow.worker_node.process import CommandTree, RunningCommand
from tests.unit.worker_node.helpers import running, wait_for


def test_command_tree_finds_and_signals_every_descendant(tmp_path: Path) -> None:
    pid_file = tmp_path / "sleep.pid"
    proc = subprocess.Popen(["/bin/bash", "-c", f"sleep 60 & echo $! > {pid_file}; wait"])
    try:
        wait_for(lambda: pid_file.exists() and pid_file.read_text().strip())
        grandchild = int(pid_file.read_text())
        tree = CommandTree(proc)
        assert {proc.pid, grandchild} <= set(tree.alive())
        assert os.getpid() not in tree.alive()  # never the worker itself
        tree.signal(signal.SIGKILL)
        assert tree.wait_gone(time.monotonic() + 10)
        assert not running(grandchild)
    finally:
        proc.kill()
        proc.wait()


def test_stderr_tail_keeps_the_end() -> None:
    text = "".join(f"line {i}\n" for i in range(5000))
    proc = subprocess.Popen(["/bin/bash", "-c", 'printf "%s" "$0" >&2', text], stderr=subprocess.PIPE)
    command = RunningCommand(proc)
    assert command.wait(time.monotonic() + 20)
    assert command.finish(5) == text[-ERROR_MESSAGE_CHARS:]


def test_wait_returns_at_the_exit_and_copies_stderr_meanwhile() -> None:
    """More stderr than a pipe holds (64 KiB) while the worker waits: it is read as it comes, so the command is
    never blocked on it; the wait ends at the command's exit, not at the deadline."""
    proc = subprocess.Popen(
        ["/bin/bash", "-c", "head -c 300000 /dev/zero | tr '\\0' x >&2; sleep 0.2; echo END >&2"],
        stderr=subprocess.PIPE,
    )
    command = RunningCommand(proc)
    start = time.monotonic()
    assert command.wait(start + 0.05) is False  # a deadline before the exit (the command sleeps 0.2 s)
    assert command.wait(start + 30)
    assert time.monotonic() - start < 10
    assert command.finish(5).endswith("x" * 100 + "END\n")


def test_finish_does_not_wait_for_a_background_process_holding_stderr() -> None:
    proc = subprocess.Popen(["/bin/bash", "-c", "echo early >&2; sleep 5 >&2 &"], stderr=subprocess.PIPE)
    command = RunningCommand(proc)
    assert command.wait(time.monotonic() + 20)
    start = time.monotonic()
    assert command.finish(0.5) == "early\n"
    assert time.monotonic() - start < 5
