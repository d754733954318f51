"""scripts/bootstrap.sh leaves .venv with the locked pip and setuptools, not the old ones a new venv gets from the
interpreter (ensurepip: pip 23.2, setuptools 65.5 for Python 3.11, both with known CVEs)."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
LOCK = ROOT / "requirements.lock"
VENV_PYTHON = ROOT / ".venv" / "bin" / "python"
PACKAGES = ("pip", "setuptools")


def locked_versions() -> dict[str, str]:
    pins = dict(re.findall(r"^([A-Za-z0-9_.-]+)==(\S+)$", LOCK.read_text(), flags=re.MULTILINE))
    return {name: pins[name] for name in PACKAGES if name in pins}


def version_tuple(version: str) -> tuple[int, ...]:
    return tuple(int(part) for part in re.findall(r"\d+", version)[:3])


def test_the_lock_pins_current_pip_and_setuptools() -> None:
    pins = locked_versions()
    assert sorted(pins) == sorted(PACKAGES), f"requirements.lock must pin {PACKAGES} (# via bootstrap), has {pins}"
    # At least the first releases without the known CVEs (pip: CVE-2023-5752 fixed in 23.3, CVE-2025-8869 in
    # 25.3; setuptools: CVE-2024-6345 fixed in 70.0, CVE-2025-47273 in 78.1.1).
    assert version_tuple(pins["pip"]) >= (25, 3)
    assert version_tuple(pins["setuptools"]) >= (78, 1, 1)


def test_bootstrap_installs_the_locked_pip_and_setuptools_into_the_venv() -> None:
    if not VENV_PYTHON.exists():
        pytest.skip(f"{VENV_PYTHON} missing: run scripts/bootstrap.sh")
    code = (
        f"import importlib.metadata as m, json, sys\nprint(json.dumps({{n: m.version(n) for n in {list(PACKAGES)!r}}}))"
    )
    proc = subprocess.run([str(VENV_PYTHON), "-I", "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) == locked_versions(), "run scripts/bootstrap.sh: .venv differs from the lock"


def test_bootstrap_installs_everything_in_the_lock() -> None:
    """pip and setuptools come in through the one locked install (no separate, unpinned upgrade)."""
    script = (ROOT / "scripts" / "bootstrap.sh").read_text()
    assert "--no-deps -r requirements.lock" in script
    assert not re.search(r"install[^\n]*(--upgrade|-U)\b[^\n]*\b(pip|setuptools)\b", script)
