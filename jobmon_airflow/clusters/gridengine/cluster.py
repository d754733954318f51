"""The Grid Engine backend: runs qsub, qstat, qdel, qalter and qconf (one call per request, argv lists, no shell) and
reads the accounting file. Command lines are built in :mod:`.commands`, answers read by :mod:`.parsers` and
:mod:`.accounting`. Sharing one ``qstat`` per interval among every watched job of a process is
:mod:`jobmon_airflow.watch`'s job (cluster-independent).

An unreachable qmaster (output that proves the request never got through) raises :class:`ClusterUnavailable`:
``submit`` first waits it out with back-off for ``submit_retry_seconds``, since nothing was submitted; ``statuses``
and ``kill`` raise at once (their caller polls again next interval).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import random
import re
import subprocess
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, replace
from pathlib import Path

from jobmon_airflow import telemetry
from jobmon_airflow.clusters.base import (
    ClusterError,
    ClusterUnavailable,
    ExitInfo,
    JobRequest,
    JobState,
    JobStatus,
    SubmissionError,
    UnknownQueue,
    log_file_paths,
)
from jobmon_airflow.clusters.gridengine.accounting import AccountingReader
from jobmon_airflow.clusters.gridengine.commands import (
    DEFAULT_COMMAND_TIMEOUT_S,
    DEFAULT_MEMORY_RESOURCE,
    DEFAULT_PE,
    DEFAULT_QUEUE,
    DEFAULT_SGE_CELL,
    DEFAULT_SGE_ROOT,
    check_job_id,
    job_script,
    plain_name,
    qsub_argv,
    safe_job_name,
    site_options,
)
from jobmon_airflow.clusters.gridengine.parsers import (
    array_status,
    communication_failed,
    parse_qconf_object,
    parse_qstat_j_error_reason,
    parse_qstat_xml,
    parse_qsub_output,
    parse_queue_limits,
    parse_queue_list,
    qalter_problems,
    qdel_problems,
    request_not_sent,
)
from jobmon_airflow.files import PRIVATE_DIR, make_private_dirs, write_json
from jobmon_airflow.resources import QueueLimits

log = logging.getLogger(__name__)

DEFAULT_SUBMIT_RETRY_S = 60.0


class CommandTimeout(ClusterError):
    """A Grid Engine command did not answer in time (for qsub: the job may or may not exist)."""


class GridEngineCluster:
    """The Grid Engine backend: qsub, qstat, qdel, qconf and the accounting file, each called once per request.

    ``memory_resource``, ``extra_resources`` and ``extra_qsub_args`` are the site's options (see
    :func:`~jobmon_airflow.clusters.gridengine.commands.site_options`; ValueError when one is refused).
    ``submit_retry_seconds`` bounds how long ``submit`` (and the ``qconf -sq`` of ``queue_limits``) waits out an
    unreachable qmaster before raising :class:`ClusterUnavailable`.
    """

    name = "gridengine"
    RETRY_FIRST_DELAY_S = 1.0  # back-off while the qmaster is unreachable: 1, 2, 4 … 15 s, each with jitter
    RETRY_MAX_DELAY_S = 15.0

    def __init__(
        self,
        *,
        sge_root: str = DEFAULT_SGE_ROOT,
        sge_cell: str = DEFAULT_SGE_CELL,
        queue: str | None = None,
        project: str | None = None,
        pe: str = DEFAULT_PE,
        command_timeout: float = DEFAULT_COMMAND_TIMEOUT_S,
        limits_ttl: float = 300.0,
        limits_cache_dir: Path | None = None,
        memory_resource: str = DEFAULT_MEMORY_RESOURCE,
        extra_resources: Mapping[str, str | int | float] | Sequence[str] | None = None,
        extra_qsub_args: Sequence[str] | None = None,
        submit_retry_seconds: float = DEFAULT_SUBMIT_RETRY_S,
    ) -> None:
        self.sge_root, self.sge_cell = sge_root, sge_cell
        self.queue, self.project, self.pe = queue, project, pe
        self.command_timeout = command_timeout
        self.limits_ttl = limits_ttl
        self.limits_cache_dir = limits_cache_dir
        self.site = site_options(memory_resource, extra_resources, extra_qsub_args)
        self.submit_retry_seconds = submit_retry_seconds
        self.accounting = AccountingReader(
            Path(sge_root) / sge_cell / "common" / "accounting", memory_resource=memory_resource
        )
        self._limits: dict[str, tuple[float, QueueLimits]] = {}
        self._limits_lock = threading.Lock()

    def __repr__(self) -> str:
        return f"GridEngineCluster(sge_root={self.sge_root!r}, sge_cell={self.sge_cell!r}, queue={self.queue!r})"

    # -- running commands

    def _run(self, argv: Sequence[str], stdin: str | None = None) -> subprocess.CompletedProcess[str]:
        env = {**os.environ, "SGE_ROOT": self.sge_root, "SGE_CELL": self.sge_cell}
        try:
            return telemetry.timed_command(  # latency and errors of qsub, qstat, qacct, qdel, qconf
                "gridengine", argv[0], subprocess.run,
                list(argv), input=stdin, capture_output=True, text=True, timeout=self.command_timeout, env=env,
            )  # fmt: skip
        except FileNotFoundError:
            raise ClusterError(f"{argv[0]}: not found on PATH; is the Grid Engine client installed?") from None
        except subprocess.TimeoutExpired:
            raise CommandTimeout(f"{' '.join(argv[:2])}: no answer within {self.command_timeout:g}s") from None

    @staticmethod
    def _output(proc: subprocess.CompletedProcess[str]) -> str:
        text = (proc.stderr.strip() + "\n" + proc.stdout.strip()).strip()
        return re.sub(r"\s*\n?Exiting\.\s*$", "", text) or "(no output)"

    def _run_patiently(self, argv: Sequence[str], stdin: str | None = None) -> subprocess.CompletedProcess[str]:
        """``_run``, again with bounded exponential back-off while the output proves the request never reached the
        qmaster (so running it again cannot do anything twice); ClusterUnavailable once the budget is spent."""
        started = time.monotonic()
        delay, tries = self.RETRY_FIRST_DELAY_S, 0
        while True:
            proc = self._run(argv, stdin)
            tries += 1
            if proc.returncode == 0 or proc.stdout.strip() or not request_not_sent(self._output(proc)):
                return proc
            remaining = self.submit_retry_seconds - (time.monotonic() - started)
            if remaining <= 0:
                raise ClusterUnavailable(
                    f"{' '.join(argv[:2])}: Grid Engine's qmaster unreachable, {tries} tries in "
                    f"{time.monotonic() - started:.0f}s (exit {proc.returncode}): {self._output(proc)}"
                )
            pause = min(delay * random.uniform(0.5, 1.0), remaining)
            log.warning("%s: qmaster unreachable, trying again in %.1fs: %s", argv[0], pause, self._output(proc))
            time.sleep(pause)
            delay = min(delay * 2, self.RETRY_MAX_DELAY_S)

    def _ask(self, argv: Sequence[str], what: str) -> subprocess.CompletedProcess[str]:
        """Run a query (qstat, qdel, qconf); ClusterUnavailable when it could not talk to the qmaster."""
        try:
            proc = self._run(argv)
        except CommandTimeout as exc:
            raise ClusterUnavailable(str(exc)) from None
        if proc.returncode != 0 and communication_failed(self._output(proc)):
            raise ClusterUnavailable(f"{what} failed (exit {proc.returncode}): {self._output(proc)}")
        return proc

    # -- submit

    def submit(self, job: JobRequest) -> str:
        """qsub the job: SubmissionError with Grid Engine's reason when it refuses; ClusterUnavailable when the
        qmaster stayed unreachable for ``submit_retry_seconds`` (the job was not submitted)."""
        argv = qsub_argv(job, queue=self.queue, project=self.project, pe=self.pe, site=self.site)
        script = job_script(job.argv, job.env)
        try:
            make_private_dirs(job.log_dir.absolute())
        except OSError as exc:
            raise SubmissionError(f"gridengine: cannot create log directory {job.log_dir}: {exc}") from exc
        try:
            proc = self._run_patiently(argv, stdin=script)
        except ClusterUnavailable as exc:
            raise ClusterUnavailable(f"{exc} (job {job.name!r} was not submitted)") from None
        except CommandTimeout as exc:
            # Unknown whether the job was created: the caller can look for it by its name.
            raise CommandTimeout(f"{exc} (job {job.name!r} may or may not have been submitted)") from None
        if proc.returncode != 0:
            if communication_failed(self._output(proc)):  # the request may have got through: do not retry
                raise ClusterError(
                    f"qsub: lost contact with Grid Engine's qmaster (exit {proc.returncode}): {self._output(proc)} "
                    f"(job {job.name!r} may or may not have been submitted)"
                )
            raise SubmissionError(f"qsub refused job {job.name!r} (exit {proc.returncode}): {self._output(proc)}")
        return parse_qsub_output(proc.stdout)

    # -- status

    def _listing(self) -> dict[str, JobStatus]:
        """Every job in the queue, from one ``qstat -u '*' -xml``."""
        proc = self._ask(["qstat", "-u", "*", "-xml"], "qstat -xml")
        if proc.returncode != 0:
            raise ClusterError(f"qstat -xml failed (exit {proc.returncode}): {self._output(proc)}")
        return parse_qstat_xml(proc.stdout)

    def statuses(self, job_ids: Iterable[str]) -> dict[str, JobStatus]:
        """One ``qstat -u '*' -xml`` for all ids (+ one ``qstat -j`` for Eqw reasons); unlisted ids are GONE."""
        ids = list(dict.fromkeys(job_ids))
        if not ids:
            return {}
        listed = self._listing()
        elements: dict[str, list[JobStatus]] = {}
        for job_id, status in listed.items():
            if "." in job_id:
                elements.setdefault(job_id.partition(".")[0], []).append(status)
        out = {i: listed.get(i) or array_status(i, elements.get(i, [])) for i in ids}
        errored = [i for i, s in out.items() if s.state is JobState.ERROR]
        if errored:
            reasons = self._error_reasons(errored)
            for i in errored:
                reason = reasons.get(i) or next((r for k, r in reasons.items() if k.startswith(f"{i}.")), None)
                out[i] = replace(out[i], reason=reason)
        return out

    def find_jobs(self, name: str) -> list[str]:
        """Jobs in the queue named ``name`` (as :func:`safe_job_name` makes it), from one ``qstat -xml``."""
        wanted = safe_job_name(name)
        return sorted({i.partition(".")[0] for i, st in self._listing().items() if st.name == wanted})

    def _error_reasons(self, job_ids: Sequence[str]) -> dict[str, str]:
        numbers = sorted({i.partition(".")[0] for i in job_ids}, key=int)
        try:
            proc = self._run(["qstat", "-j", ",".join(numbers)])
        except ClusterError as exc:
            log.warning("could not read the error reason of jobs %s: %s", ",".join(numbers), exc)
            return {}
        return parse_qstat_j_error_reason(proc.stdout)  # exit 1 when one of them just vanished: still parse

    # -- exit

    def exit_info(self, job_ids: Iterable[str]) -> dict[str, ExitInfo]:
        """Accounting records of finished jobs; ids without one are left out.

        A job deleted while pending never gets one; an Eqw job already has one (failed 28, never started) while
        it is still listed. Ask once the job has left qstat, and allow for the flush delay.
        """
        valid = []
        for job_id in job_ids:
            with contextlib.suppress(ValueError):
                check_job_id(job_id)
                valid.append(job_id)
        return self.accounting.lookup(valid) if valid else {}

    # -- kill

    def kill(self, job_ids: Sequence[str]) -> None:
        """One ``qdel`` for all ids ("12" or the array element "12.3"); jobs that are already gone are fine."""
        ids = list(dict.fromkeys(job_ids))
        for job_id in ids:
            check_job_id(job_id)  # an id like "-u" must not become a qdel option
        if not ids:
            return
        proc = self._ask(["qdel", *ids], f"qdel {' '.join(ids)}")
        if proc.returncode == 0:
            return
        output = proc.stdout + "\n" + proc.stderr
        if qdel_problems(output) or not output.strip():
            raise ClusterError(f"qdel {' '.join(ids)} failed (exit {proc.returncode}): {self._output(proc)}")

    def set_array_concurrency(self, limits: Mapping[str, int | None]) -> None:
        """``qalter -tc <n> <job>...``: one call per distinct limit, for every array job given it (Grid Engine
        applies it at its next scheduling run; ``-tc 0`` lifts the job's own limit). Jobs already gone are fine."""
        by_limit: dict[int, list[str]] = {}
        for job_id, limit in limits.items():
            number, element = check_job_id(job_id)  # an id like "-u" must not become a qalter option
            if element is not None:
                raise ValueError(f"set_array_concurrency: expected an array job id 'J', got an element {job_id!r}")
            if limit is not None and (not isinstance(limit, int) or isinstance(limit, bool) or limit < 1):
                raise ValueError(f"set_array_concurrency: expected a limit ≥ 1 or None for job {job_id}, got {limit!r}")
            by_limit.setdefault(limit or 0, []).append(number)
        for tc, ids in sorted(by_limit.items()):
            what = f"qalter -tc {tc} {' '.join(ids)}"
            proc = self._ask(["qalter", "-tc", str(tc), *ids], what)
            output = proc.stdout + "\n" + proc.stderr
            if proc.returncode != 0 and (qalter_problems(output) or not output.strip()):
                raise ClusterError(f"{what} failed (exit {proc.returncode}): {self._output(proc)}")

    # -- queues and logs

    def queue_limits(self, queue: str | None = None) -> QueueLimits:
        """Limits of a queue (see :func:`parse_queue_limits`), cached for ``limits_ttl`` seconds; UnknownQueue when
        Grid Engine has no such queue.

        Cached in this process and, given ``limits_cache_dir``, in a file shared with the host's other processes:
        every Airflow task runs in a process of its own, and the qconf calls would cost each one as much as its qsub.
        """
        name = queue or self.queue or DEFAULT_QUEUE
        with self._limits_lock:  # one qconf round per queue, whatever the number of threads asking
            cached = self._limits.get(name)
            if cached and time.monotonic() - cached[0] < self.limits_ttl:
                return cached[1]
            key = [self.sge_root, self.sge_cell, name, self.pe]  # the pe's slots cap max_cores
            found = self._read_limits_file(key)
            if found:
                age, limits = found
            else:
                age, limits = 0.0, self._query_limits(name, named=queue is not None)
                self._write_limits_file(key, limits)
            self._limits[name] = (time.monotonic() - age, limits)
            return limits

    def _query_limits(self, name: str, named: bool = True) -> QueueLimits:
        try:  # the first qconf of a submission: wait out an outage as qsub does
            proc = self._run_patiently(["qconf", "-sq", plain_name(name, "queue")])
        except CommandTimeout as exc:
            raise ClusterUnavailable(f"queue {name!r}: {exc}") from None
        if proc.returncode != 0:
            if communication_failed(self._output(proc)):
                raise ClusterUnavailable(f"queue {name!r}: qconf -sq failed: {self._output(proc)}")
            self._raise_if_unknown(name, named)
            raise ClusterError(f"queue {name!r}: qconf -sq failed: {self._output(proc)}")
        queue_conf = parse_qconf_object(proc.stdout)
        pe_text = None
        if self.pe in re.split(r"[\s,]+", queue_conf.get("pe_list", "")):
            pe_proc = self._run(["qconf", "-sp", self.pe])
            pe_text = pe_proc.stdout if pe_proc.returncode == 0 else None
        return parse_queue_limits(proc.stdout, pe_text=pe_text, exechost_texts=self._exechost_texts(queue_conf))

    def _raise_if_unknown(self, name: str, named: bool) -> None:
        """UnknownQueue, listing the queues there are (``qconf -sql``), when ``name`` is not one of them."""
        proc = self._ask(["qconf", "-sql"], "qconf -sql")
        queues = parse_queue_list(proc.stdout) if proc.returncode == 0 else None
        if queues is None or name in queues:
            return
        if named:
            origin = ""
        elif self.queue:
            origin = " (the default queue of the gridengine connection)"
        else:
            origin = " (Grid Engine's stock default queue: name one in compute_resources.queue)"
        raise UnknownQueue(
            f"compute_resources.queue: Grid Engine has no queue {name!r}{origin}; "
            f"its queues: {', '.join(queues) or '(none)'}"
        )

    def _limits_file(self, key: list[str]) -> Path | None:
        if self.limits_cache_dir is None:
            return None
        digest = hashlib.sha256(json.dumps(key).encode()).hexdigest()[:20]
        return self.limits_cache_dir / f"queue-limits-{digest}.json"

    def _read_limits_file(self, key: list[str]) -> tuple[float, QueueLimits] | None:
        """(age in seconds, limits) from the cache file, or None when it is missing, stale or unreadable."""
        path = self._limits_file(key)
        if path is None:
            return None
        try:
            data = json.loads(path.read_text())
            age = time.time() - float(data["written"])
            limits = QueueLimits(**data["limits"])
            if data["key"] != key or asdict(limits) != data["limits"] or not _plausible(limits):
                raise ValueError("not a cache entry for this queue")
        except FileNotFoundError:
            return None
        except (OSError, ValueError, TypeError, KeyError) as exc:
            log.debug("ignoring queue limits cache %s: %s", path, exc)
            return None
        return (age, limits) if 0 <= age < self.limits_ttl else None

    def _write_limits_file(self, key: list[str], limits: QueueLimits) -> None:
        """Replace the cache file atomically; a failure is only logged (it must not fail a submission)."""
        path = self._limits_file(key)
        if path is None:
            return
        try:
            path.parent.mkdir(mode=PRIVATE_DIR, parents=True, exist_ok=True)
            write_json(path, {"key": key, "written": time.time(), "limits": asdict(limits)})
        except (OSError, ValueError, TypeError) as exc:
            log.debug("could not write queue limits cache %s: %s", path, exc)

    def _exechost_texts(self, queue_conf: Mapping[str, str], max_hosts: int = 32) -> list[str]:
        """``qconf -se`` of the queue's hosts (host groups resolved), or none for a queue of many hosts."""
        hosts: list[str] = []
        for entry in re.split(r"[\s,]+", queue_conf.get("hostlist", "")):
            if entry.startswith("@"):
                proc = self._run(["qconf", "-shgrp_resolved", entry])
                hosts += proc.stdout.split() if proc.returncode == 0 else []
            elif entry and entry != "NONE":
                hosts.append(entry)
        if len(hosts) > max_hosts:
            log.debug("queue has %d hosts: not reading their h_vmem capacity", len(hosts))
            return []
        texts = []
        for host in hosts:
            proc = self._run(["qconf", "-se", host])
            if proc.returncode == 0:
                texts.append(proc.stdout)
        return texts

    def log_paths(self, job: JobRequest, job_id: str, element: int | None = None) -> tuple[Path, Path]:
        return log_file_paths(job.log_dir.absolute(), safe_job_name(job.name), job_id, element)


def _plausible(limits: QueueLimits) -> bool:
    """Whether limits read back from JSON have the types :func:`parse_queue_limits` gives them."""
    numbers = [(limits.max_cores, int), (limits.max_memory, float), (limits.max_runtime, int)]
    return isinstance(limits.name, str) and all(v is None or type(v) is t for v, t in numbers)
