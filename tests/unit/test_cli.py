"""The ``jobmon-airflow`` command line on a throwaway SQLite database."""

from __future__ import annotations

import json
from pathlib import Path

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


def test_server_with_two_workers_serves_heartbeats_from_the_url_given(tmp_path: Path) -> None:
    """``--workers 2``: each uvicorn process builds its own app, so the URL must reach them through the environment."""
    import os
    import signal
    import subprocess
    import sys
    import time
    import urllib.error
    import urllib.request

    from jobmon_airflow.hashing import hash_token
    from tests.conftest import free_port

    url = f"sqlite:///{tmp_path / 'server.sqlite'}"
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
        deadline, answer = time.monotonic() + 60, None
        while answer is None:
            assert server.poll() is None, server.stderr.read() if server.stderr else ""
            assert time.monotonic() < deadline, "the server did not answer within 60 s"
            try:
                with urllib.request.urlopen(request, timeout=10) as response:
                    answer = json.loads(response.read())
            except urllib.error.HTTPError as exc:  # e.g. 403: a worker looked in another database
                pytest.fail(f"heartbeat refused: {exc.code} {exc.read()[:200]!r}")
            except OSError:  # not listening yet
                time.sleep(0.3)
        assert answer == {"status": "R"}
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
    import time
    import urllib.error
    import urllib.request

    from jobmon_airflow.hashing import hash_token
    from tests.conftest import free_port

    key, cert = _self_signed(tmp_path)
    url = f"sqlite:///{tmp_path / 'server.sqlite'}"
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
    port = free_port()
    argv = [sys.executable, "-m", "jobmon_airflow.cli", "--url", url, "server", "--port", str(port),
            "--ssl-keyfile", str(key), "--ssl-certfile", str(cert)]  # fmt: skip
    server = subprocess.Popen(argv, stderr=subprocess.PIPE, text=True, start_new_session=True)
    path = f"127.0.0.1:{port}/jobmon/api/state/task_instance/{ti}/log_report_by"
    headers = {"Authorization": "Bearer tok", "Content-Type": "application/json"}
    beat = json.dumps({"next_report_increment": 100}).encode()
    trusting = ssl.create_default_context(cafile=str(cert))
    try:
        deadline, answer = time.monotonic() + 60, None
        while answer is None:
            assert server.poll() is None, server.stderr.read() if server.stderr else ""
            assert time.monotonic() < deadline, "the server did not answer within 60 s"
            try:
                request = urllib.request.Request(f"https://{path}", data=beat, headers=headers)
                with urllib.request.urlopen(request, timeout=10, context=trusting) as response:
                    answer = json.loads(response.read())
            except urllib.error.HTTPError as exc:
                pytest.fail(f"heartbeat refused: {exc.code} {exc.read()[:200]!r}")
            except (urllib.error.URLError, OSError) as exc:  # not listening yet
                assert not isinstance(getattr(exc, "reason", exc), ssl.SSLError), exc
                time.sleep(0.3)
        assert answer == {"status": "R"}
        with pytest.raises(urllib.error.URLError) as refused:  # a client that does not trust the certificate
            urllib.request.urlopen(urllib.request.Request(f"https://{path}", data=beat, headers=headers), timeout=10)
        assert isinstance(refused.value.reason, ssl.SSLCertVerificationError)
        with pytest.raises((OSError, http.client.HTTPException)):  # no plain HTTP on the TLS port
            urllib.request.urlopen(urllib.request.Request(f"http://{path}", data=beat, headers=headers), timeout=10)
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(30)
