"""Airflow users for the query API and the pages, through Airflow's own auth manager.

Airflow mounts plugin apps without authenticating them, so the plugin passes :class:`AirflowViewerAuth` to
``create_app``. It reads the token the Airflow UI already holds, as Airflow's API does
(``airflow.api_fastapi.core_api.security.get_user``): an ``Authorization: Bearer`` header wins over the ``_token``
cookie the UI sets. The auth manager validates it (signature, expiry, audience, revocation) and turns it into a
user; the DAGs the viewer may read are the auth manager's answer for the DAG ids the state database holds
(``filter_authorized_dag_ids``, GET). A task instance's State Manager token is not an Airflow JWT: refused.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from fastapi import Request
from starlette.concurrency import run_in_threadpool

from jobmon_airflow.server.viewer import NotAuthenticated, Viewer

log = logging.getLogger(__name__)

#: The cookie Airflow's UI keeps its JWT in (``airflow.api_fastapi.auth.managers.base_auth_manager``).
COOKIE_NAME_JWT_TOKEN = "_token"


def _request_token(request: Request) -> str | None:
    scheme, _, credentials = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() == "bearer" and credentials.strip():
        return credentials.strip()
    return request.cookies.get(COOKIE_NAME_JWT_TOKEN) or None


class AirflowViewerAuth:
    """A :class:`~jobmon_airflow.server.viewer.ViewerAuth` backed by Airflow's auth manager (the API server's
    own, or the one given, for tests)."""

    def __init__(self, auth_manager: Any | None = None):
        self._auth_manager = auth_manager

    @property
    def auth_manager(self) -> Any:
        if self._auth_manager is not None:
            return self._auth_manager
        from airflow.api_fastapi.app import get_auth_manager

        return get_auth_manager()

    async def __call__(self, request: Request, known_dag_ids: Callable[[], frozenset[str]]) -> Viewer:
        from jwt import InvalidTokenError

        token = _request_token(request)
        if not token:
            raise NotAuthenticated("no Airflow token (log in to Airflow)")
        manager = self.auth_manager
        try:
            user = await manager.get_user_from_token(token)
        except InvalidTokenError as exc:  # forged, expired, revoked, of another audience
            raise NotAuthenticated(f"invalid Airflow token ({type(exc).__name__})") from None

        def readable() -> frozenset[str]:
            dag_ids = known_dag_ids()
            if not dag_ids:
                return frozenset()
            return frozenset(manager.filter_authorized_dag_ids(dag_ids=set(dag_ids), user=user, method="GET"))

        # The DAG ids come from the state database, and an auth manager may ask its own: off the event loop.
        return Viewer(str(user.get_name()), await run_in_threadpool(readable))
