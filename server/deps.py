"""FastAPI dependencies, as ``Annotated`` aliases the routes declare their parameters with.

Owns how a request reaches the app's ``Runtime``, ``Metrics``, ``SessionRegistry`` and
``ApiKeys``, and the credential checks as dependencies (the checks themselves are
``server.auth``; refusals are counted in ``headcast_sessions_rejected_total{reason="auth"}``):

- ``ApiKeyDep``: ``POST /v1/sessions`` carries a configured API key (when keys are set);
- ``AvatarKeyDep``: the same for the ``/v1/avatars`` routes (refusals are not counted as
  refused sessions); a session token is not an API key;
- ``StartingSessionDep``: the path's session, with its token in ``Authorization: Bearer``,
  for starting it (the offer; once the session is connected, as for controlling it);
- ``AuthorizedSessionDep``: the same, for controlling it (delete, interrupt, keep-alive).

The audio WebSocket checks its ``?token=`` in ``server.routes.audio_ws`` (a refused socket is
closed with a code, not answered with an HTTP error) through ``registry_of`` and
``session_for_token`` here.

Every dependency is ``async``: they only look things up in memory, and FastAPI runs a plain
``def`` dependency in AnyIO's worker threads, a thread hop per dependency per request (four
for an interrupt) and idle worker threads left behind after each burst of requests.

Unknown session: 404 before any token check. Knows nothing about what the routes do.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Header, Request

from headcast.server.auth import ApiKeys, AuthError, MissingCredentials, TokenUse, bearer_credential
from headcast.server.avatars import AvatarCatalog
from headcast.server.errors import Problem
from headcast.server.metrics import Metrics, RejectReason
from headcast.server.registry import ManagedSession, SessionRegistry
from headcast.server.runtime import Runtime
from headcast.server.settings import Settings

STARTING_RETRY_AFTER_S = 2
"""Retry-After while the server's runtime starts, in seconds."""


async def get_runtime(request: Request) -> Runtime:
    runtime: Runtime = request.app.state.runtime
    return runtime


RuntimeDep = Annotated[Runtime, Depends(get_runtime)]


async def get_settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


SettingsDep = Annotated[Settings, Depends(get_settings)]


async def get_metrics(request: Request) -> Metrics:
    metrics: Metrics = request.app.state.metrics
    return metrics


MetricsDep = Annotated[Metrics, Depends(get_metrics)]


async def get_api_keys(request: Request) -> ApiKeys:
    api_keys: ApiKeys = request.app.state.api_keys
    return api_keys


ApiKeysDep = Annotated[ApiKeys, Depends(get_api_keys)]


def server_starting(runtime: Runtime) -> Problem:
    """The 503 of a request that came before the runtime started."""
    return Problem(
        503,
        "starting",
        f"the server is starting ({runtime.readiness.detail}); retry shortly",
        headers={"Retry-After": str(STARTING_RETRY_AFTER_S)},
    )


def registry_of(runtime: Runtime) -> SessionRegistry:
    """The runtime's session registry, or the 503 of a server still starting."""
    try:
        return runtime.registry
    except RuntimeError:
        raise server_starting(runtime) from None


async def get_registry(runtime: RuntimeDep) -> SessionRegistry:
    return registry_of(runtime)


RegistryDep = Annotated[SessionRegistry, Depends(get_registry)]


async def get_avatars(runtime: RuntimeDep) -> AvatarCatalog:
    try:
        return runtime.avatars
    except RuntimeError:
        raise server_starting(runtime) from None


AvatarsDep = Annotated[AvatarCatalog, Depends(get_avatars)]


async def require_api_key(
    api_keys: ApiKeysDep,
    metrics: MetricsDep,
    authorization: Annotated[str | None, Header()] = None,
) -> None:
    """Let the request create a session: a configured API key, or open mode (no keys)."""
    try:
        api_keys.check(authorization)
    except AuthError:
        metrics.rejected(RejectReason.AUTH)
        raise


ApiKeyDep = Annotated[None, Depends(require_api_key)]


async def require_avatar_key(
    api_keys: ApiKeysDep, authorization: Annotated[str | None, Header()] = None
) -> None:
    """Let the request manage avatars: a configured API key, or open mode (no keys)."""
    api_keys.check(authorization)


AvatarKeyDep = Annotated[None, Depends(require_avatar_key)]


def session_for_token(
    registry: SessionRegistry,
    metrics: Metrics,
    session_id: str,
    token: str | None,
    use: TokenUse,
) -> ManagedSession:
    """The live session ``session_id`` if ``token`` grants ``use`` of it; counts refusals.

    For routes that get the token some other way (a WebSocket message); the dependencies
    below call it too.
    """
    managed = registry.get(session_id)  # unknown session: 404 before any token talk
    try:
        if not token:
            raise MissingCredentials(
                "this request needs the session's token (returned by POST /v1/sessions): "
                "'Authorization: Bearer <token>', or '?token=<token>' on a WebSocket"
            )
        registry.tokens.verify(token, session_id, use, connected=managed.connected)
    except AuthError:
        metrics.rejected(RejectReason.AUTH)
        raise
    return managed


def _session_from_header(
    registry: SessionRegistry,
    metrics: Metrics,
    session_id: str,
    authorization: str | None,
    use: TokenUse,
) -> ManagedSession:
    registry.get(session_id)  # unknown session: 404 before any token talk
    try:
        token = bearer_credential(authorization, "session token")
    except AuthError:
        metrics.rejected(RejectReason.AUTH)
        raise
    return session_for_token(registry, metrics, session_id, token, use)


async def starting_session(
    session_id: str,
    registry: RegistryDep,
    metrics: MetricsDep,
    authorization: Annotated[str | None, Header()] = None,
) -> ManagedSession:
    """The path's session, if the bearer token may start it: unexpired, or any of its own
    tokens once the session is connected (a push session whose audio socket is open holds
    its slot, so its token keeps authorising its own offer, as it does every other command).
    """
    use = TokenUse.CONTROL if registry.get(session_id).connected else TokenUse.START
    return _session_from_header(registry, metrics, session_id, authorization, use)


StartingSessionDep = Annotated[ManagedSession, Depends(starting_session)]


async def authorized_session(
    session_id: str,
    registry: RegistryDep,
    metrics: MetricsDep,
    authorization: Annotated[str | None, Header()] = None,
) -> ManagedSession:
    """The path's session, if the bearer token may control it."""
    return _session_from_header(registry, metrics, session_id, authorization, TokenUse.CONTROL)


AuthorizedSessionDep = Annotated[ManagedSession, Depends(authorized_session)]
