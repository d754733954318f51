"""Grid Engine command lines and parsers, on outputs recorded from the real cluster (``tests/data/gridengine``).

The recordings come from ``tests/data/gridengine/record.sh`` run against the one-host cluster that
``scripts/setup_services.sh`` stands up; job numbers are looked up by job name so a re-recording needs no edits.
"""

from __future__ import annotations

import json
import subprocess
import sys
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from jobmon_airflow.clusters.base import ClusterError, ExitKind, JobRequest, JobState, SubmissionError
from jobmon_airflow.clusters.gridengine import (
    AccountingReader,
    GridEngineCluster,
    classify_exit,
    decode_state,
    expand_task_ranges,
    job_script,
    parse_accounting,
    parse_accounting_line,
    parse_category,
    parse_qconf_object,
    parse_qstat_j_error_reason,
    parse_qstat_xml,
    parse_qsub_output,
    parse_queue_limits,
    qsub_argv,
    safe_job_name,
)
from jobmon_airflow.resources import Resources

DATA = Path(__file__).resolve().parents[2] / "data" / "gridengine"
GIB = 1024**3


def data(name: str) -> str:
    return (DATA / name).read_text()


def numbers_by_name(xml_text: str) -> dict[str, str]:
    """Job name → job number in a recorded qstat -xml document."""
    return {
        e.findtext("JB_name") or "": e.findtext("JB_job_number") or "" for e in ET.fromstring(xml_text).iter("job_list")
    }


def only(records: dict[str, Any]) -> Any:
    assert len(records) == 1, records
    return next(iter(records.values()))


# --------------------------------------------------------------------------------------------------------------
# qsub


def test_qsub_terse_single_and_array() -> None:
    single, array = data("qsub_terse_single.txt"), data("qsub_terse_array.txt")
    assert parse_qsub_output(single) == single.strip()
    assert array.strip().endswith(".1-10:1")
    assert parse_qsub_output(array) == array.split(".")[0]


@pytest.mark.parametrize("text", ["", "\n", 'Your job 12 ("x") has been submitted', "12.x", "abc", "-1"])
def test_qsub_output_garbage_names_the_text(text: str) -> None:
    with pytest.raises(ClusterError, match="qsub -terse: expected a job id") as exc:
        parse_qsub_output(text)
    assert repr(text) in str(exc.value)


def request(tmp_path: Path, **kwargs: Any) -> JobRequest:
    defaults: dict[str, Any] = {"name": "task", "argv": ["/bin/true"], "resources": Resources(), "log_dir": tmp_path}
    return JobRequest(**{**defaults, **kwargs})


def option(argv: Sequence[str], flag: str) -> list[str]:
    return [argv[i + 1] for i, word in enumerate(argv) if word == flag]


def test_qsub_argv_single_job(tmp_path: Path) -> None:
    argv = qsub_argv(request(tmp_path, resources=Resources(cores=1, memory=1.5, runtime=90)))
    assert argv[:2] == ["qsub", "-terse"]
    assert option(argv, "-b") == ["n"]  # never -b y: see the module docstring
    assert option(argv, "-C") == [""]  # no #$ directive scanning of the script
    assert option(argv, "-S") == ["/bin/sh"]
    assert option(argv, "-o") == option(argv, "-e") == [f"{tmp_path}/"]
    assert option(argv, "-wd") == [str(tmp_path)]
    assert option(argv, "-w") == ["e"]
    assert option(argv, "-l") == ["h_vmem=1536M", "h_rt=0:01:30"]
    for absent in ("-pe", "-q", "-P", "-t", "-tc", "-ac", "-cwd", "-V", "-v"):
        assert absent not in argv
    assert "/bin/true" not in argv  # the command goes in the script on stdin


def test_qsub_argv_memory_is_booked_per_slot(tmp_path: Path) -> None:
    argv = qsub_argv(request(tmp_path, resources=Resources(cores=2, memory=2, runtime=3600)))
    assert option(argv, "-l") == ["h_vmem=1024M", "h_rt=1:00:00"]
    assert option(argv, "-pe") == ["smp"] and argv[argv.index("-pe") + 2] == "2"


def test_qsub_argv_queue_project_array(tmp_path: Path) -> None:
    job = request(tmp_path, resources=Resources(queue="long.q"), array_length=5, max_concurrent=2)
    argv = qsub_argv(job, queue="all.q", project="proj_a")
    assert option(argv, "-q") == ["long.q"]  # the job's own queue wins over the cluster default
    assert option(argv, "-P") == ["proj_a"]
    assert option(argv, "-t") == ["1-5"] and option(argv, "-tc") == ["2"]
    assert option(qsub_argv(request(tmp_path)), "-q") == []


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"log_dir": Path("/tmp/a:b")}, "log_dir: Grid Engine would misread ':'"),
        ({"log_dir": Path("/tmp/$HOME")}, "would misread '\\$'"),
        ({"max_concurrent": 2}, "max_concurrent: only meaningful for an array"),
        ({"array_length": 0}, "array_length: expected at least 1"),
        ({"resources": Resources(queue="all.q")}, None),
    ],
)
def test_qsub_argv_rejects_what_qsub_would_misread(tmp_path: Path, kwargs: dict[str, Any], message: str | None) -> None:
    if message is None:
        assert qsub_argv(request(tmp_path, **kwargs))
        return
    with pytest.raises(SubmissionError, match=message):
        qsub_argv(request(tmp_path, **kwargs))


def test_qsub_argv_rejects_an_option_as_default_queue(tmp_path: Path) -> None:
    with pytest.raises(SubmissionError, match="queue: expected a plain name"):
        qsub_argv(request(tmp_path), queue="-l h_rt=1")


@pytest.mark.parametrize(
    ("name", "safe"),
    [
        ("task_1.a-b", "task_1.a-b"),
        ("my task/x", "my_task_x"),
        ("-N evil -q x", "j-N_evil_-q_x"),
        ("1st", "j1st"),
        ("", "job"),
        ("ünï", "_n_"),
        ("x" * 200, "x" * 64),
    ],
)
def test_safe_job_name(name: str, safe: str) -> None:
    assert safe_job_name(name) == safe


ARGV_WITH_EVERYTHING = [
    "plain",
    "with space",
    "it's",
    'say "hi"',
    "a;b",
    "$(touch pwned)",
    "`id`",
    "line1\nline2",
    "-x",
    "*",
    "$HOME",
    "",
    "x\n#$ -l h_rt=0:0:1\n",
    "ünï",
]


def test_job_script_runs_argv_exactly_under_sh(tmp_path: Path) -> None:
    """Without Grid Engine: /bin/sh runs the generated script and the program sees the argv unchanged."""
    out = tmp_path / "argv.json"
    code = "import json, os, sys; open(sys.argv[1], 'w').write(json.dumps([sys.argv[2:], os.environ['FOO']]))"
    script = job_script([sys.executable, "-c", code, str(out), *ARGV_WITH_EVERYTHING], {"FOO": "a,b c\n$x"})
    assert script.startswith("#!/bin/sh\n")
    subprocess.run(["/bin/sh", "-s"], input=script, text=True, check=True, cwd=tmp_path)
    assert json.loads(out.read_text()) == [ARGV_WITH_EVERYTHING, "a,b c\n$x"]
    assert not (tmp_path / "pwned").exists()


@pytest.mark.parametrize(
    ("argv", "env", "message"),
    [
        ([], {}, "empty argv"),
        (["a\0b"], {}, "argv\\[0\\]: expected a string without NUL"),
        (["x"], {"1BAD": "v"}, "job env: expected NAME=value"),
        (["x"], {"A-B": "v"}, "job env"),
    ],
)
def test_job_script_rejects_unrepresentable_input(argv: list[str], env: dict[str, str], message: str) -> None:
    with pytest.raises(SubmissionError, match=message):
        job_script(argv, env)


def test_log_file_paths_follow_grid_engine_names(tmp_path: Path) -> None:
    cluster = GridEngineCluster()
    assert cluster.log_paths(request(tmp_path, name="my task"), "12") == (
        tmp_path / "my_task.o12",
        tmp_path / "my_task.e12",
    )
    assert cluster.log_paths(request(tmp_path, name="a"), "12", 3) == (tmp_path / "a.o12.3", tmp_path / "a.e12.3")


# --------------------------------------------------------------------------------------------------------------
# qstat -xml


def test_qstat_mixed_running_pending_array_eqw_hold() -> None:
    text = data("qstat_mixed.xml")
    n = numbers_by_name(text)
    statuses = parse_qstat_xml(text)
    arr, eqw, eqwarr, gaps = n["arr"], n["eqw"], n["eqwarr"], n["gaps"]
    expected = {
        # two running elements, each its own job_list; the pending range 3-5:1 expanded
        f"{arr}.1": (JobState.RUNNING, "r"),
        f"{arr}.2": (JobState.RUNNING, "r"),
        f"{arr}.3": (JobState.PENDING, "qw"),
        f"{arr}.4": (JobState.PENDING, "qw"),
        f"{arr}.5": (JobState.PENDING, "qw"),
        eqw: (JobState.ERROR, "Eqw"),
        f"{eqwarr}.1": (JobState.ERROR, "Eqw"),  # tasks "1,2"
        f"{eqwarr}.2": (JobState.ERROR, "Eqw"),
        f"{gaps}.1": (JobState.PENDING, "hqw"),  # tasks 2 and 4 deleted: "1-5:2"
        f"{gaps}.3": (JobState.PENDING, "hqw"),
        f"{gaps}.5": (JobState.PENDING, "hqw"),
        n["pend"]: (JobState.PENDING, "qw"),
        n["held"]: (JobState.PENDING, "hqw"),
        n["pe2"]: (JobState.PENDING, "qw"),
    }
    assert {k: (s.state, s.raw) for k, s in statuses.items()} == expected
    assert all(s.job_id == k for k, s in statuses.items())


def test_qstat_suspended_and_deleting() -> None:
    suspended = parse_qstat_xml(data("qstat_suspended.xml"))
    arr = numbers_by_name(data("qstat_suspended.xml"))["arr"]
    assert (suspended[f"{arr}.1"].state, suspended[f"{arr}.1"].raw) == (JobState.SUSPENDED, "s")
    assert suspended[f"{arr}.2"].state is JobState.RUNNING
    # Caught right after qdel of the array: its running elements are "dr"/"ds" (one may have left already).
    deleting = [s for k, s in parse_qstat_xml(data("qstat_deleting.xml")).items() if k.startswith(f"{arr}.")]
    assert deleting
    assert all(s.raw in ("dr", "ds") and s.state is JobState.DELETING for s in deleting)


def test_qstat_empty() -> None:
    assert parse_qstat_xml(data("qstat_empty.xml")) == {}


@pytest.mark.parametrize(
    ("raw", "state"),
    [
        ("r", JobState.RUNNING),
        ("t", JobState.RUNNING),
        ("Rr", JobState.RUNNING),
        ("hr", JobState.RUNNING),
        ("qw", JobState.PENDING),
        ("hqw", JobState.PENDING),
        ("Eqw", JobState.ERROR),
        ("dr", JobState.DELETING),
        ("dt", JobState.DELETING),
        ("s", JobState.SUSPENDED),
        ("S", JobState.SUSPENDED),
        ("T", JobState.SUSPENDED),
        ("", JobState.UNKNOWN),
        ("z", JobState.UNKNOWN),
        ("rz", JobState.UNKNOWN),  # one unknown letter: do not guess
        ("Ä", JobState.UNKNOWN),
    ],
)
def test_decode_state_letter_by_letter(raw: str, state: JobState) -> None:
    assert decode_state(raw) is state


def test_qstat_unknown_state_letter_is_unknown_not_a_crash() -> None:
    text = data("qstat_mixed.xml").replace("<state>hqw</state>", "<state>hXqw</state>")
    statuses = parse_qstat_xml(text)
    held = numbers_by_name(text)["held"]
    assert (statuses[held].state, statuses[held].raw) == (JobState.UNKNOWN, "hXqw")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "qstat -xml: unparsable XML"),
        ("error: commlib error: got select error (Connection refused)", "unparsable XML"),
        (data("qstat_mixed.xml")[: len(data("qstat_mixed.xml")) // 2], "unparsable XML"),
        ("<detailed_job_info><djob_info/></detailed_job_info>", "expected a <job_info> document"),
        ("<job_info><job_info><job_list><state>r</state></job_list></job_info></job_info>", "numeric JB_job_number"),
        (
            "<job_info><job_info><job_list><JB_job_number>5</JB_job_number><tasks>3-x</tasks>"
            "</job_list></job_info></job_info>",
            "job 5: expected task ranges",
        ),
    ],
)
def test_qstat_garbage_is_a_clear_cluster_error(text: str, message: str) -> None:
    with pytest.raises(ClusterError, match=message):
        parse_qstat_xml(text)


@pytest.mark.parametrize(
    ("text", "tasks"),
    [("7", [7]), ("3-5:1", [3, 4, 5]), ("1-5:2", [1, 3, 5]), ("1,3", [1, 3]), ("1,4-5:1", [1, 4, 5])],
)
def test_expand_task_ranges(text: str, tasks: list[int]) -> None:
    assert expand_task_ranges(text) == tasks


@pytest.mark.parametrize("text", ["", "a", "5-3:1", "1-5:0", "1-"])
def test_expand_task_ranges_rejects_garbage(text: str) -> None:
    with pytest.raises(ValueError, match=r"task ranges|first ≤ last"):
        expand_task_ranges(text)


def test_qstat_j_error_reasons_of_a_job_and_array_tasks() -> None:
    text = data("qstat_j_eqw.txt")
    n = numbers_by_name(data("qstat_mixed.xml"))
    reasons = parse_qstat_j_error_reason(text)
    assert set(reasons) == {n["eqw"], f"{n['eqwarr']}.1", f"{n['eqwarr']}.2"}
    assert all("can't chdir to /nonexistent/dir: No such file or directory" in r for r in reasons.values())
    assert parse_qstat_j_error_reason("") == {}
    assert parse_qstat_j_error_reason("Following jobs do not exist:\n99") == {}


# --------------------------------------------------------------------------------------------------------------
# accounting


def test_accounting_done() -> None:
    line = data("accounting_done.txt")
    info = parse_accounting_line(line)
    fields = line.split(":")
    assert info.job_id == fields[5]
    assert (info.kind, info.exit_status, info.resource) == (ExitKind.DONE, 0, None)
    assert info.maxrss_bytes == round(float(fields[16]) * 1024)  # field 17 is KB
    assert info.maxvmem_bytes == round(float(fields[42]))
    assert info.hostname == fields[1]
    assert (info.start_time, info.end_time) == (float(fields[9]), float(fields[10]))
    assert (info.slots, info.granted_pe) == (1, None)


def test_accounting_exit_3_is_an_error() -> None:
    info = parse_accounting_line(data("accounting_exit3.txt"))
    assert (info.kind, info.exit_status, info.reason) == (ExitKind.ERROR, 3, "exit status 3")


def test_accounting_h_vmem_kill_is_a_memory_resource_kill() -> None:
    info = parse_accounting_line(data("accounting_h_vmem_kill.txt"))
    assert (info.kind, info.resource, info.exit_status) == (ExitKind.RESOURCE_KILL, "memory", 137)
    assert "h_vmem=200.0M" in info.reason and "failed 37" in info.reason
    assert info.maxvmem_bytes is not None and info.maxvmem_bytes > 200 * 1024**2


def test_accounting_h_rt_kill_is_a_runtime_resource_kill() -> None:
    info = parse_accounting_line(data("accounting_h_rt_kill.txt"))
    assert (info.kind, info.resource, info.exit_status) == (ExitKind.RESOURCE_KILL, "runtime", 137)
    assert info.reason.startswith("exceeded runtime h_rt=3s")


def test_accounting_qdel_of_a_running_job_is_deleted() -> None:
    info = parse_accounting_line(data("accounting_qdel_running.txt"))
    assert (info.kind, info.exit_status) == (ExitKind.DELETED, 137)
    assert "failed 100: assumedly after job" in info.reason


def test_accounting_pe_smp2() -> None:
    info = parse_accounting_line(data("accounting_pe_smp2.txt"))
    assert (info.kind, info.slots, info.granted_pe) == (ExitKind.DONE, 2, "smp")
    assert data("pe_smp2_job_stdout.txt").split()[:2] == ["2", "smp"]  # the job saw NSLOTS=2, PE=smp


def test_accounting_of_an_eqw_job_that_never_started() -> None:
    info = parse_accounting_line(data("accounting_eqw_deleted.txt"))
    assert (info.kind, info.exit_status, info.start_time, info.end_time) == (ExitKind.ERROR, 0, None, None)
    assert info.reason == "Grid Engine failed 28: changing into working directory (exit status 0)"


def test_accounting_array_elements() -> None:
    records = parse_accounting(data("accounting_array.txt"))
    number = data("accounting_array.txt").split(":")[5]
    assert sorted(records) == [f"{number}.1", f"{number}.2", f"{number}.3"]
    assert {r.kind for r in records.values()} == {ExitKind.DONE}


def test_accounting_skips_comments_and_a_later_record_wins() -> None:
    done, exit3 = data("accounting_done.txt").strip(), data("accounting_exit3.txt").strip()
    rerun = exit3.split(":")
    rerun[5] = done.split(":")[5]  # the same job number, recorded again later (e.g. a rescheduled job)
    text = f"# Version: 8.1.9\n# DO NOT MODIFY THIS FILE MANUALLY!\n\n{done}\n{':'.join(rerun)}\n"
    assert only(parse_accounting(text)).exit_status == 3


def test_accounting_category_with_colons_keeps_fields_in_place() -> None:
    parts = data("accounting_h_rt_kill.txt").strip().split(":")
    parts[39] = "-l h_rt=3 -ac run=2026-01-01T00:00:00"  # 3 extra ':' inside the category
    info = parse_accounting_line(":".join(parts))
    assert (info.kind, info.resource, info.maxvmem_bytes) == (
        ExitKind.RESOURCE_KILL,
        "runtime",
        round(float(parts[42])),
    )


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("", "expected 45 ':'-separated fields, got 1"),
        ("garbage", "expected 45"),
        (data("accounting_done.txt")[:100], "expected 45"),
        (data("accounting_done.txt").replace(":done:", ":done:x", 1), "numeric job_number"),
    ],
)
def test_accounting_garbage_is_a_clear_cluster_error(line: str, message: str) -> None:
    with pytest.raises(ClusterError, match=message):
        parse_accounting_line(line)


def test_accounting_text_error_names_the_line() -> None:
    with pytest.raises(ClusterError, match="accounting line 2: accounting: expected 45"):
        parse_accounting(data("accounting_done.txt") + "truncated:line\n")


def with_field(line: str, index: int, value: str) -> str:
    """The recorded line with 0-based field ``index`` set to ``value``."""
    parts = line.strip().split(":")
    parts[index] = value
    return ":".join(parts)


@pytest.mark.parametrize(
    ("index", "field", "value", "message"),
    [
        (42, "maxvmem", "nan", "not a finite number: 'nan'"),
        (42, "maxvmem", "inf", "not a finite number: 'inf'"),
        (16, "ru_maxrss", "1e400", "not a finite number: '1e400'"),
        (16, "ru_maxrss", "1e300", "too large for a byte count"),  # KB: past 2**63 bytes
        (42, "maxvmem", str(2**63), "too large for a byte count"),
        (13, "ru_wallclock", "nan", "not a finite number"),
    ],
)
def test_accounting_non_finite_or_overflowing_numbers_are_a_cluster_error_naming_the_field(
    index: int, field: str, value: str, message: str
) -> None:
    """Non-finite usage passed, then round() raised ValueError/OverflowError, which AccountingReader does not catch:
    one such line in the scanned window failed every lookup."""
    with pytest.raises(ClusterError, match=f"^accounting: field {field} is {message}"):
        parse_accounting_line(with_field(data("accounting_done.txt"), index, value))


def test_accounting_reader_skips_a_line_with_non_finite_usage(tmp_path: Path) -> None:
    done = data("accounting_done.txt").strip()
    bad = with_field(data("accounting_exit3.txt"), 42, "nan")
    path = tmp_path / "accounting"
    path.write_text(f"{done}\n{with_field(bad, 5, done.split(':')[5])}\n")  # the same job, a broken later record
    assert AccountingReader(path).lookup([done.split(":")[5]])[done.split(":")[5]].kind is ExitKind.DONE


@pytest.mark.parametrize("brk", ["\v", "\f", "\x1c", "\x1d", "\x1e", "\x85", "\u2028", "\u2029"])
def test_accounting_records_end_at_newline_only(brk: str) -> None:
    """A job name holding a line break other than '\\n' (str.splitlines() broke there) keeps its record whole."""
    line = with_field(data("accounting_done.txt"), 4, f"a{brk}b")
    (info,) = parse_accounting(f"# Version: 8.1.9\n{line}\n").values()
    assert info == parse_accounting_line(line)
    assert parse_accounting(f"# Version: 8.1.9\r\n{line}\r\n") == {info.job_id: info}  # a trailing '\\r' goes


def test_parse_category() -> None:
    assert parse_category("NONE") == {}
    assert parse_category("-l h_rt=3,h_vmem=200M -pe smp 2") == {"h_rt": "3", "h_vmem": "200M"}
    assert parse_category("-l h_vmem=1G -soft -l h_rt=9 -hard -l h_rt=5") == {"h_vmem": "1G", "h_rt": "5"}


G200 = 200 * 1024**2


@pytest.mark.parametrize(
    ("failed", "exit_status", "evidence", "expected"),
    [
        (0, 0, {}, (ExitKind.DONE, None)),
        (0, 3, {}, (ExitKind.ERROR, None)),
        (0, 137, {}, (ExitKind.RESOURCE_KILL, "memory")),  # OOM killer, as Jobmon
        (0, 247, {}, (ExitKind.RESOURCE_KILL, "memory")),
        (0, 152, {}, (ExitKind.ERROR, None)),
        (37, 137, {"wallclock_s": 4, "h_rt_s": 3}, (ExitKind.RESOURCE_KILL, "runtime")),
        (37, 137, {"wallclock_s": 2, "h_rt_s": 3}, (ExitKind.RESOURCE_KILL, "runtime")),  # within 1 s
        (37, 137, {"wallclock_s": 1, "h_rt_s": 3}, (ExitKind.RESOURCE_KILL, "memory")),
        (37, 137, {"wallclock_s": 1}, (ExitKind.RESOURCE_KILL, "memory")),
        ("37  : qmaster enforced h_rt, h_cpu, or h_vmem limit", 137, {}, (ExitKind.RESOURCE_KILL, "memory")),
        (100, 137, {"wallclock_s": 2}, (ExitKind.DELETED, None)),
        (100, 137, {"wallclock_s": 60, "h_rt_s": 60}, (ExitKind.RESOURCE_KILL, "runtime")),
        (100, 137, {"maxvmem_bytes": G200, "h_vmem_bytes": G200}, (ExitKind.RESOURCE_KILL, "memory")),
        (100, 137, {"maxvmem_bytes": G200 // 2, "h_vmem_bytes": G200}, (ExitKind.DELETED, None)),
        (100, 1, {}, (ExitKind.ERROR, None)),
        (28, 0, {}, (ExitKind.ERROR, None)),
        (99, 0, {}, (ExitKind.ERROR, None)),
    ],
)
def test_classify_exit(
    failed: int | str, exit_status: int, evidence: dict[str, Any], expected: tuple[Any, ...]
) -> None:
    kind, resource, reason = classify_exit(failed, exit_status, **evidence)
    assert (kind, resource) == expected
    assert reason


def test_classify_exit_reasons_carry_grid_engine_text() -> None:
    assert "changing into working directory" in classify_exit(28, 0)[2]
    assert "unknown failure code" in classify_exit(99, 0)[2]
    with pytest.raises(ClusterError, match="numeric 'failed' code"):
        classify_exit("x", 0)


# --------------------------------------------------------------------------------------------------------------
# qconf


def test_queue_limits_of_the_recorded_queue_pe_and_host() -> None:
    mem_kb = int(parse_qconf_object(data("qconf_se_host.txt"))["complex_values"].split("=")[1].rstrip("K"))
    limits = parse_queue_limits(
        data("qconf_sq_all.q.txt"), pe_text=data("qconf_sp_smp.txt"), exechost_texts=[data("qconf_se_host.txt")]
    )
    assert (limits.name, limits.max_cores, limits.max_runtime) == ("all.q", 2, None)
    assert limits.max_memory == pytest.approx(mem_kb / 1024**2)  # the host's h_vmem capacity (queue: INFINITY)
    assert parse_queue_limits(data("qconf_sq_all.q.txt")).max_memory is None


def test_queue_limits_with_host_overrides_and_finite_limits() -> None:
    text = (
        data("qconf_sq_all.q.txt")
        .replace("slots                 2", "slots                 1,[vm=4], \\\n                      [other=8]")
        .replace("h_rt                  INFINITY", "h_rt                  48:00:00")
        .replace("h_vmem                INFINITY", "h_vmem                2G")
    )
    assert parse_queue_limits(text).max_cores == 8
    assert parse_queue_limits(text).max_runtime == 48 * 3600
    assert parse_queue_limits(text).max_memory == 16  # 2G per slot × 8 slots
    pe = data("qconf_sp_smp.txt").replace("9999", "4")
    assert parse_queue_limits(text, pe_text=pe).max_cores == 4


@pytest.mark.parametrize(
    ("text", "message"),
    [("", "expected a queue with a qname line"), ("qname all.q\nslots many\n", "unreadable slots value 'many'")],
)
def test_queue_limits_garbage(text: str, message: str) -> None:
    with pytest.raises(ClusterError, match=message):
        parse_queue_limits(text)


@pytest.mark.parametrize(
    ("attribute", "value"),
    [("slots", "9" * 309), ("h_rt", "9" * 309), ("h_rt", "9" * 5000), ("h_vmem", "9" * 400 + "G")],
)
def test_queue_limits_numbers_past_the_float_range_are_a_cluster_error(attribute: str, value: str) -> None:
    """Were OverflowError (float(int(...)) in _largest, float() in parse_runtime), not the documented ClusterError."""
    with pytest.raises(ClusterError, match=f"^qconf: unreadable {attribute} value"):
        parse_queue_limits(f"qname all.q\n{attribute} {value}\n")


def test_queue_limits_are_not_held_to_the_bounds_of_a_request() -> None:
    """A queue may allow more than a job may ask for (10 years, 1 PiB): its limits are read as stated."""
    limits = parse_queue_limits("qname long.q\nslots 4\nh_rt 1000000:00:00\nh_vmem 2000000G\n")
    assert (limits.max_cores, limits.max_runtime, limits.max_memory) == (4, 3_600_000_000, 8_000_000)


# --------------------------------------------------------------------------------------------------------------
# AccountingReader on a file that grows


def test_accounting_reader_reads_new_bytes_only_and_waits_for_whole_lines(tmp_path: Path) -> None:
    path = tmp_path / "accounting"
    done, exit3 = data("accounting_done.txt").strip(), data("accounting_exit3.txt").strip()
    done_id, exit3_id = done.split(":")[5], exit3.split(":")[5]
    reader = AccountingReader(path)
    assert reader.lookup([done_id]) == {}  # no file yet: no record, no error
    path.write_text(f"# Version: 8.1.9\n{done}\n{exit3[:50]}")  # the last line is still being written
    found = reader.lookup([done_id, exit3_id])
    assert set(found) == {done_id}
    with path.open("a") as f:
        f.write(exit3[50:] + "\n")
    assert reader.lookup([exit3_id])[exit3_id].exit_status == 3
    assert reader.lookup([done_id])[done_id].kind is ExitKind.DONE  # remembered


def test_accounting_reader_scan_budget_and_rotation(tmp_path: Path) -> None:
    path = tmp_path / "accounting"
    done, exit3 = data("accounting_done.txt").strip(), data("accounting_exit3.txt").strip()
    done_id, exit3_id = done.split(":")[5], exit3.split(":")[5]
    path.write_text(f"{done}\n" + "# filler\n" * 1000)
    reader = AccountingReader(path, max_scan_bytes=2000)
    reader.CHUNK = 256  # many chunks: lines cross chunk borders
    assert reader.lookup([done_id]) == {}  # beyond the backward budget for a first-time id
    path.write_text(f"{exit3}\n")  # rotated: smaller than what was read
    assert set(reader.lookup([exit3_id, done_id])) == {exit3_id}


# --------------------------------------------------------------------------------------------------------------
# GridEngineCluster logic over recorded command output (no Grid Engine needed)


class RecordedCluster(GridEngineCluster):
    """Answers commands from recordings and remembers them."""

    def __init__(self, answers: dict[str, tuple[int, str, str]]) -> None:
        super().__init__()
        self.answers = answers
        self.commands: list[list[str]] = []

    def _run(self, argv: Sequence[str], stdin: str | None = None) -> subprocess.CompletedProcess[str]:
        self.commands.append(list(argv))
        rc, out, err = self.answers[" ".join(argv[:2])]
        return subprocess.CompletedProcess(list(argv), rc, out, err)


def test_statuses_one_qstat_plus_qstat_j_for_errors_only() -> None:
    xml = data("qstat_mixed.xml")
    n = numbers_by_name(xml)
    cluster = RecordedCluster({"qstat -u": (0, xml, ""), "qstat -j": (0, data("qstat_j_eqw.txt"), "")})
    ids = [f"{n['arr']}.1", f"{n['arr']}.4", n["eqw"], f"{n['eqwarr']}.2", n["arr"], "999999", "999999.1"]
    out = cluster.statuses(ids)
    assert cluster.commands == [["qstat", "-u", "*", "-xml"], ["qstat", "-j", f"{n['eqw']},{n['eqwarr']}"]]
    assert out[f"{n['arr']}.1"].state is JobState.RUNNING
    assert out[f"{n['arr']}.4"].state is JobState.PENDING
    assert out[n["arr"]].state is JobState.RUNNING  # the array as a whole: its most pressing element
    assert out["999999"].state is out["999999.1"].state is JobState.GONE
    assert "can't chdir" in (out[n["eqw"]].reason or "")
    assert "can't chdir" in (out[f"{n['eqwarr']}.2"].reason or "")


def test_statuses_without_errors_makes_one_call_and_none_for_no_ids() -> None:
    cluster = RecordedCluster({"qstat -u": (0, data("qstat_empty.xml"), "")})
    assert cluster.statuses([]) == {}
    assert cluster.commands == []
    assert cluster.statuses(["5"])["5"].state is JobState.GONE
    assert len(cluster.commands) == 1


def test_statuses_qstat_failure_is_a_cluster_error() -> None:
    err = 'error: commlib error: access denied (client IP resolved to host name "localhost")'
    cluster = RecordedCluster({"qstat -u": (1, "", err)})
    with pytest.raises(ClusterError, match="qstat -xml failed \\(exit 1\\): error: commlib error: access denied"):
        cluster.statuses(["1"])


def test_submit_rejection_carries_grid_engine_reason(tmp_path: Path) -> None:
    cluster = RecordedCluster({"qsub -terse": (1, "", data("qsub_rejected_no_suitable_queues.txt"))})
    with pytest.raises(SubmissionError, match=r"qsub refused job 'task' \(exit 1\): .*no suitable queues$"):
        cluster.submit(request(tmp_path / "logs"))
    assert (tmp_path / "logs").is_dir()  # submit creates the log directory qsub writes into


def test_set_array_concurrency_is_one_qalter_per_limit_and_gone_jobs_are_fine() -> None:
    # Recorded from SGE 8.1.9: one job changed, one already gone (exit 1 all the same).
    answer = "modified task concurrency of job 4018\n", 'denied: job "999999" does not exist\n'
    cluster = RecordedCluster({"qalter -tc": (1, *answer)})
    cluster.set_array_concurrency({"4018": 2, "999999": 2, "4020": None})
    assert cluster.commands == [["qalter", "-tc", "0", "4020"], ["qalter", "-tc", "2", "4018", "999999"]]
    broken = RecordedCluster({"qalter -tc": (1, "", "error: unable to contact qmaster using port 6444 on host vm")})
    with pytest.raises(ClusterError, match="qalter -tc 3 7 failed"):
        broken.set_array_concurrency({"7": 3})
    for bad in ({"7.2": 3}, {"-u": 3}, {"7": 0}):
        with pytest.raises(ValueError):
            cluster.set_array_concurrency(bad)


def test_kill_tolerates_gone_jobs_but_not_other_errors() -> None:
    gone = RecordedCluster({"qdel 9999": (1, 'denied: job "9999" does not exist\njob 29 is already in deletion', "")})
    gone.kill(["9999", "29"])
    assert gone.commands == [["qdel", "9999", "29"]]
    broken = RecordedCluster({"qdel 5": (1, "", "error: unable to contact qmaster using port 6444 on host vm")})
    with pytest.raises(ClusterError, match="qdel 5 failed"):
        broken.kill(["5"])
    with pytest.raises(ValueError, match="not a Grid Engine job id"):
        broken.kill(["-u", "root"])
    RecordedCluster({}).kill([])  # nothing to do: no command


def test_qstat_xml_keeps_job_names_for_reattach_by_name() -> None:
    listed = parse_qstat_xml((DATA / "qstat_mixed.xml").read_text())
    assert listed and all(status.name for status in listed.values())
