"""What the State Manager accepts: every field of every request bounded, so that no input reaches the database
(or a JSON encoder) that it cannot hold, and a bad request is a 4xx that names the field, never a 500.

The bounds are the columns' and the worker node's: ids are signed 64-bit row ids, a process group id is a pid
(``INT``), an exit status is what ``Popen.returncode`` gives (``-N`` for signal N, else 0..255), sizes and times
are finite and non-negative, strings are no longer than their columns.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import AfterValidator, BaseModel, Field

from jobmon_airflow.records import Usage as UsageRecord
from jobmon_airflow.service.reports import MAX_ID

MIN_ID = 1
MAX_PROCESS_GROUP_ID = 2**31 - 1
MAX_RSS_BYTES = 2**62
MAX_SECONDS = 10 * 366 * 86_400  # ten years of wall-clock or CPU time
MAX_REPORT_INCREMENT = 86_400.0  # a heartbeat promises the next one within a day at most
MAX_NODENAME = 150  # task_instance.nodename
MAX_DISTRIBUTOR_ID = 32  # task_instance.distributor_id
#: The error text kept per report; the worker node sends at most 10,000 characters (its stderr tail).
MAX_ERROR_MESSAGE = 20_000
#: Request bodies larger than this are refused (413) before they are read. The largest legitimate body is a
#: ``log_error`` at the limits above, JSON-escaped by the worker (``ensure_ascii``): at most 12 bytes a character
#: (a surrogate pair, ``\\ud83d\\ude00``), so 20,000 × 12 + 150 × 12 + the numbers ≈ 242 KB < 256 KiB.
MAX_BODY_BYTES = 256 * 1024


def _encodable(text: str) -> str:
    """Text the database can store: UTF-8 encodable (JSON may carry lone surrogates, ``"\\ud800"``)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("text is not valid Unicode (lone surrogate)") from None
    return text


Increment = Annotated[float, Field(gt=0, le=MAX_REPORT_INCREMENT, allow_inf_nan=False)]
Seconds = Annotated[float, Field(ge=0, le=MAX_SECONDS, allow_inf_nan=False)]
ExitStatus = Annotated[int, Field(ge=-255, le=255)]
NodeName = Annotated[str, Field(max_length=MAX_NODENAME), AfterValidator(_encodable)]


class Usage(BaseModel):
    maxrss_bytes: Annotated[int, Field(ge=0, le=MAX_RSS_BYTES)] | None = None
    wallclock_s: Seconds | None = None
    cpu_s: Seconds | None = None

    def record(self) -> UsageRecord:
        return UsageRecord(self.maxrss_bytes, self.wallclock_s, self.cpu_s)


class LogRunning(BaseModel):
    nodename: NodeName
    process_group_id: Annotated[int, Field(ge=0, le=MAX_PROCESS_GROUP_ID)] | None = None
    distributor_id: Annotated[str, Field(max_length=MAX_DISTRIBUTOR_ID, pattern=r"^[!-~]*$")] | None = None
    next_report_increment: Increment


class LogReportBy(BaseModel):
    next_report_increment: Increment


class LogDone(BaseModel):
    nodename: NodeName | None = None
    exit_status: ExitStatus = 0
    usage: Usage = Usage()


class LogError(BaseModel):
    error_state: str = Field(pattern="^[EZFU]$")
    exit_status: ExitStatus | None = None
    error_message: Annotated[str, Field(max_length=MAX_ERROR_MESSAGE), AfterValidator(_encodable)] = ""
    nodename: NodeName | None = None
    usage: Usage = Usage()


class LogRan(LogRunning):
    """``log_running`` and the final report in one: the command ended before its running report was due.
    ``status``: D, or the error state (as ``log_error``'s ``error_state``)."""

    status: str = Field(pattern="^[DEZFU]$")
    exit_status: ExitStatus | None = None
    error_message: Annotated[str, Field(max_length=MAX_ERROR_MESSAGE), AfterValidator(_encodable)] = ""
    usage: Usage = Usage()


class StatusReply(BaseModel):
    status: str


__all__ = [
    "MAX_BODY_BYTES",
    "MAX_ID",
    "MIN_ID",
    "LogDone",
    "LogError",
    "LogRan",
    "LogReportBy",
    "LogRunning",
    "StatusReply",
    "Usage",
]
