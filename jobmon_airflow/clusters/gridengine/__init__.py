"""Grid Engine (Son of Grid Engine 8.1.9, and Univa's with ``memory_resource="m_mem_free"``), never importing Airflow:

================  ====================================================================================
``commands``      command lines (pure): the qsub argv and job script, job names and ids, site options
``parsers``       answers (pure): ``qsub -terse``, ``qstat -xml``, ``qstat -j``, ``qconf``, qmaster outages
``accounting``    the accounting file: record format, outcome classification, an incremental reader
``cluster``       :class:`GridEngineCluster`, the backend that runs the commands
================  ====================================================================================

The names below are re-exported here, so ``from jobmon_airflow.clusters.gridengine import GridEngineCluster`` works.
"""

from __future__ import annotations

from jobmon_airflow.clusters.gridengine.accounting import (
    ACCOUNTING_FIELDS,
    FAILED_TEXT,
    AccountingReader,
    classify_exit,
    parse_accounting,
    parse_accounting_line,
    parse_category,
)
from jobmon_airflow.clusters.gridengine.cluster import (
    DEFAULT_SUBMIT_RETRY_S,
    CommandTimeout,
    GridEngineCluster,
)
from jobmon_airflow.clusters.gridengine.commands import (
    BACKEND_QSUB_OPTIONS,
    DEFAULT_COMMAND_TIMEOUT_S,
    DEFAULT_MEMORY_RESOURCE,
    DEFAULT_PE,
    DEFAULT_QUEUE,
    DEFAULT_SGE_CELL,
    DEFAULT_SGE_ROOT,
    MEMORY_RESOURCES,
    SiteOptions,
    check_job_id,
    job_script,
    memory_request,
    qsub_argv,
    safe_job_name,
    site_options,
)
from jobmon_airflow.clusters.gridengine.parsers import (
    STATE_LETTERS,
    communication_failed,
    decode_state,
    expand_task_ranges,
    parse_qconf_object,
    parse_qstat_j_error_reason,
    parse_qstat_xml,
    parse_qsub_output,
    parse_queue_limits,
    parse_queue_list,
    request_not_sent,
)

__all__ = [
    "ACCOUNTING_FIELDS",
    "BACKEND_QSUB_OPTIONS",
    "DEFAULT_COMMAND_TIMEOUT_S",
    "DEFAULT_MEMORY_RESOURCE",
    "DEFAULT_PE",
    "DEFAULT_QUEUE",
    "DEFAULT_SGE_CELL",
    "DEFAULT_SGE_ROOT",
    "DEFAULT_SUBMIT_RETRY_S",
    "FAILED_TEXT",
    "MEMORY_RESOURCES",
    "STATE_LETTERS",
    "AccountingReader",
    "CommandTimeout",
    "GridEngineCluster",
    "SiteOptions",
    "check_job_id",
    "classify_exit",
    "communication_failed",
    "decode_state",
    "expand_task_ranges",
    "job_script",
    "memory_request",
    "parse_accounting",
    "parse_accounting_line",
    "parse_category",
    "parse_qconf_object",
    "parse_qstat_j_error_reason",
    "parse_qstat_xml",
    "parse_qsub_output",
    "parse_queue_limits",
    "parse_queue_list",
    "qsub_argv",
    "request_not_sent",
    "safe_job_name",
    "site_options",
]
