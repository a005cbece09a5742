"""FastAPI dependencies, as ``Annotated`` aliases the routes declare their parameters with.

Owns how a request reaches the app's ``Runtime``, ``Metrics`` and ``SessionRegistry``, and
``authorized_session``: the session named in the path, after checking the
``Authorization: Bearer <token>`` header (unknown session 404, no token 401, wrong token 403).

Knows nothing about what the routes do with them.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Header, Request

from server.errors import Problem, forbidden, unauthorized
from server.metrics import Metrics
from server.registry import ManagedSession, SessionRegistry
from server.runtime import Runtime

BEARER_PREFIX = "bearer "


def get_runtime(request: Request) -> Runtime:
    runtime: Runtime = request.app.state.runtime
    return runtime


RuntimeDep = Annotated[Runtime, Depends(get_runtime)]


def get_metrics(request: Request) -> Metrics:
    metrics: Metrics = request.app.state.metrics
    return metrics


MetricsDep = Annotated[Metrics, Depends(get_metrics)]


def get_registry(runtime: RuntimeDep) -> SessionRegistry:
    try:
        return runtime.registry
    except RuntimeError:
        raise Problem(
            503,
            "starting",
            f"the server is starting ({runtime.readiness.detail}); retry shortly",
            headers={"Retry-After": "2"},
        ) from None


RegistryDep = Annotated[SessionRegistry, Depends(get_registry)]


def authorized_session(
    session_id: str,
    registry: RegistryDep,
    authorization: Annotated[str | None, Header()] = None,
) -> ManagedSession:
    """The session ``session_id`` if the request carries its token."""
    managed = registry.get(session_id)  # unknown session: 404 before any token talk
    if authorization is None:
        raise unauthorized(
            "this request needs the session's token: send 'Authorization: Bearer <token>' "
            "with the token POST /v1/sessions returned"
        )
    if not authorization.lower().startswith(BEARER_PREFIX):
        raise unauthorized("the Authorization header must use the Bearer scheme")
    token = authorization[len(BEARER_PREFIX) :].strip()
    if not managed.token_matches(token):
        raise forbidden("the token does not belong to this session")
    return managed


AuthorizedSessionDep = Annotated[ManagedSession, Depends(authorized_session)]
