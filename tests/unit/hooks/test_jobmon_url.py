"""The jobmon connection's database URL read without Airflow (the command line's fast path) is exactly the one
JobmonHook finds through Airflow, and the fast path steps aside whenever Airflow could know something it does not."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from jobmon_airflow import paths
from jobmon_airflow.hooks.jobmon_url import SECRETS_BACKEND_OPTIONS, resolve_without_airflow

ROOT = Path(__file__).resolve().parents[3]
ENV = "AIRFLOW_CONN_JOBMON_DEFAULT"

# (AIRFLOW_CONN_JOBMON_DEFAULT, AIRFLOW_CONN_STATE_DB) as users write them: JSON and URIs, every rule of the hook.
CASES = {
    "json sql_alchemy_conn": (json.dumps({"conn_type": "jobmon", "extra": {"sql_alchemy_conn": "sqlite:////d/j.db"}}),
                              None),
    "json extra as a string": (json.dumps({"conn_type": "jobmon", "extra": '{"sql_alchemy_conn": "sqlite:///x"}'}),
                               None),
    "json host": (json.dumps({"conn_type": "jobmon", "host": "db.example", "login": "u", "password": "p@ss:/w",
                              "schema": "jm", "port": "3307"}), None),
    "json host, defaults": (json.dumps({"conn_type": "jobmon", "host": "db"}), None),
    "json no host": (json.dumps({"conn_type": "jobmon", "extra": {"cluster": "gridengine"}}), None),
    "json mysql_conn_id": (json.dumps({"conn_type": "jobmon", "extra": {"mysql_conn_id": "state_db"}}),
                           "mysql://admin:s%40cret@maria.example:3310/jobs"),
    "uri host": ("jobmon://user:p%40ss%2Fw@db.example:3307/jobs?cluster=gridengine", None),
    "uri no port": ("jobmon://user@db.example/", None),
    "uri query extra": ("jobmon://?sql_alchemy_conn=sqlite%3A%2F%2F%2Ftmp%2Fj.db", None),
    "uri __extra__": ("jobmon://?__extra__=" + "%7B%22sql_alchemy_conn%22%3A%20%22sqlite%3A%2F%2F%2Fe%22%7D", None),
    "uri protocol in host": ("jobmon://mysql://db.example:3306/jm", None),
    "uri quoted host with a slash": ("jobmon://u:p@%2Fvar%2Frun%2Fdb:3306/jm", None),
    "uri empty": ("jobmon://", None),
    "uri mysql_conn_id": ("jobmon://?mysql_conn_id=state_db", json.dumps({"host": "m", "port": 3311})),
    "empty value": ("", None),
}  # fmt: skip


@pytest.fixture
def clean_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> pytest.MonkeyPatch:
    """No custom secrets backend, no connection in the environment, a config file of our own."""
    for section, options in SECRETS_BACKEND_OPTIONS.items():
        for option in options:
            monkeypatch.delenv(f"AIRFLOW__{section.upper()}__{option.upper()}", raising=False)
    for name in (ENV, "AIRFLOW_CONN_STATE_DB", "_AIRFLOW_PROCESS_CONTEXT"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AIRFLOW_CONFIG", str(tmp_path / "airflow.cfg"))
    monkeypatch.setenv("JOBMON_AIRFLOW_HOME", str(tmp_path / "jobmon"))
    return monkeypatch


@pytest.mark.parametrize("case", list(CASES))
def test_same_url_as_the_hook_through_airflow(clean_environment: pytest.MonkeyPatch, case: str) -> None:
    from jobmon_airflow.hooks.jobmon import JobmonHook

    value, state_db = CASES[case]
    clean_environment.setenv(ENV, value)
    if state_db is not None:
        clean_environment.setenv("AIRFLOW_CONN_STATE_DB", state_db)
    fast = resolve_without_airflow("jobmon_default")
    assert fast is not None, "the fast path should be sure of this one"
    assert fast == JobmonHook().get_db_url()


def test_no_connection_anywhere_is_the_embedded_database(clean_environment: pytest.MonkeyPatch) -> None:
    from jobmon_airflow.hooks.jobmon import JobmonHook

    assert resolve_without_airflow("jobmon_default") == paths.default_db_url() == JobmonHook().get_db_url()


@pytest.mark.parametrize(("section", "option"), [(s, o) for s, opts in SECRETS_BACKEND_OPTIONS.items() for o in opts])
def test_a_custom_secrets_backend_leaves_it_to_airflow(
    clean_environment: pytest.MonkeyPatch, tmp_path: Path, section: str, option: str
) -> None:
    clean_environment.setenv(ENV, CASES["json host"][0])
    assert resolve_without_airflow("jobmon_default") is not None
    clean_environment.setenv(f"AIRFLOW__{section.upper()}__{option.upper()}", "some.Backend")
    assert resolve_without_airflow("jobmon_default") is None
    clean_environment.delenv(f"AIRFLOW__{section.upper()}__{option.upper()}")
    (tmp_path / "airflow.cfg").write_text(f"[core]\nload_examples = False\n[{section}]\n{option} = some.Backend\n")
    assert resolve_without_airflow("jobmon_default") is None
    (tmp_path / "airflow.cfg").write_text(f"[{section}]\n{option} =\n")  # set to nothing: no backend
    assert resolve_without_airflow("jobmon_default") is not None
    (tmp_path / "airflow.cfg").write_text("[secrets\nnot a config file")
    assert resolve_without_airflow("jobmon_default") is None


def test_server_processes_also_read_the_metastore(clean_environment: pytest.MonkeyPatch) -> None:
    clean_environment.setenv("_AIRFLOW_PROCESS_CONTEXT", "server")
    assert resolve_without_airflow("jobmon_default") is None  # the connection may be in Airflow's database
    clean_environment.setenv(ENV, CASES["json host"][0])
    assert resolve_without_airflow("jobmon_default") is not None  # the environment comes first


@pytest.mark.parametrize(
    ("value", "state_db"),
    [
        ("{not json", None),  # Airflow logs it and goes on: its answer
        (json.dumps({"host": "db", "port": "x"}), None),  # a bad port
        (json.dumps({"host": "db", "hostname": "typo"}), None),  # a field Airflow's Connection does not have
        (json.dumps({"extra": "[1, 2]"}), None),  # extras that are not an object
        ("jobmon://db:notaport/jm", None),
        ("   ", None),
        (json.dumps({"extra": {"mysql_conn_id": "state_db"}}), None),  # that connection is not in the environment
    ],
)
def test_values_it_is_unsure_of_go_to_airflow(
    clean_environment: pytest.MonkeyPatch, value: str, state_db: str | None
) -> None:
    clean_environment.setenv(ENV, value)
    assert resolve_without_airflow("jobmon_default") is None


def test_the_command_line_reads_the_connection_without_importing_airflow(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW__SECRETS__", "AIRFLOW__WORKERS__"))}
    url = f"sqlite:///{tmp_path / 'state.sqlite'}"
    env.update({ENV: json.dumps({"conn_type": "jobmon", "extra": {"sql_alchemy_conn": url}}),
                "AIRFLOW_CONFIG": str(tmp_path / "airflow.cfg"), "AIRFLOW__CORE__UNIT_TEST_MODE": "False"})  # fmt: skip
    env.pop("_AIRFLOW_PROCESS_CONTEXT", None)
    code = "import sys; from jobmon_airflow.cli.common import db_url; print(db_url(None), 'airflow' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], env=env, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == [url, "False"]
