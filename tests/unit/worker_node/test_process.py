"""The command's process tree, found through /proc, and its stderr tail."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

from jobmon_airflow.worker_node.outcome import ERROR_MESSAGE_CHARS
from jobmon_airflow.worker_node.process import CommandTree, StderrTail
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
    assert proc.stderr is not None
    tail = StderrTail(proc.stderr.fileno())
    tail.start()
    proc.wait()
    tail.join(5)
    assert tail.text() == text[-ERROR_MESSAGE_CHARS:]
