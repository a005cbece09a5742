"""The avatars a server offers -- ``default`` and those added through the API -- and their
preparation.

Owns ``AvatarCatalog``: adding an avatar from an uploaded photo (checked from its header:
format, pixels; at most ``avatar_max_count`` avatars), listing, describing and deleting them
(``default`` stays; an avatar a live session uses cannot be deleted: the caller says so), the
avatar a new session asks for (``avatar_for_session``: the framed picture and the engine's
stored assets) and the background task that prepares avatars, one at a time:

1. on a worker thread: decode the photo (EXIF orientation), find the face, frame it at the
   output size (``pipeline.avatar_photo``); the picture is stored;
2. on the device thread of the least-loaded ready engine group, as background work between
   chunk jobs (``EngineWorker.prepare_avatar``): the engine's per-avatar assets;
3. on a worker thread: the assets are stored, then the record says ``ready``.

A preparation that fails marks its avatar ``failed`` with a code and a message, and touches
nothing else: no session, no engine state. Avatars found unfinished at start (a crash, a
restart, another engine set-up) are queued again; ready ones are never prepared twice.

Also owns the errors the routes map to HTTP answers. Knows nothing about HTTP or sessions.
"""

from __future__ import annotations

import asyncio
import io
import logging
import secrets
import time
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TypeVar

import numpy as np
import PIL.Image

from headcast.pipeline.avatar_art import DEFAULT_AVATAR_NAME
from headcast.pipeline.avatar_photo import (
    NO_FACE,
    TOO_SMALL,
    UNREADABLE,
    FaceDetector,
    PhotoError,
    decode_photo,
    frame_portrait,
    inspect_photo,
)
from headcast.pipeline.engine import EngineError, EngineWorker, Preparation
from headcast.pipeline.media import Avatar, AvatarAssets
from headcast.server.avatar_store import AvatarRecord, AvatarStatus, AvatarStore, FaceBox
from headcast.server.engine_groups import EngineGroups
from headcast.server.metrics import Metrics

logger = logging.getLogger(__name__)

ResultT = TypeVar("ResultT")

AVATAR_ID_BYTES = 9
"""Random bytes in an avatar id (12 URL-safe characters)."""

ENGINE_WAIT_S = 0.5
"""Pause between looks for a ready engine group while none is, in seconds."""

FRAMED_PROGRESS = 0.2
"""Progress once the face is framed; the engine's steps fill the rest up to 1."""

ENGINE_PROGRESS_SHARE = 0.75
"""Share of the progress bar the engine's steps fill (the assets' write is the rest)."""

ENGINE_FAILED = "engine_error"
"""Failure code: the engine could not compute the avatar's assets."""

INTERNAL_FAILED = "internal_error"
"""Failure code: the server failed while preparing (its log says why)."""

FAILURE_CODES = (UNREADABLE, NO_FACE, TOO_SMALL, ENGINE_FAILED, INTERNAL_FAILED)
"""Every failure code; ``headcast_avatar_failures_total`` exports each from the start, at 0."""


class AvatarError(Exception):
    """Base class of the catalog's errors; the message says what to do."""


class UnknownAvatar(AvatarError, LookupError):
    """No avatar has this id."""


class AvatarNotReady(AvatarError):
    """The avatar is still being prepared (``retry_after_s``: when to ask again)."""


class AvatarFailed(AvatarError):
    """The avatar's preparation failed; it cannot be used."""


class AvatarInUse(AvatarError):
    """A live session uses the avatar."""


class DefaultAvatarKept(AvatarError):
    """``default`` cannot be deleted."""


class TooManyAvatars(AvatarError):
    """The server keeps ``avatar_max_count`` avatars already."""


@dataclass(frozen=True)
class CatalogLimits:
    """What the catalog takes and makes."""

    height: int
    width: int
    """The framed picture's size: the output size."""

    max_pixels: int
    max_count: int


class AvatarCatalog:
    """Every avatar of one server (see the module docstring). Use on the event loop."""

    def __init__(
        self,
        *,
        store: AvatarStore,
        default: Avatar,
        limits: CatalogLimits,
        engines: EngineGroups,
        assets_key: str,
        metrics: Metrics,
        executor: Executor | None = None,
    ) -> None:
        self._store = store
        self._default = default
        self._limits = limits
        self._engines = engines
        self._assets_key = assets_key
        self._metrics = metrics
        for code in FAILURE_CODES:
            metrics.avatar_failures.labels(error=code)
        self._executor = executor
        self._records: dict[str, AvatarRecord] = {}
        self._queue: asyncio.Queue[str] = asyncio.Queue()
        self._task: asyncio.Task[None] | None = None
        self._current: Preparation | None = None
        self._detector: FaceDetector | None = None
        self._default_png: bytes | None = None

    # -- lifecycle -----------------------------------------------------------------------------

    async def start(self) -> None:
        """Read the store, queue what is unfinished, start the preparation task."""
        found = await self._run(self._load_store)
        for record, unfinished in found:
            self._records[record.id] = record
            if unfinished:
                record.status, record.progress = AvatarStatus.PENDING, 0.0
                self._queue.put_nowait(record.id)
        records = [record for record, _ in found]
        queued = self._queue.qsize()
        logger.info("avatars: %d in %s (%d to prepare)", len(records), self._store.root, queued)
        self._metrics.bind_avatars(self.counts)
        self._task = asyncio.get_running_loop().create_task(
            self._prepare_forever(), name="avatar preparation"
        )

    async def stop(self) -> None:
        """Stop preparing (an avatar under way stays unfinished on disk: queued again at the
        next start)."""
        if self._current is not None:
            self._current.cancel()
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    def _load_store(self) -> list[tuple[AvatarRecord, bool]]:
        """Every stored avatar, and whether it needs (more) preparation (worker thread)."""
        return [(record, self._needs_preparation(record)) for record in self._store.load_all()]

    def _needs_preparation(self, record: AvatarRecord) -> bool:
        if record.status is AvatarStatus.FAILED:
            return False
        if record.status is not AvatarStatus.READY or record.assets_key != self._assets_key:
            return True
        return not self._store.has_assets(record.id, self._assets_key)

    # -- the API -------------------------------------------------------------------------------

    def counts(self) -> dict[str, int]:
        """Avatars by status (``default`` counts as ready)."""
        counts: dict[str, int] = dict.fromkeys(AvatarStatus, 0)
        counts[AvatarStatus.READY] = 1
        for record in self._records.values():
            counts[record.status] += 1
        return counts

    def list(self) -> list[AvatarRecord]:
        """``default`` first, then every avatar, oldest first."""
        return [self._default_record(), *self._records.values()]

    def get(self, avatar_id: str) -> AvatarRecord:
        """The avatar's record; raises ``UnknownAvatar``."""
        if avatar_id == DEFAULT_AVATAR_NAME:
            return self._default_record()
        record = self._records.get(avatar_id)
        if record is None:
            raise UnknownAvatar(
                f"no avatar {avatar_id!r}; GET /v1/avatars lists them, POST /v1/avatars adds one"
            )
        return record

    async def create(self, photo: bytes, *, name: str | None, prompt: str | None) -> AvatarRecord:
        """Keep the photo and queue its preparation; answers at once with the ``pending``
        record. Raises ``UnsupportedPhoto``/``PhotoTooLarge`` (from its header) or
        ``TooManyAvatars``."""
        info = await self._run(inspect_photo, photo, self._limits.max_pixels)
        if len(self._records) >= self._limits.max_count:
            raise TooManyAvatars(
                f"the server keeps {self._limits.max_count} avatars, its most "
                "(avatar_max_count); delete one (DELETE /v1/avatars/{id}) before adding another"
            )
        now = datetime.now(UTC)
        record = AvatarRecord(
            id=secrets.token_urlsafe(AVATAR_ID_BYTES),
            name=name,
            prompt=prompt,
            created_at=now,
            updated_at=now,
            source_format=info.format,
            source_extension=info.extension,
            source_width=info.width,
            source_height=info.height,
        )
        self._records[record.id] = record  # counted from now on (no await before this)
        try:
            await self._run(self._store.create, record, photo)
        except BaseException:
            self._records.pop(record.id, None)
            raise
        self._queue.put_nowait(record.id)
        logger.info(
            "avatar %s added (%s %dx%d, %d bytes)", record.id, info.format, info.width,
            info.height, len(photo),
        )  # fmt: skip
        return record

    async def delete(self, avatar_id: str, *, in_use: Callable[[str], bool]) -> None:
        """Delete the avatar and its files (a preparation under way is cancelled).

        ``in_use(id)`` says whether a live session animates it. Raises ``UnknownAvatar``,
        ``DefaultAvatarKept`` or ``AvatarInUse``.
        """
        self.get(avatar_id)
        if avatar_id == DEFAULT_AVATAR_NAME:
            raise DefaultAvatarKept(
                "the default avatar is part of the server's configuration and cannot be deleted"
            )
        if in_use(avatar_id):
            raise AvatarInUse(
                f"a live session uses avatar {avatar_id!r}; delete it once its sessions ended"
            )
        self._records.pop(avatar_id)  # gone for every caller from here on
        current = self._current
        if current is not None and current.avatar.name == avatar_id:
            current.cancel()
        await self._run(self._store.delete, avatar_id)
        logger.info("avatar %s deleted", avatar_id)

    async def picture(self, avatar_id: str) -> bytes:
        """The framed picture as PNG; raises ``UnknownAvatar`` or ``AvatarNotReady`` (not
        framed yet)."""
        if avatar_id == DEFAULT_AVATAR_NAME:
            if self._default_png is None:
                self._default_png = await self._run(_png, self._default.image)
            return self._default_png
        record = self.get(avatar_id)
        if not record.has_picture:
            raise self._not_ready(record, "its picture is not framed yet")
        return await self._run(self._store.read_picture, avatar_id)

    async def avatar_for_session(self, avatar_id: str) -> Avatar:
        """What a new session animates: the framed picture and the engine's stored assets.

        Raises ``UnknownAvatar``, ``AvatarNotReady`` (still preparing) or ``AvatarFailed``.
        """
        if avatar_id == DEFAULT_AVATAR_NAME:
            return self._default
        record = self._usable(avatar_id)
        picture, assets = await self._run(self._read_for_session, avatar_id)
        self._usable(avatar_id)  # deleted (or re-queued) while the files were read?
        return Avatar(name=record.id, image=picture, prompt=record.prompt, assets=assets)

    def _usable(self, avatar_id: str) -> AvatarRecord:
        record = self.get(avatar_id)
        if record.status is AvatarStatus.FAILED:
            raise AvatarFailed(
                f"avatar {avatar_id!r} failed to prepare ({record.error}: {record.message}); "
                "upload another photo"
            )
        if record.status is not AvatarStatus.READY:
            raise self._not_ready(record, "it is still being prepared")
        return record

    def _not_ready(self, record: AvatarRecord, why: str) -> AvatarNotReady:
        return AvatarNotReady(
            f"avatar {record.id!r} is {record.status.value} ({record.progress:.0%}): {why}; "
            "retry shortly, or poll GET /v1/avatars/{id} until its status is ready"
        )

    def _read_for_session(self, avatar_id: str) -> tuple[np.ndarray, AvatarAssets]:
        return self._read_picture(avatar_id), self._store.read_assets(avatar_id, self._assets_key)

    def _read_picture(self, avatar_id: str) -> np.ndarray:
        """The stored framed picture, [H, W, 3] uint8 RGB."""
        with PIL.Image.open(io.BytesIO(self._store.read_picture(avatar_id))) as image:
            return np.asarray(image.convert("RGB"), dtype=np.uint8).copy()

    def _default_record(self) -> AvatarRecord:
        height, width = self._default.image.shape[:2]
        epoch = datetime.fromtimestamp(0, UTC)
        return AvatarRecord(
            id=DEFAULT_AVATAR_NAME,
            name=DEFAULT_AVATAR_NAME,
            status=AvatarStatus.READY,
            progress=1.0,
            created_at=epoch,
            updated_at=epoch,
            source_format="PNG",
            source_extension="png",
            source_width=width,
            source_height=height,
            has_picture=True,
        )

    # -- preparation ---------------------------------------------------------------------------

    async def _prepare_forever(self) -> None:
        while True:
            avatar_id = await self._queue.get()
            record = self._records.get(avatar_id)
            if record is None:
                continue  # deleted while it waited
            try:
                await self._prepare(record)
            except asyncio.CancelledError:
                raise
            except PhotoError as rejected:
                self._fail(record, rejected.code, str(rejected))
            except EngineError as error:
                self._fail(
                    record,
                    ENGINE_FAILED,
                    f"the engine could not prepare the avatar ({error}); upload the photo "
                    "again, and tell the operator if it keeps failing",
                )
            except Exception:
                logger.exception("preparing avatar %s failed", avatar_id)
                self._fail(
                    record,
                    INTERNAL_FAILED,
                    "the server failed while preparing the avatar (its log says why); upload "
                    "the photo again",
                )
            else:
                if record.status is AvatarStatus.READY and record.prepare_seconds is not None:
                    self._metrics.avatar_prepare_seconds.observe(record.prepare_seconds)

    async def _prepare(self, record: AvatarRecord) -> None:
        started = time.perf_counter()
        record.status, record.progress = AvatarStatus.PREPARING, 0.0
        await self._save(record)
        if not record.has_picture:
            await self._frame(record)
        if record.id not in self._records:
            return
        picture = await self._run(self._read_picture, record.id)
        worker = await self._engine_worker()
        avatar = Avatar(name=record.id, image=picture, prompt=record.prompt)
        assets, device_seconds = await self._on_engine(worker, avatar, record)
        if record.id not in self._records:
            return
        await self._run(self._store.write_assets, record.id, self._assets_key, assets)
        record.assets_key = self._assets_key
        record.status, record.progress = AvatarStatus.READY, 1.0
        record.prepare_seconds = time.perf_counter() - started
        record.device_seconds = device_seconds
        await self._save(record)
        logger.info(
            "avatar %s ready in %.2f s (%.3f s on the engine's device thread)",
            record.id, record.prepare_seconds, device_seconds,
        )  # fmt: skip

    async def _frame(self, record: AvatarRecord) -> None:
        """Decode, find the face, frame it; store the picture (worker thread)."""
        limits = self._limits

        def frame() -> tuple[bytes, int, FaceBox]:
            if self._detector is None:
                self._detector = FaceDetector()
            image = decode_photo(self._store.read_source(record))
            portrait = frame_portrait(
                image, self._detector.find(image), limits.height, limits.width
            )
            face = FaceBox(
                x=portrait.face.x,
                y=portrait.face.y,
                width=portrait.face.width,
                height=portrait.face.height,
            )
            return _png(portrait.picture), portrait.faces, face

        png, faces, face = await self._run(frame)
        if record.id not in self._records:
            return
        await self._run(self._store.write_picture, record.id, png)
        record.has_picture, record.faces, record.face = True, faces, face
        record.progress = FRAMED_PROGRESS
        if faces > 1:
            record.message = f"{faces} faces were found; the largest one was used"
        await self._save(record)

    async def _engine_worker(self) -> EngineWorker:
        while (worker := self._engines.worker_for_preparation()) is None:
            await asyncio.sleep(ENGINE_WAIT_S)
        return worker

    async def _on_engine(
        self, worker: EngineWorker, avatar: Avatar, record: AvatarRecord
    ) -> tuple[AvatarAssets, float]:
        """The engine's assets of ``avatar``, computed between chunk jobs on ``worker``'s
        device thread; returns them and the device thread's time."""
        loop = asyncio.get_running_loop()
        finished: asyncio.Future[AvatarAssets] = loop.create_future()

        def progress(fraction: float) -> None:
            record.progress = FRAMED_PROGRESS + ENGINE_PROGRESS_SHARE * fraction

        def settle(assets: AvatarAssets | None, error: BaseException | None) -> None:
            if finished.done():
                return
            if error is not None:
                finished.set_exception(error)
            else:
                finished.set_result(assets or {})

        preparation = worker.prepare_avatar(
            avatar,
            on_progress=lambda fraction: _call_soon(loop, progress, fraction),
            done=lambda assets, error: _call_soon(loop, settle, assets, error),
        )
        self._current = preparation
        try:
            assets = await finished
        except asyncio.CancelledError:
            preparation.cancel()
            raise
        finally:
            self._current = None
        return assets, preparation.device_seconds

    def _fail(self, record: AvatarRecord, code: str, message: str) -> None:
        if record.id not in self._records:
            return
        record.status, record.error, record.message = AvatarStatus.FAILED, code, message
        self._metrics.avatar_failures.labels(error=code).inc()
        logger.info("avatar %s failed: %s (%s)", record.id, code, message)
        task = asyncio.get_running_loop().create_task(self._save(record))
        task.add_done_callback(_log_save_failure)

    async def _save(self, record: AvatarRecord) -> None:
        record.touch()
        if record.id in self._records:
            await self._run(self._store.save, record.model_copy())

    async def _run(self, function: Callable[..., ResultT], *args: Any) -> ResultT:
        """``function(*args)`` on a worker thread (file I/O and image work)."""
        return await asyncio.get_running_loop().run_in_executor(self._executor, function, *args)


def _png(image: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    PIL.Image.fromarray(image).save(buffer, format="PNG")
    return buffer.getvalue()


def _call_soon(
    loop: asyncio.AbstractEventLoop, callback: Callable[..., None], *args: object
) -> None:
    """From the device thread: ``callback(*args)`` on the loop (dropped once it closed)."""
    try:
        loop.call_soon_threadsafe(callback, *args)
    except RuntimeError:
        logger.debug("an avatar preparation reported after the event loop closed")


def _log_save_failure(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        logger.error("saving a failed avatar's record failed", exc_info=task.exception())


__all__ = [
    "AvatarCatalog",
    "AvatarError",
    "AvatarFailed",
    "AvatarInUse",
    "AvatarNotReady",
    "CatalogLimits",
    "DefaultAvatarKept",
    "TooManyAvatars",
    "UnknownAvatar",
]
