"""The Jobmon FastAPI app, mounted under ``/jobmon`` in Airflow's API server by the plugin, or run standalone."""

from __future__ import annotations

import threading
import time
from typing import Any

from fastapi import FastAPI
from fastapi.exceptions import RequestValidationError

from jobmon_airflow import __version__, db
from jobmon_airflow.server import metrics, pages, query, state
from jobmon_airflow.server.limits import BodyLimit, request_validation_handler
from jobmon_airflow.server.schemas import MAX_BODY_BYTES
from jobmon_airflow.server.viewer import ViewerAuth
from jobmon_airflow.service import Insights, Reports

URL_PREFIX = "/jobmon"


def create_app(
    db_url: str | None = None, *, heartbeat_window: float = 0.02, viewer_auth: ViewerAuth | None = None
) -> FastAPI:
    """The app on the state database at ``db_url`` (default: the embedded SQLite file; the plugin and the CLI
    resolve the ``jobmon_default`` connection and pass its URL).

    Every route sits behind the body cap (:class:`~.limits.BodyLimit`), and validation errors leave out the input
    they would otherwise echo. ``heartbeat_window``: how long the first heartbeat waits for others to share its
    database round trip. ``viewer_auth``: who may read the query API (:mod:`.query`) and the pages; without it
    they answer 401 (the State Manager routes authenticate task-instance tokens on their own).
    """
    engine = db.get_engine(db_url)
    db.ensure_schema(engine)
    app = FastAPI(title="Jobmon", version=__version__, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.reports = Reports(engine)
    app.state.heartbeats = state.HeartbeatCoalescer(app.state.reports, window=heartbeat_window)
    app.include_router(state.router)
    app.include_router(metrics.router)
    app.state.insights = Insights(engine)
    app.state.viewer_auth = viewer_auth
    app.include_router(query.router)
    app.include_router(pages.router)  # the pages Airflow's UI shows (external views)
    app.add_exception_handler(RequestValidationError, request_validation_handler)
    app.add_middleware(BodyLimit, max_bytes=MAX_BODY_BYTES)
    app.add_middleware(metrics.RequestTimer)  # outermost: times refusals too
    return app


def create_standalone_app(db_url: str | None = None) -> FastAPI:
    """The app at the same path as inside Airflow (``/jobmon/...``), so workers use one URL shape everywhere."""
    outer = FastAPI(docs_url=None, redoc_url=None, openapi_url=None)
    outer.mount(URL_PREFIX, create_app(db_url))
    return outer


def start_in_thread(port: int, db_url: str | None = None, host: str = "127.0.0.1") -> Any:
    """Serve the standalone app from a daemon thread (the demo, tests); returns the uvicorn server."""
    import uvicorn

    server = uvicorn.Server(uvicorn.Config(create_standalone_app(db_url), host=host, port=port, log_level="warning"))
    threading.Thread(target=server.run, name="jobmon-state-manager", daemon=True).start()
    deadline = time.monotonic() + 30
    while not server.started:
        if time.monotonic() > deadline:
            raise RuntimeError(f"the Jobmon State Manager did not start on {host}:{port}")
        time.sleep(0.05)
    return server
