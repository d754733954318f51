"""The Jobmon FastAPI app, mounted under ``/jobmon`` in Airflow's API server by the plugin, or run standalone."""

from __future__ import annotations

from fastapi import FastAPI

from jobmon_airflow import db, service
from jobmon_airflow.server import state

URL_PREFIX = "/jobmon"


def create_app(db_url: str | None = None) -> FastAPI:
    """The app; ``db_url`` defaults to the ``jobmon_default`` connection (or the embedded SQLite file)."""
    if db_url is None:
        from jobmon_airflow.hooks.jobmon import JobmonHook

        db_url = JobmonHook().get_db_url()
    engine = db.get_engine(db_url)
    db.ensure_schema(engine)
    app = FastAPI(title="Jobmon", version=service.__version__, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.jobmon_service = service.JobmonService(engine)
    app.include_router(state.router)
    return app


def create_standalone_app(db_url: str | None = None) -> FastAPI:
    """The app at the same path as inside Airflow (``/jobmon/...``), so workers use one URL shape everywhere."""
    outer = FastAPI(docs_url=None, redoc_url=None, openapi_url=None)
    outer.mount(URL_PREFIX, create_app(db_url))
    return outer
