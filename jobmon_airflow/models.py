"""The Jobmon state database: SQLAlchemy 2 models of Jobmon's schema, keyed to Airflow identities.

Same tables and columns as Jobmon's server models where the concept exists here (tool → task_instance, arrays,
task_resources, clusters and queues, error logs, attributes, status lookups); Airflow-specific identity columns
(dag_id, run_id, airflow_task_id, map_index) make binding idempotent. Runs on SQLite and MySQL/MariaDB.
Schema changes go through Alembic (``jobmon_airflow/migrations``).
"""

from __future__ import annotations

from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.dialects import mysql
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

# Microsecond precision on MySQL (plain DATETIME truncates to seconds, which breaks report-by ordering).
DateTime = sa.DateTime().with_variant(mysql.DATETIME(fsp=6), "mysql")
# Large texts: TEXT is 64 KB on MySQL; stderr tails and commands can be longer.
LongText = sa.Text().with_variant(mysql.MEDIUMTEXT(), "mysql")

NAMING = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    metadata = sa.MetaData(naming_convention=NAMING)


class _StatusLookup:
    """Jobmon's status lookup tables (id char(1), label, description), seeded from ``states.DESCRIPTIONS``."""

    id: Mapped[str] = mapped_column(sa.String(1), primary_key=True)
    label: Mapped[str] = mapped_column(sa.String(150))
    description: Mapped[str] = mapped_column(sa.String(300))


class WorkflowStatusRow(_StatusLookup, Base):
    __tablename__ = "workflow_status"


class WorkflowRunStatusRow(_StatusLookup, Base):
    __tablename__ = "workflow_run_status"


class TaskStatusRow(_StatusLookup, Base):
    __tablename__ = "task_status"


class TaskInstanceStatusRow(_StatusLookup, Base):
    __tablename__ = "task_instance_status"


class ClusterType(Base):
    __tablename__ = "cluster_type"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(sa.String(255), unique=True)


class Cluster(Base):
    __tablename__ = "cluster"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(sa.String(255), unique=True)
    cluster_type_id: Mapped[int] = mapped_column(sa.ForeignKey("cluster_type.id"))
    connection_parameters: Mapped[str | None] = mapped_column(sa.String(2500))


class Queue(Base):
    __tablename__ = "queue"
    __table_args__ = (sa.UniqueConstraint("name", "cluster_id"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(sa.String(255))
    cluster_id: Mapped[int] = mapped_column(sa.ForeignKey("cluster.id"))
    parameters: Mapped[str | None] = mapped_column(sa.String(2500))  # JSON of limits


class Tool(Base):
    __tablename__ = "tool"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(sa.String(255), unique=True)


class ToolVersion(Base):
    __tablename__ = "tool_version"
    __table_args__ = (sa.UniqueConstraint("tool_id", "version"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    tool_id: Mapped[int] = mapped_column(sa.ForeignKey("tool.id"))
    version: Mapped[str] = mapped_column(sa.String(255))  # the DAG's code version / hash


class TaskTemplate(Base):
    __tablename__ = "task_template"
    __table_args__ = (sa.UniqueConstraint("tool_version_id", "name"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    tool_version_id: Mapped[int] = mapped_column(sa.ForeignKey("tool_version.id"))
    name: Mapped[str] = mapped_column(sa.String(255))


class TaskTemplateVersion(Base):
    __tablename__ = "task_template_version"
    __table_args__ = (sa.UniqueConstraint("task_template_id", "command_template_hash", "arg_mapping_hash"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    task_template_id: Mapped[int] = mapped_column(sa.ForeignKey("task_template.id"))
    command_template: Mapped[str] = mapped_column(LongText)
    command_template_hash: Mapped[str] = mapped_column(sa.String(64))  # TEXT cannot be in a MySQL unique key
    arg_mapping_hash: Mapped[str] = mapped_column(sa.String(64))
    node_args: Mapped[str] = mapped_column(sa.String(2000), default="[]")  # JSON lists of arg names
    task_args: Mapped[str] = mapped_column(sa.String(2000), default="[]")
    op_args: Mapped[str] = mapped_column(sa.String(2000), default="[]")


class Workflow(Base):
    __tablename__ = "workflow"
    __table_args__ = (sa.UniqueConstraint("tool_version_id", "workflow_args_hash"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    tool_version_id: Mapped[int] = mapped_column(sa.ForeignKey("tool_version.id"))
    dag_id: Mapped[str] = mapped_column(sa.String(250), index=True)
    run_id: Mapped[str] = mapped_column(sa.String(250))
    name: Mapped[str] = mapped_column(sa.String(255))
    description: Mapped[str | None] = mapped_column(sa.Text)
    workflow_args: Mapped[str] = mapped_column(sa.Text)
    workflow_args_hash: Mapped[str] = mapped_column(sa.String(64), index=True)
    max_concurrently_running: Mapped[int] = mapped_column(default=10_000)
    created_date: Mapped[datetime | None] = mapped_column(DateTime)
    status: Mapped[str] = mapped_column(sa.ForeignKey("workflow_status.id"), default="G")
    status_date: Mapped[datetime] = mapped_column(DateTime)


class WorkflowRun(Base):
    __tablename__ = "workflow_run"
    __table_args__ = (sa.Index(None, "status", "heartbeat_date"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    workflow_id: Mapped[int] = mapped_column(sa.ForeignKey("workflow.id"), index=True)
    user: Mapped[str | None] = mapped_column(sa.String(150))
    jobmon_version: Mapped[str] = mapped_column(sa.String(150))
    created_date: Mapped[datetime] = mapped_column(DateTime)
    status: Mapped[str] = mapped_column(sa.ForeignKey("workflow_run_status.id"), default="G")
    status_date: Mapped[datetime] = mapped_column(DateTime)
    heartbeat_date: Mapped[datetime] = mapped_column(DateTime)


class Array(Base):
    __tablename__ = "array"
    __table_args__ = (sa.UniqueConstraint("task_template_version_id", "workflow_id", "name"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(sa.String(255))
    task_template_version_id: Mapped[int | None] = mapped_column(sa.ForeignKey("task_template_version.id"))
    workflow_id: Mapped[int] = mapped_column(sa.ForeignKey("workflow.id"))
    max_concurrently_running: Mapped[int] = mapped_column(default=10_000)


class TaskResourcesType(Base):
    __tablename__ = "task_resources_type"
    id: Mapped[str] = mapped_column(sa.String(1), primary_key=True)  # O original, V validated, A adjusted
    label: Mapped[str] = mapped_column(sa.String(150))


class TaskResources(Base):
    """Immutable: each task instance points at the row it ran with."""

    __tablename__ = "task_resources"
    id: Mapped[int] = mapped_column(primary_key=True)
    queue_id: Mapped[int | None] = mapped_column(sa.ForeignKey("queue.id"))
    task_resources_type_id: Mapped[str] = mapped_column(sa.ForeignKey("task_resources_type.id"))
    requested_resources: Mapped[str] = mapped_column(sa.Text)  # JSON: cores, memory (GiB), runtime (s), ...


class Task(Base):
    __tablename__ = "task"
    __table_args__ = (
        sa.UniqueConstraint("workflow_id", "airflow_task_id", "map_index", "node_args_hash"),
        sa.Index(None, "workflow_id", "status", "num_attempts"),  # task counts and retries from the index alone
        sa.Index(None, "array_id", "status"),
    )
    id: Mapped[int] = mapped_column(primary_key=True)
    workflow_id: Mapped[int] = mapped_column(sa.ForeignKey("workflow.id"))
    airflow_task_id: Mapped[str] = mapped_column(sa.String(250))
    map_index: Mapped[int] = mapped_column(default=-1)
    node_args_hash: Mapped[str] = mapped_column(sa.String(64), default="")  # "" for a single task
    task_args_hash: Mapped[str] = mapped_column(sa.String(64), default="")
    array_id: Mapped[int | None] = mapped_column(sa.ForeignKey("array.id"))
    task_template_version_id: Mapped[int | None] = mapped_column(sa.ForeignKey("task_template_version.id"))
    name: Mapped[str] = mapped_column(sa.String(255), index=True)
    command: Mapped[str] = mapped_column(LongText)
    task_resources_id: Mapped[int | None] = mapped_column(sa.ForeignKey("task_resources.id"))
    num_attempts: Mapped[int] = mapped_column(default=0)
    max_attempts: Mapped[int] = mapped_column(default=3)
    resource_scales: Mapped[str | None] = mapped_column(sa.String(1000))
    fallback_queues: Mapped[str | None] = mapped_column(sa.String(1000))
    status: Mapped[str] = mapped_column(sa.ForeignKey("task_status.id"), default="G")
    status_date: Mapped[datetime] = mapped_column(DateTime, index=True)


class TaskInstance(Base):
    __tablename__ = "task_instance"
    __table_args__ = (
        sa.Index(None, "status", "report_by_date"),
        # Covers resource usage (one ordered pass, no row reads); its prefix serves the (run, status) lookups.
        sa.Index(
            "ix_task_instance_workflow_run_id_status_usage",
            *("workflow_run_id", "status", "array_id", "task_resources_id", "maxrss", "wallclock"),
        ),
        sa.Index(None, "array_id", "array_batch_num", "array_step_id"),
        sa.Index(None, "usage_source", "id"),  # the max-RSS ETL's candidate scan, in id windows
    )
    id: Mapped[int] = mapped_column(primary_key=True)
    workflow_run_id: Mapped[int] = mapped_column(sa.ForeignKey("workflow_run.id"))
    task_id: Mapped[int] = mapped_column(sa.ForeignKey("task.id"), index=True)
    array_id: Mapped[int | None] = mapped_column(sa.ForeignKey("array.id"))
    cluster_id: Mapped[int] = mapped_column(sa.ForeignKey("cluster.id"))
    distributor_id: Mapped[str | None] = mapped_column(sa.String(32), index=True)
    task_resources_id: Mapped[int | None] = mapped_column(sa.ForeignKey("task_resources.id"))
    array_batch_num: Mapped[int | None]
    array_step_id: Mapped[int | None]
    try_number: Mapped[int | None]  # the Airflow try that ran it
    token_hash: Mapped[str | None] = mapped_column(sa.String(64))  # sha256 of the worker's bearer token
    nodename: Mapped[str | None] = mapped_column(sa.String(150))
    process_group_id: Mapped[int | None]
    exit_status: Mapped[int | None]
    usage_str: Mapped[str | None] = mapped_column(sa.String(250))
    wallclock: Mapped[float | None]  # seconds
    maxrss: Mapped[int | None] = mapped_column(sa.BigInteger)  # bytes
    maxpss: Mapped[int | None] = mapped_column(sa.BigInteger)  # bytes (QPID)
    cpu: Mapped[float | None]  # seconds
    # Where the usage figures came from (worker, qpid, accounting); NULL until the ETL has looked, "missing" once
    # it gave up after the retirement age.
    usage_source: Mapped[str | None] = mapped_column(sa.String(16))
    stdout: Mapped[str | None] = mapped_column(sa.String(1000))
    stderr: Mapped[str | None] = mapped_column(sa.String(1000))
    exit_record: Mapped[str | None] = mapped_column(sa.String(1000))
    status: Mapped[str] = mapped_column(sa.ForeignKey("task_instance_status.id"), default="Q")
    submitted_date: Mapped[datetime | None] = mapped_column(DateTime)
    status_date: Mapped[datetime] = mapped_column(DateTime)
    report_by_date: Mapped[datetime | None] = mapped_column(DateTime)


class TaskInstanceErrorLog(Base):
    __tablename__ = "task_instance_error_log"
    id: Mapped[int] = mapped_column(primary_key=True)
    task_instance_id: Mapped[int] = mapped_column(sa.ForeignKey("task_instance.id"), index=True)
    error_time: Mapped[datetime] = mapped_column(DateTime)
    description: Mapped[str] = mapped_column(LongText)


class WorkflowRunNote(Base):
    """Why a workflow run changed status outside its own operators (the reaper, a CLI reset)."""

    __tablename__ = "workflow_run_note"
    id: Mapped[int] = mapped_column(primary_key=True)
    workflow_run_id: Mapped[int] = mapped_column(sa.ForeignKey("workflow_run.id"), index=True)
    note_date: Mapped[datetime] = mapped_column(DateTime)
    old_status: Mapped[str] = mapped_column(sa.String(1))
    new_status: Mapped[str] = mapped_column(sa.String(1))
    source: Mapped[str] = mapped_column(sa.String(64))  # e.g. "reaper", "cli"
    description: Mapped[str] = mapped_column(sa.String(2000))


class WorkflowAttributeType(Base):
    __tablename__ = "workflow_attribute_type"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(sa.String(255), unique=True)


class WorkflowAttribute(Base):
    __tablename__ = "workflow_attribute"
    workflow_id: Mapped[int] = mapped_column(sa.ForeignKey("workflow.id"), primary_key=True)
    workflow_attribute_type_id: Mapped[int] = mapped_column(
        sa.ForeignKey("workflow_attribute_type.id"), primary_key=True
    )
    value: Mapped[str | None] = mapped_column(sa.String(255))


class TaskAttributeType(Base):
    __tablename__ = "task_attribute_type"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(sa.String(255), unique=True)


class TaskAttribute(Base):
    __tablename__ = "task_attribute"
    task_id: Mapped[int] = mapped_column(sa.ForeignKey("task.id"), primary_key=True)
    task_attribute_type_id: Mapped[int] = mapped_column(sa.ForeignKey("task_attribute_type.id"), primary_key=True)
    value: Mapped[str | None] = mapped_column(sa.String(255))
