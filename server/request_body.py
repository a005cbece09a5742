"""Request bodies: bounded in size and time, JSON only, read only after the credentials pass.

Owns:

- ``BodyLimits`` and ``BodyLimitMiddleware`` (pure ASGI, outermost): every HTTP request body
  is bounded -- ``max_request_bytes``, or a route's own limit (the WebRTC offer:
  ``max_offer_bytes``). A declared ``Content-Length`` over the limit is answered 413 at
  once, before routing or auth, without reading a byte; a body without one (chunked) raises
  ``BodyTooLarge`` from ``receive`` as soon as it crosses the limit, so the reader gets a 413
  too and nothing beyond the limit is ever buffered.
- ``read_json``: what the JSON routes call from a dependency that runs after their
  credential check (FastAPI reads a declared body parameter *before* any dependency, so
  routes here declare none): ``Content-Type: application/json`` or 415 (a cross-origin page
  cannot send that without passing CORS), the body within ``body_timeout_s`` or 408, then
  parsed into a pydantic model (422 when it does not match).
- ``json_request_body``: the OpenAPI ``requestBody`` of such a route, so ``/docs`` still
  shows its schema.
- ``read_upload``: the same for a ``multipart/form-data`` upload (one file and a few short
  text fields; 415 for another media type, 408, 413 for a file over its own limit).

Knows nothing about sessions or credentials; the routes decide what runs first.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from fastapi import Request
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ValidationError
from starlette.datastructures import UploadFile
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from headcast.server.errors import Problem

JSON_MEDIA_TYPE = "application/json"
FORM_MEDIA_TYPE = "multipart/form-data"

FORM_FIELD_MAX_BYTES = 4_096
"""Largest text field of an upload form, in bytes (names and prompts are short)."""

FORM_MAX_FIELDS = 8
"""Most text fields an upload form may have."""

ModelT = TypeVar("ModelT", bound=BaseModel)


class BodyTooLarge(Exception):
    """A request body crossed its size limit while it was being read."""

    def __init__(self, limit: int) -> None:
        super().__init__(f"request body over {limit} bytes")
        self.limit = limit


def too_large(limit: int) -> Problem:
    """The 413 of a body over ``limit`` bytes.

    The connection stays open: closing it on unread data would reset it, and the client,
    still sending, would never read this answer. The rest of the body is discarded as it
    arrives, never buffered, and a client that keeps sending is cut off by the request-head
    timeout (``server.http_protocol``).
    """
    return Problem(
        413,
        "body-too-large",
        f"the request body is over {limit} bytes, the most this endpoint takes; send a smaller "
        "body (the server's operator sets the limits: docs/deployment.md)",
        title="Request body too large",
    )


def body_late(timeout_s: float) -> Problem:
    """The 408 of a body that did not arrive within ``timeout_s``."""
    return Problem(
        408,
        "body-timeout",
        f"the request body did not arrive within {timeout_s:g} s; send it whole, at once",
        title="Request timeout",
    )


@dataclass(frozen=True)
class BodyLimits:
    """The most bytes a request body may have: per route pattern, else ``default_bytes``."""

    default_bytes: int
    routes: Sequence[tuple[re.Pattern[str], int]] = ()
    """``(path pattern, limit)`` of the routes with their own limit (full-match on the path)."""

    def for_path(self, path: str) -> int:
        for pattern, limit in self.routes:
            if pattern.fullmatch(path):
                return limit
        return self.default_bytes


def _declared_length(scope: Scope) -> int | None:
    """The request's ``Content-Length``, or ``None`` if it has none (or an unreadable one)."""
    for name, value in scope["headers"]:
        if name == b"content-length":
            return int(value) if value.isdigit() else None
    return None


class BodyLimitMiddleware:
    """Bounds every HTTP request body by ``limits`` (see the module docstring)."""

    def __init__(self, app: ASGIApp, limits: BodyLimits) -> None:
        self.app = app
        self.limits = limits

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.limits.for_path(scope["path"])
        declared = _declared_length(scope)
        if declared is not None and declared > limit:
            await too_large(limit).response()(scope, receive, send)
            return
        received = 0

        async def bounded_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise BodyTooLarge(limit)
            return message

        await self.app(scope, bounded_receive, send)


def _media_type(request: Request) -> str:
    return request.headers.get("content-type", "").partition(";")[0].strip().lower()


async def read_json(
    request: Request, model: type[ModelT], *, timeout_s: float, optional: bool = False
) -> ModelT | None:
    """The request's JSON body as ``model``; ``None`` for an empty body when ``optional``.

    Call it after the route's credential checks. Raises the ``Problem`` that says what to
    fix: 415 (not ``application/json``), 408 (the body did not arrive in ``timeout_s``),
    413 (over the limit: ``BodyTooLarge``), or a 422 validation error.
    """
    if _media_type(request) != JSON_MEDIA_TYPE:
        raise Problem(
            415,
            "unsupported-media-type",
            f"send this request with 'Content-Type: {JSON_MEDIA_TYPE}' and a JSON body",
            title="Unsupported media type",
        )
    try:
        async with asyncio.timeout(timeout_s):
            body = await request.body()
    except BodyTooLarge as exc:
        raise too_large(exc.limit) from None
    except TimeoutError:
        raise body_late(timeout_s) from None
    if not body.strip() and optional:
        return None
    try:
        return model.model_validate_json(body)
    except ValidationError as exc:
        raise RequestValidationError(
            [{**error, "loc": ("body", *error["loc"])} for error in exc.errors()]
        ) from None


@dataclass(frozen=True)
class Upload:
    """A ``multipart/form-data`` body: its one file and its text fields."""

    data: bytes = field(repr=False)
    fields: dict[str, str]


async def read_upload(
    request: Request, file_field: str, *, max_file_bytes: int, timeout_s: float
) -> Upload:
    """The request's form: the file ``file_field`` (at most ``max_file_bytes``) and the text
    fields. Call it after the route's credential checks. Raises the ``Problem`` that says
    what to fix: 415 (not ``multipart/form-data``), 408 (not all there within
    ``timeout_s``), 413 (the body over its limit, or the file over ``max_file_bytes``), 422
    (no file ``file_field``), 400 (a malformed form: Starlette's)."""
    if _media_type(request) != FORM_MEDIA_TYPE:
        raise Problem(
            415,
            "unsupported-media-type",
            f"send this request as '{FORM_MEDIA_TYPE}' with the file in a field named "
            f"{file_field!r}",
            title="Unsupported media type",
        )
    try:
        async with asyncio.timeout(timeout_s):
            async with request.form(
                max_files=1, max_fields=FORM_MAX_FIELDS, max_part_size=FORM_FIELD_MAX_BYTES
            ) as form:
                upload = form.get(file_field)
                if not isinstance(upload, UploadFile):
                    raise Problem(
                        422,
                        "invalid-request",
                        f"the form has no file named {file_field!r}; send the picture as "
                        f"'{file_field}' (e.g. curl -F {file_field}=@face.jpg)",
                        title="Invalid request",
                    )
                data = await upload.read(max_file_bytes + 1)
                texts = {name: value for name, value in form.items() if isinstance(value, str)}
    except BodyTooLarge as exc:
        raise too_large(exc.limit) from None
    except TimeoutError:
        raise body_late(timeout_s) from None
    if len(data) > max_file_bytes:
        raise too_large(max_file_bytes)
    return Upload(data, texts)


def _inline_refs(node: Any, defs: dict[str, Any]) -> Any:
    if isinstance(node, dict):
        ref = node.get("$ref")
        if isinstance(ref, str) and ref.startswith("#/$defs/"):
            return _inline_refs(defs[ref.removeprefix("#/$defs/")], defs)
        return {key: _inline_refs(value, defs) for key, value in node.items()}
    if isinstance(node, list):
        return [_inline_refs(item, defs) for item in node]
    return node


def json_request_body(model: type[BaseModel], *, required: bool = True) -> dict[str, Any]:
    """``openapi_extra`` documenting ``model`` as the route's JSON body (its schema inlined)."""
    schema = model.model_json_schema()
    defs = schema.pop("$defs", {})
    return {
        "requestBody": {
            "required": required,
            "content": {JSON_MEDIA_TYPE: {"schema": _inline_refs(schema, defs)}},
        }
    }
