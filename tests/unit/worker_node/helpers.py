"""Running the worker node as a real subprocess against a stand-in State Manager (a local HTTP server)."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from jobmon_airflow.array_manifest import ArrayElement, write_array_manifest

ROOT = Path(__file__).resolve().parents[3]
TOKEN = "s3cr3t-token-for-tests-7f1c"
TI_ID = 17
ARRAY_TI_IDS = (101, 102, 103)


@dataclass
class Call:
    action: str
    path: str
    headers: dict[str, str]
    body: dict[str, Any]
    at: float


@dataclass
class StateManagerStub:
    """Records every POST; replies from a per-action script (the last reply repeats), default 200 {"status": R}."""

    url: str = ""
    calls: list[Call] = field(default_factory=list)
    script: dict[str, list[tuple[int, dict[str, Any]]]] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def reply(self, action: str) -> tuple[int, dict[str, Any]]:
        with self.lock:
            replies = self.script.get(action)
            if not replies:
                return 200, {"status": "R"}
            return replies.pop(0) if len(replies) > 1 else replies[0]

    def actions(self) -> list[str]:
        return [c.action for c in self.calls]

    def only(self, action: str) -> Call:
        matching = [c for c in self.calls if c.action == action]
        assert len(matching) == 1, f"expected one {action}, got {self.actions()}"
        return matching[0]


@dataclass
class Run:
    proc: subprocess.CompletedProcess[str]
    record_path: Path
    elapsed: float

    @property
    def record(self) -> dict[str, Any]:
        return json.loads(self.record_path.read_text())


def run_worker(
    tmp_path: Path,
    url: str,
    command: str,
    *,
    extra: list[str] | None = None,
    env: dict[str, str] | None = None,
    timeout: float = 20,
) -> Run:
    token_file = tmp_path / "ti.token"
    if not token_file.exists():
        token_file.write_text(f"  {TOKEN}\n")
    record = tmp_path / "ti.exit.json"
    child_env = {k: v for k, v in os.environ.items() if "proxy" not in k.lower() and k not in ("JOB_ID", "SGE_TASK_ID")}
    child_env.update(env or {})
    argv = [
        sys.executable,
        "-m",
        "jobmon_airflow.worker_node",
        "--task-instance-id",
        str(TI_ID),
        "--state-manager-url",
        url,
        "--token-file",
        str(token_file),
        "--exit-record",
        str(record),
        "--heartbeat-interval",
        "30",
        "--http-timeout",
        "2",
        "--http-retry-seconds",
        "1",
        "--command-b64",
        base64.b64encode(command.encode()).decode(),
        *(extra or []),
    ]
    start = time.monotonic()
    proc = subprocess.run(argv, env=child_env, cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    return Run(proc, record, time.monotonic() - start)


def write_batch(tmp_path: Path, commands: list[str]) -> Path:
    """Token file and manifest of a batch of task instances 101, 102, ...; exit records ti-<id>.exit.json."""
    token_file = tmp_path / "batch.token"
    token_file.write_text(TOKEN)
    manifest = tmp_path / "batch.manifest.json"
    elements = [
        ArrayElement(ti, command, tmp_path / f"ti-{ti}.exit.json")
        for ti, command in zip(ARRAY_TI_IDS, commands, strict=False)
    ]
    write_array_manifest(manifest, token_file, elements)
    return manifest


def run_array_element(
    manifest: Path, url: str | None, task_id: str | None, *, extra: list[str] | None = None
) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if "proxy" not in k.lower() and not k.startswith("SGE_TASK_")}
    env.update(JOB_ID="4242", SGE_TASK_LAST="3")
    if task_id is not None:
        env["SGE_TASK_ID"] = task_id
    argv = [sys.executable, "-m", "jobmon_airflow.worker_node", "--array-manifest", str(manifest)]
    argv += ["--state-manager-url", url] if url else []
    argv += ["--heartbeat-interval", "30", "--http-timeout", "2", "--http-retry-seconds", "1", *(extra or [])]
    return subprocess.run(argv, env=env, cwd=ROOT, capture_output=True, text=True, timeout=20)


def exit_records(tmp_path: Path) -> dict[str, dict[str, Any]]:
    return {p.name: json.loads(p.read_text()) for p in tmp_path.glob("*.exit.json")}


def running(pid: int) -> bool:
    """True while ``pid`` exists and is not a zombie (a container's pid 1 may not reap orphans)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rfind(")") + 2] not in "ZX"


def wait_for(condition: Any, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("timed out waiting")
        time.sleep(0.02)
