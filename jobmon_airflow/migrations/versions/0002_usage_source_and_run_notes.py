"""usage source and workflow-run notes

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-29

``task_instance.usage_source`` records where max RSS/PSS came from (the max-RSS ETL's candidates are the rows where it
is NULL, scanned through the new index); ``workflow_run_note`` says why the reaper (or a person) changed a run.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import mysql

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

DateTime = sa.DateTime().with_variant(mysql.DATETIME(fsp=6), "mysql")


def upgrade() -> None:
    with op.batch_alter_table("task_instance", schema=None) as batch_op:
        batch_op.add_column(sa.Column("usage_source", sa.String(length=16), nullable=True))
        batch_op.create_index(batch_op.f("ix_task_instance_usage_source_id"), ["usage_source", "id"], unique=False)
    op.create_table(
        "workflow_run_note",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("workflow_run_id", sa.Integer(), nullable=False),
        sa.Column("note_date", DateTime, nullable=False),
        sa.Column("old_status", sa.String(length=1), nullable=False),
        sa.Column("new_status", sa.String(length=1), nullable=False),
        sa.Column("source", sa.String(length=64), nullable=False),
        sa.Column("description", sa.String(length=2000), nullable=False),
        sa.ForeignKeyConstraint(
            ["workflow_run_id"], ["workflow_run.id"], name=op.f("fk_workflow_run_note_workflow_run_id_workflow_run")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_workflow_run_note")),
    )
    with op.batch_alter_table("workflow_run_note", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_workflow_run_note_workflow_run_id"), ["workflow_run_id"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("workflow_run_note", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_workflow_run_note_workflow_run_id"))
    op.drop_table("workflow_run_note")
    with op.batch_alter_table("task_instance", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_task_instance_usage_source_id"))
        batch_op.drop_column("usage_source")
