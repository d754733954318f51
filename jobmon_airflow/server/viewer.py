"""Who is reading: the query API's and the pages' authentication, injected so that the server stays Airflow-free.

Airflow mounts plugin apps without authenticating them, so every query and page route depends on
:func:`current_viewer`. It asks the :class:`ViewerAuth` given to ``create_app`` (inside Airflow:
``jobmon_airflow.ui.auth.AirflowViewerAuth``, which checks the Airflow UI's token through Airflow's auth manager)
for a :class:`Viewer`: who the user is and which DAGs they may read. No ViewerAuth (the standalone State Manager)
means no reader at all: 401. A task instance's State Manager token is not an Airflow token, so it reads nothing.
"""

from __future__ import annotations

from collections.abc import Callable, Collection
from dataclasses import dataclass
from typing import Annotated, Protocol

from fastapi import Depends, HTTPException, Request


class NotAuthenticated(Exception):
    """No credential, or one that does not hold (→ 401)."""


@dataclass(frozen=True)
class Viewer:
    """An authenticated user and the DAGs they may read (``None``: every DAG)."""

    username: str
    readable_dag_ids: frozenset[str] | None

    def can_read(self, dag_id: str) -> bool:
        return self.readable_dag_ids is None or dag_id in self.readable_dag_ids

    def visible(self, dag_ids: Collection[str] | None = None) -> Collection[str] | None:
        """The DAG filter of a list query: the requested DAGs this viewer may read (``None``: no filter)."""
        if self.readable_dag_ids is None:
            return dag_ids
        return self.readable_dag_ids if dag_ids is None else self.readable_dag_ids.intersection(dag_ids)


class ViewerAuth(Protocol):
    """Authenticates a request; ``known_dag_ids`` lists the DAGs the state database holds (computed on demand), so
    an implementation can ask its authority about exactly those. Raises :class:`NotAuthenticated`."""

    async def __call__(self, request: Request, known_dag_ids: Callable[[], frozenset[str]]) -> Viewer: ...


def _known_dag_ids(request: Request) -> Callable[[], frozenset[str]]:
    def known() -> frozenset[str]:
        return frozenset(request.app.state.insights.dag_ids())

    return known


async def current_viewer(request: Request) -> Viewer:
    """The FastAPI dependency of every query and page route: 401 without a valid credential."""
    auth: ViewerAuth | None = getattr(request.app.state, "viewer_auth", None)
    if auth is None:
        raise HTTPException(401, "not authenticated: this server has no user authentication configured")
    try:
        return await auth(request, _known_dag_ids(request))
    except NotAuthenticated as exc:
        raise HTTPException(401, f"not authenticated: {exc}", headers={"WWW-Authenticate": "Bearer"}) from None


CurrentViewer = Annotated[Viewer, Depends(current_viewer)]


class StaticViewerAuth:
    """A fixed viewer for a fixed bearer token (tests, and a standalone server behind its own authentication)."""

    def __init__(self, tokens: dict[str, Viewer]):
        self.tokens = dict(tokens)

    async def __call__(self, request: Request, known_dag_ids: Callable[[], frozenset[str]]) -> Viewer:
        header = request.headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        viewer = self.tokens.get(token.strip()) if scheme.lower() == "bearer" else None
        if viewer is None:
            raise NotAuthenticated("missing or unknown bearer token")
        return viewer


__all__ = ["CurrentViewer", "NotAuthenticated", "StaticViewerAuth", "Viewer", "ViewerAuth", "current_viewer"]
