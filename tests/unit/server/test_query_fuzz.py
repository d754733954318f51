"""Schemathesis on the query API's own OpenAPI schema, as a reader who may see every DAG: no request it generates
(ids in and out of range, unknown statuses and buckets, odd dates, long strings, repeated parameters) gets a 500.

Examples per route: ``JOBMON_FUZZ_EXAMPLES`` (default 50 here; the normal suite), as for tests/unit/server/test_fuzz.py.
"""

from __future__ import annotations

import os
import tempfile
import warnings
from typing import Any

import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error

from jobmon_airflow import db
from jobmon_airflow.server.app import create_app
from jobmon_airflow.server.viewer import StaticViewerAuth, Viewer
from jobmon_airflow.service import Services
from tests.support.insights import build_known_workflow

EXAMPLES = int(os.environ.get("JOBMON_FUZZ_EXAMPLES", "50"))
AUTH = {"Authorization": "Bearer fuzz-reader"}


def _query_app() -> Any:
    """The app on a fresh database with a known workflow (ids 1.. exist: the fuzzer hits real rows as well as
    missing ones), read by a viewer of one DAG."""
    url = f"sqlite:///{tempfile.mkdtemp(prefix='jobmon-query-fuzz-')}/fuzz.sqlite"
    svc = Services.for_engine(db.get_engine(url))
    db.upgrade(svc.engine)
    build_known_workflow(svc)
    svc.binding.bind_workflow_run(dag_id="other_dag", run_id="r", user="bob")
    auth = StaticViewerAuth({"fuzz-reader": Viewer("fuzz", frozenset({"known_dag"}))})
    return create_app(url, viewer_auth=auth)


# Loaded when the module is collected: Schemathesis' lazy fixture loader does not work with this pytest.
with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    schema = schemathesis.openapi.from_asgi("/api/openapi.json", _query_app(), headers=AUTH)


@schema.parametrize()
@settings(
    max_examples=EXAMPLES,
    deadline=None,
    database=None,  # Schemathesis derandomizes under CI, which refuses the property suite's example database
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow, HealthCheck.filter_too_much],
)
def test_query_routes_never_answer_500(case: Any) -> None:
    response = case.call(headers=AUTH)
    case.validate_response(response, checks=[not_a_server_error])
    # 405: Schemathesis also tries methods the routes do not have
    assert response.status_code in (200, 403, 404, 405, 422), (response.status_code, response.text[:300])
    if response.status_code == 200:
        (content_type,) = response.headers["content-type"]
        assert content_type.startswith(("application/json", "text/csv"))
