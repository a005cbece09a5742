"""Avatars on disk: one folder per avatar under ``avatar_store_dir``, every file atomic.

Owns ``AvatarRecord`` (an avatar's metadata: status, progress, error, what the preparation
found), ``AvatarStatus`` and ``AvatarStore``, which keeps::

    <avatar_store_dir>/<id>/avatar.json          the record (written last)
    <avatar_store_dir>/<id>/source.<jpg|png|webp>  the upload as it came
    <avatar_store_dir>/<id>/picture.png          the framed picture at the output size
    <avatar_store_dir>/<id>/assets-<key>.npz     the engine's assets, per engine set-up

Every file is written under a temporary name in its folder, flushed to the disk and renamed
over its final name (then the folder is synced), so a crash leaves the old file or the new
one, never half of one; the record says ``ready`` only after the assets it names are in
place. ``load_all`` reads every folder back at start: leftover temporary files are removed,
and so is a folder without a readable record (a crash before its first write) or one being
deleted. The store creates its folder on the first avatar only.

Knows nothing about engines, HTTP or what the assets mean.
"""

from __future__ import annotations

import contextlib
import enum
import logging
import os
import re
import shutil
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import IO

import numpy as np
from pydantic import BaseModel, ConfigDict, ValidationError

from headcast.pipeline.media import AvatarAssets

logger = logging.getLogger(__name__)

RECORD_FILE = "avatar.json"
PICTURE_FILE = "picture.png"
SOURCE_STEM = "source"
ASSETS_PATTERN = "assets-{key}.npz"
TEMPORARY_SUFFIX = ".partial"
"""Files being written carry this suffix until they are renamed into place."""

DELETING_PREFIX = ".deleting-"
"""A folder being deleted is first renamed to this prefix plus its id (one atomic step)."""

AVATAR_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")
"""What an avatar id looks like (URL-safe; never a path)."""


class AvatarStatus(enum.StrEnum):
    """Where an avatar is."""

    PENDING = "pending"
    """Waiting for its turn to be prepared."""

    PREPARING = "preparing"
    """Its face is being framed and the engine computes its assets."""

    READY = "ready"
    """Sessions may use it."""

    FAILED = "failed"
    """Its preparation failed; ``error`` and ``message`` say why."""


class FaceBox(BaseModel):
    """Where the face is, in the picture's pixels."""

    model_config = ConfigDict(frozen=True)

    x: int
    y: int
    width: int
    height: int


class AvatarRecord(BaseModel):
    """One avatar's metadata, as kept in its ``avatar.json``."""

    model_config = ConfigDict(extra="ignore")

    id: str
    name: str | None = None
    """A label the uploader gave it."""

    prompt: str | None = None
    """The text prompt of its conditioning (``None``: the engine's default prompt)."""

    status: AvatarStatus = AvatarStatus.PENDING
    progress: float = 0.0
    """How far its preparation got, 0 to 1."""

    error: str | None = None
    """Why it failed, as a code (``no_face``, ``too_small``, ...)."""

    message: str | None = None
    """Why it failed, in words; or a note on the preparation (several faces)."""

    created_at: datetime
    updated_at: datetime
    source_format: str
    """The upload's format (``JPEG``, ``PNG``, ``WEBP``)."""

    source_extension: str
    source_width: int
    source_height: int
    faces: int | None = None
    """Faces found in the photo (the largest was used)."""

    face: FaceBox | None = None
    has_picture: bool = False
    """True once the framed picture is stored."""

    assets_key: str | None = None
    """The engine set-up its stored assets are for (``ready`` only for that set-up)."""

    prepare_seconds: float | None = None
    """Seconds from the start of its preparation to ready."""

    device_seconds: float | None = None
    """Seconds of the engine's device thread its assets took."""

    def touch(self) -> None:
        self.updated_at = datetime.now(UTC)


class AvatarStore:
    """The avatars under one folder (see the module docstring). Blocking file I/O: call it
    from a worker thread."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def folder(self, avatar_id: str) -> Path:
        if not AVATAR_ID.fullmatch(avatar_id):
            raise ValueError(f"{avatar_id!r} is not an avatar id")
        return self.root / avatar_id

    # -- writing -------------------------------------------------------------------------------

    def create(self, record: AvatarRecord, source: bytes) -> None:
        """A new avatar's folder with its upload and its record."""
        folder = self.folder(record.id)
        folder.mkdir(parents=True, exist_ok=False)
        source_path = folder / f"{SOURCE_STEM}.{record.source_extension}"
        _write_atomic(source_path, lambda file: file.write(source))
        self.save(record)
        _sync_folder(self.root)

    def save(self, record: AvatarRecord) -> None:
        """Replace the avatar's record (its folder must exist)."""
        payload = record.model_dump_json(indent=2).encode("utf-8")
        _write_atomic(self.folder(record.id) / RECORD_FILE, lambda file: file.write(payload))

    def write_picture(self, avatar_id: str, png: bytes) -> None:
        _write_atomic(self.folder(avatar_id) / PICTURE_FILE, lambda file: file.write(png))

    def write_assets(self, avatar_id: str, key: str, assets: AvatarAssets) -> None:
        """The engine's assets for set-up ``key`` (an ``.npz`` of the named arrays; no pickled
        objects, as ``read_assets`` loads none)."""
        _write_atomic(
            self._assets_path(avatar_id, key),
            lambda file: np.savez(file, allow_pickle=False, **assets),
        )

    def delete(self, avatar_id: str) -> None:
        """Remove the avatar: one rename makes it gone, then its files are removed."""
        folder = self.folder(avatar_id)
        doomed = self.root / f"{DELETING_PREFIX}{avatar_id}"
        try:
            folder.rename(doomed)
        except FileNotFoundError:
            return
        _sync_folder(self.root)
        shutil.rmtree(doomed, ignore_errors=True)

    # -- reading -------------------------------------------------------------------------------

    def read_source(self, record: AvatarRecord) -> bytes:
        return (self.folder(record.id) / f"{SOURCE_STEM}.{record.source_extension}").read_bytes()

    def read_picture(self, avatar_id: str) -> bytes:
        return (self.folder(avatar_id) / PICTURE_FILE).read_bytes()

    def has_assets(self, avatar_id: str, key: str) -> bool:
        return self._assets_path(avatar_id, key).is_file()

    def read_assets(self, avatar_id: str, key: str) -> AvatarAssets:
        with np.load(self._assets_path(avatar_id, key), allow_pickle=False) as stored:
            return {name: stored[name] for name in stored.files}

    def load_all(self) -> list[AvatarRecord]:
        """Every avatar's record, oldest first, after tidying up what a crash left."""
        if not self.root.is_dir():
            return []
        records = []
        for folder in sorted(self.root.iterdir()):
            if not folder.is_dir():
                continue
            if folder.name.startswith(DELETING_PREFIX) or not AVATAR_ID.fullmatch(folder.name):
                shutil.rmtree(folder, ignore_errors=True)
                continue
            for leftover in folder.glob(f"*{TEMPORARY_SUFFIX}"):
                leftover.unlink(missing_ok=True)
            record = self._read_record(folder)
            if record is None:
                logger.warning("avatar folder %s has no readable record; removing it", folder)
                shutil.rmtree(folder, ignore_errors=True)
                continue
            records.append(record)
        return sorted(records, key=lambda record: record.created_at)

    def _read_record(self, folder: Path) -> AvatarRecord | None:
        try:
            record = AvatarRecord.model_validate_json((folder / RECORD_FILE).read_bytes())
        except (OSError, ValidationError):
            return None
        return record if record.id == folder.name else None

    def _assets_path(self, avatar_id: str, key: str) -> Path:
        return self.folder(avatar_id) / ASSETS_PATTERN.format(key=key)


def _write_atomic(path: Path, write: Callable[[IO[bytes]], object]) -> None:
    """``write`` into a temporary file beside ``path``, sync it, rename it over ``path``."""
    temporary = path.with_name(path.name + TEMPORARY_SUFFIX)
    try:
        with temporary.open("wb") as file:
            write(file)
            file.flush()
            os.fsync(file.fileno())
        temporary.replace(path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    _sync_folder(path.parent)


def _sync_folder(folder: Path) -> None:
    """Make a rename in ``folder`` durable (POSIX: fsync the directory)."""
    with contextlib.suppress(OSError), _opened(folder) as descriptor:
        os.fsync(descriptor)


@contextlib.contextmanager
def _opened(folder: Path) -> Iterator[int]:
    descriptor = os.open(folder, os.O_RDONLY)
    try:
        yield descriptor
    finally:
        os.close(descriptor)
