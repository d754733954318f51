"""Reliability of the Grid Engine backend, on recorded answers (``tests/data/gridengine``): a qmaster outage during
submission is waited out, then reported as ClusterUnavailable (never as a refusal, never by submitting twice); qstat
and qdel report it at once; a queue Grid Engine does not have is an UnknownQueue listing the queues it has."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from jobmon_airflow.clusters.base import ClusterError, ClusterUnavailable, JobRequest, SubmissionError, UnknownQueue
from jobmon_airflow.clusters.gridengine import CommandTimeout, GridEngineCluster
from jobmon_airflow.resources import ResourceError, Resources

DATA = Path(__file__).resolve().parents[2] / "data" / "gridengine"
UNREACHABLE = (1, "", (DATA / "qsub_qmaster_unreachable.txt").read_text())
ACCESS_DENIED = (1, "", (DATA / "qsub_qmaster_access_denied.txt").read_text())
SUBMITTED = (0, "4242\n", "")
ANSWER_LOST = (
    1,
    "",
    "error: commlib error: got read error\nfailed receiving gdi request response for mid=3 (got no message).",
)
QCONF = {
    "qconf -sq": (0, (DATA / "qconf_sq_all.q.txt").read_text(), ""),
    "qconf -sp": (0, (DATA / "qconf_sp_smp.txt").read_text(), ""),
    "qconf -se": (0, (DATA / "qconf_se_host.txt").read_text(), ""),
    "qconf -sql": (0, (DATA / "qconf_sql.txt").read_text(), ""),
}
UNKNOWN_QUEUE = (1, "", (DATA / "qconf_sq_unknown_queue.txt").read_text())


class ScriptedCluster(GridEngineCluster):
    """Answers each command ("qsub -terse", "qconf -sq" …) from a script: a list is consumed in order, its last
    answer repeated; a single answer always."""

    RETRY_FIRST_DELAY_S = 0.01
    RETRY_MAX_DELAY_S = 0.05

    def __init__(self, answers: dict[str, Any], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.answers = answers
        self.commands: list[list[str]] = []

    def _run(self, argv: Sequence[str], stdin: str | None = None) -> subprocess.CompletedProcess[str]:
        self.commands.append(list(argv))
        answer = self.answers[" ".join(argv[:2])]
        if isinstance(answer, list):
            answer = answer.pop(0) if len(answer) > 1 else answer[0]
        if isinstance(answer, Exception):
            raise answer
        rc, out, err = answer
        return subprocess.CompletedProcess(list(argv), rc, out, err)

    def calls(self, command: str) -> int:
        return sum(1 for c in self.commands if " ".join(c[:2]) == command)


def job(tmp_path: Path, **resources: Any) -> JobRequest:
    return JobRequest("task", ["/bin/true"], Resources(**resources), tmp_path)


# -- submission during a qmaster outage


@pytest.mark.parametrize("failure", [UNREACHABLE, ACCESS_DENIED], ids=["connection-refused", "access-denied"])
def test_submit_waits_out_an_unreachable_qmaster(tmp_path: Path, failure: tuple[int, str, str]) -> None:
    cluster = ScriptedCluster({"qsub -terse": [failure, failure, SUBMITTED]})
    assert cluster.submit(job(tmp_path)) == "4242"
    assert cluster.calls("qsub -terse") == 3


def test_submit_gives_up_after_its_budget_with_cluster_unavailable(tmp_path: Path) -> None:
    cluster = ScriptedCluster({"qsub -terse": UNREACHABLE}, submit_retry_seconds=0.3)
    started = time.monotonic()
    with pytest.raises(ClusterUnavailable, match="qmaster unreachable") as exc:
        cluster.submit(job(tmp_path))
    assert time.monotonic() - started < 2
    assert not isinstance(exc.value, SubmissionError)
    assert "unable to send message to qmaster" in str(exc.value) and "job 'task' was not submitted" in str(exc.value)
    assert cluster.calls("qsub -terse") >= 3  # backed off and tried again within 0.3 s


def test_submit_back_off_grows_and_is_bounded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pauses: list[float] = []
    monkeypatch.setattr(time, "sleep", pauses.append)
    cluster = ScriptedCluster({"qsub -terse": [UNREACHABLE] * 8 + [SUBMITTED]}, submit_retry_seconds=3600)
    cluster.RETRY_FIRST_DELAY_S, cluster.RETRY_MAX_DELAY_S = 1.0, 15.0
    assert cluster.submit(job(tmp_path)) == "4242"
    assert len(pauses) == 8
    assert all(0.5 * d <= p <= d for p, d in zip(pauses, [1, 2, 4, 8, 15, 15, 15, 15], strict=True))


def test_submit_without_retry_budget_tries_once(tmp_path: Path) -> None:
    cluster = ScriptedCluster({"qsub -terse": UNREACHABLE}, submit_retry_seconds=0)
    with pytest.raises(ClusterUnavailable):
        cluster.submit(job(tmp_path))
    assert cluster.calls("qsub -terse") == 1


def test_a_lost_answer_is_not_retried_the_job_may_exist(tmp_path: Path) -> None:
    cluster = ScriptedCluster({"qsub -terse": [ANSWER_LOST, SUBMITTED]})
    with pytest.raises(ClusterError, match="may or may not have been submitted") as exc:
        cluster.submit(job(tmp_path))
    assert not isinstance(exc.value, ClusterUnavailable | SubmissionError)
    assert cluster.calls("qsub -terse") == 1


def test_a_refusal_is_a_submission_error_at_once(tmp_path: Path) -> None:
    refused = (1, "", (DATA / "qsub_rejected_no_suitable_queues.txt").read_text())
    cluster = ScriptedCluster({"qsub -terse": [refused, SUBMITTED]})
    with pytest.raises(SubmissionError, match="no suitable queues"):
        cluster.submit(job(tmp_path))
    assert cluster.calls("qsub -terse") == 1


def test_a_qsub_timeout_is_not_retried(tmp_path: Path) -> None:
    cluster = ScriptedCluster({"qsub -terse": [CommandTimeout("qsub -terse: no answer within 60s"), SUBMITTED]})
    with pytest.raises(CommandTimeout, match="may or may not have been submitted"):
        cluster.submit(job(tmp_path))
    assert cluster.calls("qsub -terse") == 1


# -- statuses and kill: raise at once, the poll loop asks again next interval


def test_statuses_and_find_jobs_during_an_outage() -> None:
    down = (1, "", (DATA / "qstat_qmaster_unreachable.txt").read_text())
    cluster = ScriptedCluster({"qstat -u": down})
    with pytest.raises(ClusterUnavailable, match=r"qstat -xml failed \(exit 1\): error: commlib error"):
        cluster.statuses(["1"])
    with pytest.raises(ClusterUnavailable):
        cluster.find_jobs("task")
    assert cluster.calls("qstat -u") == 2


def test_kill_during_an_outage() -> None:
    down = (1, "", (DATA / "qdel_qmaster_unreachable.txt").read_text())
    cluster = ScriptedCluster({"qdel 5": down})
    with pytest.raises(ClusterUnavailable, match="qdel 5 failed"):
        cluster.kill(["5"])
    assert cluster.calls("qdel 5") == 1


def test_a_query_timeout_is_unavailable() -> None:
    cluster = ScriptedCluster({"qstat -u": CommandTimeout("qstat -u: no answer within 60s")})
    with pytest.raises(ClusterUnavailable, match="no answer within 60s"):
        cluster.statuses(["1"])


def test_queue_limits_wait_out_an_outage_too(tmp_path: Path) -> None:
    cluster = ScriptedCluster({**QCONF, "qconf -sq": [UNREACHABLE, QCONF["qconf -sq"]]})
    assert cluster.queue_limits("all.q").name == "all.q"
    down = ScriptedCluster({**QCONF, "qconf -sq": UNREACHABLE}, submit_retry_seconds=0.1)
    with pytest.raises(ClusterUnavailable, match="qmaster unreachable"):
        down.queue_limits("all.q")


# -- unknown queues


def test_unknown_queue_names_the_field_and_lists_the_queues(tmp_path: Path) -> None:
    cluster = ScriptedCluster({**QCONF, "qconf -sq": UNKNOWN_QUEUE}, limits_cache_dir=tmp_path)
    with pytest.raises(UnknownQueue) as exc:
        cluster.queue_limits("nosuch.q")
    assert isinstance(exc.value, ResourceError)
    assert str(exc.value) == "compute_resources.queue: Grid Engine has no queue 'nosuch.q'; its queues: all.q"
    assert list(tmp_path.iterdir()) == []  # nothing cached


@pytest.mark.parametrize(
    ("default_queue", "origin"),
    [("nosuch.q", "the default queue of the gridengine connection"), (None, "Grid Engine's stock default queue")],
)
def test_unknown_default_queue_says_where_the_name_came_from(default_queue: str | None, origin: str) -> None:
    answers = {**QCONF, "qconf -sq": UNKNOWN_QUEUE, "qconf -sql": (0, "long.q\n", "")}
    with pytest.raises(UnknownQueue, match=f"compute_resources.queue: .*\\({origin}.*its queues: long.q"):
        ScriptedCluster(answers, queue=default_queue).queue_limits(None)


def test_other_qconf_failures_of_a_queue_that_exists_stay_cluster_errors() -> None:
    denied = (1, "", "denied: access to queue configuration")
    cluster = ScriptedCluster({**QCONF, "qconf -sq": denied})
    with pytest.raises(ClusterError, match=r"queue 'all\.q': qconf -sq failed: denied") as exc:
        cluster.queue_limits("all.q")
    assert not isinstance(exc.value, ResourceError | ClusterUnavailable)
