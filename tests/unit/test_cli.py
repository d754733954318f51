"""The ``jobmon-airflow`` command line on a throwaway SQLite database."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from jobmon_airflow import cli, db
from jobmon_airflow.records import Usage
from jobmon_airflow.resources import QueueLimits, Resources
from jobmon_airflow.service import Services, TaskSpec


def test_db_upgrade_then_status_tables(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    url = f"sqlite:///{tmp_path / 'cli.sqlite'}"
    assert cli.main(["--url", url, "db", "upgrade"]) == 0
    assert db.current_revision(db.get_engine(url)) == db.head_revision()
    svc = Services.for_engine(db.get_engine(url))
    run = svc.binding.bind_workflow_run(dag_id="d", run_id="r")
    tasks = svc.binding.bind_tasks(run.workflow_id, [TaskSpec(f"t{i}", f"t{i}", "true") for i in range(4)])
    (ti,) = svc.lifecycle.queue_task_instances(
        run.workflow_run_id, svc.binding.cluster_id("local", "local"), tasks[:1], Resources(), "O", QueueLimits("local")
    )
    svc.lifecycle.instantiate([ti], {}, {})
    svc.lifecycle.log_distributor_ids({ti: "7"})
    svc.reports.log_running(ti, "node", 1, "7", 100)
    svc.reports.log_done(ti, "node", Usage(maxrss_bytes=2**20))
    capsys.readouterr()

    assert cli.main(["--url", url, "workflow", "status", "--dag-id", "d", "-n"]) == 0
    (row,) = json.loads(capsys.readouterr().out)
    assert (row["TASKS"], row["DONE"], row["PENDING"], row["WF_STATUS"]) == (4, 1, 3, "RUNNING")

    assert cli.main(["--url", url, "workflow", "status", "--dag-id", "d"]) == 0
    table = capsys.readouterr().out
    assert "1 (25.0%)" in table and "3 (75.0%)" in table

    assert cli.main(["--url", url, "workflow", "tasks", "-w", str(run.workflow_id), "-n"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["STATUS"] for r in rows] == ["DONE", "PENDING", "PENDING", "PENDING"]
    assert rows[0]["DISTRIBUTOR_ID"] == "7" and rows[0]["MAXRSS_MB"] == 1.0


def test_bad_arguments_exit_with_usage() -> None:
    with pytest.raises(SystemExit) as exc:
        cli.main(["workflow", "tasks"])
    assert exc.value.code == 2


def test_server_workers_must_be_positive(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        cli.main(["server", "--workers", "0"])
    assert exc.value.code == 2
    assert "--workers" in capsys.readouterr().err


def _running_instance(url: str) -> int:
    """A new state database at ``url`` holding one running instance whose State Manager token is ``tok``."""
    from jobmon_airflow.hashing import hash_token

    svc = Services.for_engine(db.get_engine(url))
    db.upgrade(svc.engine)
    run = svc.binding.bind_workflow_run(dag_id="d", run_id="r")
    tasks = svc.binding.bind_tasks(run.workflow_id, [TaskSpec("t", "t", "true")])
    (ti,) = svc.lifecycle.queue_task_instances(
        run.workflow_run_id, svc.binding.cluster_id("local", "local"), tasks, Resources(), "O", QueueLimits("local")
    )
    svc.lifecycle.instantiate([ti], {ti: hash_token("tok")}, {})
    svc.lifecycle.log_distributor_ids({ti: "7"})
    svc.reports.log_running(ti, "node", 1, "7", 100)
    return ti


def _first_answer(server: Any, send: Any) -> Any:
    """The JSON answer of ``send()`` once the server process listens (60 s at most); a refusal fails the test, and
    so does a TLS error (only "not listening yet" is retried)."""
    import ssl
    import time
    import urllib.error

    deadline = time.monotonic() + 60
    while True:
        assert server.poll() is None, server.stderr.read() if server.stderr else ""
        assert time.monotonic() < deadline, "the server did not answer within 60 s"
        try:
            with send() as response:
                return json.loads(response.read())
        except urllib.error.HTTPError as exc:
            pytest.fail(f"heartbeat refused: {exc.code} {exc.read()[:200]!r}")
        except OSError as exc:  # not listening yet (URLError is an OSError)
            assert not isinstance(getattr(exc, "reason", exc), ssl.SSLError), exc
            time.sleep(0.3)


def test_server_with_two_workers_serves_heartbeats_from_the_url_given(tmp_path: Path) -> None:
    """``--workers 2``: each uvicorn process builds its own app, so the URL must reach them through the environment."""
    import os
    import signal
    import subprocess
    import sys
    import urllib.error
    import urllib.request

    from tests.conftest import free_port

    url = f"sqlite:///{tmp_path / 'server.sqlite'}"
    ti = _running_instance(url)
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k != cli.SERVER_DB_URL_ENV}
    argv = [sys.executable, "-m", "jobmon_airflow.cli", "--url", url, "server", "--port", str(port), "--workers", "2"]
    server = subprocess.Popen(argv, env=env, stderr=subprocess.PIPE, text=True, start_new_session=True)
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/jobmon/api/state/task_instance/{ti}/log_report_by",
        data=json.dumps({"next_report_increment": 100}).encode(),
        headers={"Authorization": "Bearer tok", "Content-Type": "application/json"},
    )
    try:
        # a 403 would say that a worker looked in another database
        assert _first_answer(server, lambda: urllib.request.urlopen(request, timeout=10)) == {"status": "R"}
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(30)


def test_server_tls_options_are_checked_before_starting(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Both or neither; the files must exist and be a certificate with its unencrypted key."""
    key, cert = _self_signed(tmp_path)
    assert cli.main(["server", "--ssl-keyfile", str(key)]) == 2
    assert "--ssl-keyfile and --ssl-certfile go together" in capsys.readouterr().err
    assert cli.main(["server", "--ssl-certfile", str(cert), "--ssl-keyfile", str(tmp_path / "nope.pem")]) == 2
    assert f"--ssl-keyfile {tmp_path / 'nope.pem'}: no such file" in capsys.readouterr().err
    assert cli.main(["server", "--ssl-certfile", str(cert), "--ssl-keyfile", str(cert)]) == 2
    assert f"cannot use {cert} with {cert}" in capsys.readouterr().err


def _self_signed(directory: Path) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 and its key, made by the openssl command."""
    import shutil
    import subprocess

    if shutil.which("openssl") is None:
        pytest.skip("the openssl command is not installed")
    key, cert = directory / "key.pem", directory / "cert.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(cert),
         "-days", "1", "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"],
        check=True, capture_output=True,
    )  # fmt: skip
    return key, cert


def test_server_serves_heartbeats_over_tls(tmp_path: Path) -> None:
    """``server --ssl-keyfile/--ssl-certfile``: an authenticated heartbeat over HTTPS, verified against the cert."""
    import http.client
    import os
    import signal
    import ssl
    import subprocess
    import sys
    import urllib.error
    import urllib.request

    from tests.conftest import free_port

    key, cert = _self_signed(tmp_path)
    url = f"sqlite:///{tmp_path / 'server.sqlite'}"
    ti = _running_instance(url)
    port = free_port()
    argv = [sys.executable, "-m", "jobmon_airflow.cli", "--url", url, "server", "--port", str(port),
            "--ssl-keyfile", str(key), "--ssl-certfile", str(cert)]  # fmt: skip
    server = subprocess.Popen(argv, stderr=subprocess.PIPE, text=True, start_new_session=True)
    path = f"127.0.0.1:{port}/jobmon/api/state/task_instance/{ti}/log_report_by"
    headers = {"Authorization": "Bearer tok", "Content-Type": "application/json"}
    beat = json.dumps({"next_report_increment": 100}).encode()
    trusting = ssl.create_default_context(cafile=str(cert))
    try:
        request = urllib.request.Request(f"https://{path}", data=beat, headers=headers)
        answer = _first_answer(server, lambda: urllib.request.urlopen(request, timeout=10, context=trusting))
        assert answer == {"status": "R"}
        with pytest.raises(urllib.error.URLError) as refused:  # a client that does not trust the certificate
            urllib.request.urlopen(urllib.request.Request(f"https://{path}", data=beat, headers=headers), timeout=10)
        assert isinstance(refused.value.reason, ssl.SSLCertVerificationError)
        with pytest.raises((OSError, http.client.HTTPException)):  # no plain HTTP on the TLS port
            urllib.request.urlopen(urllib.request.Request(f"http://{path}", data=beat, headers=headers), timeout=10)
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(30)


# -- Jobmon's commands on a known workflow (tests/support/insights.py) ------------------------------------------


@pytest.fixture
def known_db(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[str, Services, Any]:
    from tests.support.insights import build_known_workflow

    url = f"sqlite:///{tmp_path / 'known.sqlite'}"
    svc = Services.for_engine(db.get_engine(url))
    db.upgrade(svc.engine)
    known = build_known_workflow(svc)
    for name in ("LOGNAME", "USER"):  # the owner, as getpass sees it
        monkeypatch.setenv(name, "alice")
    return url, svc, known


def test_workflow_status_tasks_logs_in_table_and_json(
    known_db: tuple[str, Services, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    url, _, known = known_db
    wf = str(known.workflow_id)
    assert cli.main(["--url", url, "workflow", "status", "-u", "alice", "--json"]) == 0
    (row,) = json.loads(capsys.readouterr().out)
    assert (row["WF_ID"], row["TASKS"], row["DONE"], row["PENDING"], row["RETRIES"]) == (known.workflow_id, 10, 7, 3, 3)
    assert cli.main(["--url", url, "workflow", "status", "-w", wf]) == 0
    table = capsys.readouterr().out
    assert "WF_STATUS" in table and "7 (70.0%)" in table and "3 (30.0%)" in table
    assert cli.main(["--url", url, "workflow", "status", "-u", "nobody", "-n"]) == 0
    assert json.loads(capsys.readouterr().out) == []
    with pytest.MonkeyPatch.context() as env:  # the URL from the environment (not in ps), no Airflow import
        env.setenv("JOBMON_AIRFLOW_DB_URL", url)
        assert cli.main(["workflow", "status", "-w", wf, "-n"]) == 0
        assert json.loads(capsys.readouterr().out)[0]["WF_ID"] == known.workflow_id

    assert cli.main(["--url", url, "workflow", "tasks", "-w", wf, "-s", "PENDING", "--json"]) == 0
    assert {r["TASK_NAME"] for r in json.loads(capsys.readouterr().out)} == {"model_5", "model_6", "agg"}
    assert cli.main(["--url", url, "workflow", "tasks", "-w", wf, "-s", "done,pending", "-l", "2"]) == 0
    out = capsys.readouterr()
    assert "TASK_NAME" in out.out and "(2 of 10 tasks" in out.err

    assert cli.main(["--url", url, "workflow", "logs", "-w", wf, "-l", "3", "--json"]) == 0
    paths = json.loads(capsys.readouterr().out)
    assert len(paths) == 3 and all(p["STDERR"].startswith("/logs/") for p in paths)


def test_task_status_and_resources(known_db: tuple[str, Services, Any], capsys: pytest.CaptureFixture[str]) -> None:
    url, _, known = known_db
    assert cli.main(["--url", url, "task", "status", "-t", f"{known.models[7]},{known.models[5]}", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    # in the order asked, newest instance first
    assert [(r["TASK_ID"], r["STATUS"]) for r in rows] == [
        (known.models[7], "DONE"), (known.models[7], "FATAL"), (known.models[5], "FATAL"), (known.models[5], "FATAL"),
    ]  # fmt: skip
    assert "No such file" in rows[2]["ERROR_TRACE"] and rows[0]["RESOURCE_USAGE"] == "maxrss=2.50G wallclock=50s"
    assert cli.main(["--url", url, "task", "status", "-t", str(known.models[7]), "-s", "DONE"]) == 0
    table = capsys.readouterr().out
    assert "task_status" in table and "DONE" in table and "FATAL" not in table

    wf = str(known.workflow_id)
    assert cli.main(["--url", url, "workflow", "resources", "usage", "-w", wf, "--json"]) == 0
    usage = {u["template"]: u for u in json.loads(capsys.readouterr().out)}
    assert usage["model"]["memory_gib"]["max"] == pytest.approx(5.0)
    assert cli.main(["--url", url, "workflow", "resources", "usage", "-w", wf, "-t", "model"]) == 0
    assert "MEM_MAX_GIB" in capsys.readouterr().out
    assert cli.main(["--url", url, "workflow", "resources", "yaml", "-w", wf, "--memory", "p50"]) == 0
    import yaml

    spec = yaml.safe_load(capsys.readouterr().out)["task_template_resources"]
    # p50 of the done instances' 1..5 GiB and 2.5 GiB: 2.5 → 3G
    assert spec["model"]["local"] == {"cores": 1, "memory": "3G", "runtime": 500}
    assert spec["prep"]["local"]["memory"] == "1G"


def test_bad_input_is_one_line_and_a_non_zero_exit(
    known_db: tuple[str, Services, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    url, _, known = known_db
    bad = [
        ["workflow", "status", "-w", "abc"],
        ["task", "update", "-t", "1", "-w", "1", "-s", "X"],
        ["workflow", "tasks", "-w", "1", "-s", "LATE"],
        ["workflow", "concurrency", "-w", "1", "-m", "0"],
    ]
    for argv in bad:
        with pytest.raises(SystemExit) as exc:
            cli.main(["--url", url, *argv])
        assert exc.value.code == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and err.startswith("jobmon-airflow: error:"), err
    assert cli.main(["--url", url, "task", "status", "-t", "99999"]) == 1
    assert capsys.readouterr().err == "jobmon-airflow: error: no task 99999\n"
    assert cli.main(["--url", url, "workflow", "reset", "-w", str(known.workflow_id)]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "its last run 1 is RUNNING" in err


KNOWN_DAG = """
from airflow.sdk import DAG
from airflow.providers.standard.operators.empty import EmptyOperator

with DAG("known_dag", schedule=None):
    EmptyOperator(task_id="prep") >> EmptyOperator(task_id="models") >> EmptyOperator(task_id="agg")
"""


def test_task_dependencies_and_update_g_resets_downstream(
    known_db: tuple[str, Services, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    url, svc, known = known_db
    dags = tmp_path / "dags"
    dags.mkdir()
    (dags / "known_dag.py").write_text(KNOWN_DAG)
    monkeypatch.setenv("AIRFLOW__CORE__DAGS_FOLDER", str(dags))
    wf = str(known.workflow_id)

    assert cli.main(["--url", url, "task", "dependencies", "-t", str(known.models[0]), "--json"]) == 0
    deps = json.loads(capsys.readouterr().out)
    assert [t["TASK_ID"] for t in deps["upstream"]] == [known.prep]
    assert [t["TASK_ID"] for t in deps["downstream"]] == [known.agg]

    assert cli.main(["--url", url, "task", "update", "-t", str(known.agg), "-w", wf, "-s", "D", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["updated"] == [known.agg]
    assert svc.insights.task(known.agg).status == "D"
    # G on prep: prep and everything below it (the models, then agg) go back to G with no attempts used.
    assert cli.main(["--url", url, "task", "update", "-t", str(known.prep), "-w", wf, "-s", "G", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert set(result["updated"]) == {known.prep, known.agg, *known.models} - {known.models[5], known.models[6]}
    assert set(result["unchanged"]) == {known.models[5], known.models[6]}
    tasks = {t.id: t for t in svc.insights.tasks(known.workflow_id).items}
    assert all(t.status == "G" and t.num_attempts == 0 for t in tasks.values())

    monkeypatch.setenv("LOGNAME", "mallory")
    assert cli.main(["--url", url, "task", "update", "-t", str(known.agg), "-w", wf, "-s", "D"]) == 1
    assert "only its owner may change it (you are mallory)" in capsys.readouterr().err


def test_workflow_concurrency_is_read_by_the_array_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The array operator's next round submits with the limit `workflow concurrency` set."""
    import getpass

    from jobmon_airflow.execution import ArrayOptions, ArrayRun, JobSettings, WorkflowIdentity
    from jobmon_airflow.templates import TaskTemplate
    from tests.support.fakes import FakeCluster

    url = f"sqlite:///{tmp_path / 'arr.sqlite'}"
    svc = Services.for_engine(db.get_engine(url))
    db.upgrade(svc.engine)
    cluster = FakeCluster()
    options = ArrayOptions(batch_size=4, max_concurrently_running=2)
    run = ArrayRun(svc, cluster, JobSettings(tmp_path / "logs", "http://127.0.0.1:9/jobmon"), options)
    template = TaskTemplate(name="m", command_template="model --loc {loc}", node_args=["loc"])
    progress = run.start(
        WorkflowIdentity("dag", "run", try_number=1), template, template.create_tasks(loc=list(range(8))),
        airflow_task_id="models", map_index=-1, requested=Resources(memory=1.0),
    )  # fmt: skip
    live = run.advance(progress)
    assert isinstance(live, dict) and [j.max_concurrent for j in cluster.submitted] == [2]
    monkeypatch.setenv("LOGNAME", getpass.getuser())  # the run's owner: the user the worker runs as
    assert cli.main(["--url", url, "workflow", "concurrency", "-w", str(progress.workflow_id), "-m", "3"]) == 0
    assert "arrays models" in capsys.readouterr().out
    for ti_id, job_id in live.items():
        svc.reports.log_running(ti_id, "n", None, None, 60)
        svc.reports.log_done(ti_id, "n", None)
        cluster.finish(job_id)
    assert isinstance(run.advance(progress), dict)
    assert [j.max_concurrent for j in cluster.submitted] == [2, 3]
    assert svc.insights.concurrency_limits(progress.array_id) == (3, 3)
