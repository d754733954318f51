"""Unit-test fixtures: a fresh embedded state database and its service layer."""

from __future__ import annotations

from pathlib import Path

import pytest

from jobmon_airflow import db
from jobmon_airflow.service import Services


@pytest.fixture
def services(tmp_path: Path) -> Services:
    engine = db.get_engine(f"sqlite:///{tmp_path / 'jobmon.sqlite'}")
    db.upgrade(engine)
    return Services.for_engine(engine)
