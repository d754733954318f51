"""Alembic environment: runs on the engine handed over by ``jobmon_airflow.db.upgrade``."""

from __future__ import annotations

from alembic import context

from jobmon_airflow.db import VERSION_TABLE
from jobmon_airflow.models import Base

config = context.config
engine = config.attributes["engine"]

with engine.connect() as connection:
    context.configure(
        connection=connection,
        target_metadata=Base.metadata,
        version_table=VERSION_TABLE,
        render_as_batch=connection.dialect.name == "sqlite",
    )
    with context.begin_transaction():
        context.run_migrations()
    connection.commit()
