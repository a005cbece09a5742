"""``/v1/avatars``: add a face from a photo, list, describe, show and delete avatars.

Owns the routes and their bodies. ``POST /v1/avatars`` takes a ``multipart/form-data``
upload (``image``, optional ``name`` and ``prompt``), checks the photo from its header and
answers ``202`` with the ``pending`` avatar and its ``Location`` at once: the catalog
prepares it in the background (``server.avatars``). With API keys configured every route
needs one (a session token is not one), checked before the body is read; the upload's body
is bounded by ``avatar_max_bytes`` in the body-limit middleware (``AVATARS_PATH``).

Knows nothing about how avatars are prepared or stored.
"""

from __future__ import annotations

import re
from datetime import datetime

from fastapi import APIRouter, Request, Response, status
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, Field, ValidationError

from headcast.server.avatar_store import AvatarRecord, AvatarStatus, FaceBox
from headcast.server.deps import AvatarKeyDep, AvatarsDep, RegistryDep, SettingsDep
from headcast.server.request_body import read_upload

router = APIRouter(prefix="/v1/avatars", tags=["avatars"])

AVATARS_PATH = re.compile(r"/v1/avatars/?")
"""The upload route, for its own body limit (``server.request_body.BodyLimits``)."""

IMAGE_FIELD = "image"
MAX_NAME_CHARS = 100
MAX_PROMPT_CHARS = 1_000

PICTURE_CACHE_CONTROL = "private, max-age=3600"
"""An avatar's framed picture never changes once made."""


class AvatarForm(BaseModel):
    """The text fields of an upload."""

    name: str | None = Field(None, min_length=1, max_length=MAX_NAME_CHARS)
    """A label for people; avatars are addressed by their ``id``."""

    prompt: str | None = Field(None, min_length=1, max_length=MAX_PROMPT_CHARS)
    """The text prompt the model is conditioned on (default: the engine's)."""


class SourcePhoto(BaseModel):
    format: str
    width: int
    height: int


class AvatarBody(BaseModel):
    """One avatar as the API shows it."""

    id: str
    """Pass it as ``avatar`` to ``POST /v1/sessions``."""

    name: str | None
    prompt: str | None
    status: AvatarStatus
    """``pending``, ``preparing``, ``ready`` or ``failed``."""

    progress: float
    """How far the preparation got, 0 to 1."""

    error: str | None
    """Why it failed, as a code: ``no_face``, ``too_small``, ``unreadable``,
    ``engine_error``, ``internal_error``."""

    message: str | None
    """Why it failed, in words a person understands; or a note (several faces found)."""

    preview_url: str | None
    """The framed picture (PNG, the output size) once made."""

    faces: int | None
    """Faces found in the photo (the largest was used)."""

    face: FaceBox | None
    """Where that face is in the framed picture."""

    source: SourcePhoto
    created_at: datetime
    updated_at: datetime
    prepare_seconds: float | None
    """Seconds from the start of its preparation to ready."""


class AvatarList(BaseModel):
    avatars: list[AvatarBody]


def avatar_body(record: AvatarRecord) -> AvatarBody:
    return AvatarBody(
        id=record.id,
        name=record.name,
        prompt=record.prompt,
        status=record.status,
        progress=round(record.progress, 3),
        error=record.error,
        message=record.message,
        preview_url=f"{router.prefix}/{record.id}/picture" if record.has_picture else None,
        faces=record.faces,
        face=record.face,
        source=SourcePhoto(
            format=record.source_format, width=record.source_width, height=record.source_height
        ),
        created_at=record.created_at,
        updated_at=record.updated_at,
        prepare_seconds=record.prepare_seconds,
    )


UPLOAD_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": [IMAGE_FIELD],
                    "properties": {
                        IMAGE_FIELD: {
                            "type": "string",
                            "format": "binary",
                            "description": "a JPEG, PNG or WebP photo of one face",
                        },
                        "name": {"type": "string", "maxLength": MAX_NAME_CHARS},
                        "prompt": {"type": "string", "maxLength": MAX_PROMPT_CHARS},
                    },
                }
            }
        },
    }
}


@router.post(
    "",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=AvatarBody,
    openapi_extra=UPLOAD_BODY,
)
async def create_avatar(
    request: Request,
    response: Response,
    _api_key: AvatarKeyDep,
    avatars: AvatarsDep,
    settings: SettingsDep,
) -> AvatarBody:
    """Add an avatar from a photo: 202 with the ``pending`` avatar; poll its ``Location``.

    415: not ``multipart/form-data``, or the file is not a JPEG, PNG or WebP picture; 413:
    over ``avatar_max_bytes`` (before the body is read) or ``avatar_max_pixels``; 409: the
    server keeps ``avatar_max_count`` avatars already.
    """
    upload = await read_upload(
        request,
        IMAGE_FIELD,
        max_file_bytes=settings.avatar_max_bytes,
        timeout_s=settings.avatar_upload_timeout_s,
    )
    try:
        form = AvatarForm.model_validate(upload.fields)
    except ValidationError as exc:
        raise RequestValidationError(
            [{**error, "loc": ("body", *error["loc"])} for error in exc.errors()]
        ) from None
    record = await avatars.create(upload.data, name=form.name, prompt=form.prompt)
    response.headers["Location"] = f"{router.prefix}/{record.id}"
    return avatar_body(record)


@router.get("", response_model=AvatarList)
async def list_avatars(_api_key: AvatarKeyDep, avatars: AvatarsDep) -> AvatarList:
    """Every avatar: ``default`` first, then the added ones, oldest first."""
    return AvatarList(avatars=[avatar_body(record) for record in avatars.list()])


@router.get("/{avatar_id}", response_model=AvatarBody)
async def get_avatar(avatar_id: str, _api_key: AvatarKeyDep, avatars: AvatarsDep) -> AvatarBody:
    """One avatar: its status, progress, error and preview URL."""
    return avatar_body(avatars.get(avatar_id))


@router.get(
    "/{avatar_id}/picture",
    response_class=Response,
    responses={200: {"content": {"image/png": {}}}},
)
async def get_picture(avatar_id: str, _api_key: AvatarKeyDep, avatars: AvatarsDep) -> Response:
    """The avatar's framed picture (PNG at the output size); 409 until it is made."""
    png = await avatars.picture(avatar_id)
    return Response(png, media_type="image/png", headers={"Cache-Control": PICTURE_CACHE_CONTROL})


@router.delete("/{avatar_id}", status_code=status.HTTP_204_NO_CONTENT)
async def delete_avatar(
    avatar_id: str, _api_key: AvatarKeyDep, avatars: AvatarsDep, registry: RegistryDep
) -> Response:
    """Delete the avatar and its files; 409 while a session uses it, or for ``default``."""
    await avatars.delete(avatar_id, in_use=registry.avatar_in_use)
    return Response(status_code=status.HTTP_204_NO_CONTENT)
