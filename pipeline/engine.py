"""The device worker: one thread per device that owns the model and runs every chunk.

Owns the registry of engines by name (each with its typed options; the ``Engine`` protocol
and the errors live in ``pipeline.engine_api`` and are re-exported here), the job queue into
the device thread (a job that carries a ``Reseed`` re-seeds its session right before its
step) and the bounded per-session mailboxes out of it. Errors raised by an
engine travel to the session that caused them as values (``ChunkFailure``); other sessions
keep running.

Avatar preparation (``prepare_avatar``) is background work: the device thread runs one step
of it (``Engine.prepare_avatar``'s short steps of device work) only when no session job is
waiting, so a chunk of a live session waits at most one step, never a whole preparation.

Knows nothing about asyncio: a session gives a ``notify`` callable that the device thread
calls after each delivery (the streaming side wraps ``loop.call_soon_threadsafe``).
"""

from __future__ import annotations

import itertools
import logging
import queue
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from headcast.pipeline.engine_api import (
    Engine,
    EngineError,
    EngineFactory,
    EngineGroupFailed,
    EngineNotReady,
    MailboxFull,
    PreparationCancelled,
    SessionClosed,
    UnknownEngine,
    WrongEngineOptions,
)
from headcast.pipeline.engine_options import (
    FlashTalkOptions,
    OmniAvatarOptions,
    PuppetOptions,
    TinyOptions,
)
from headcast.pipeline.media import Avatar, AvatarAssets, Chunk, ChunkJob, PreparationStep

if TYPE_CHECKING:
    from headcast.pipeline.parallel import ParallelGroup

__all__ = [
    "ChunkFailure",
    "Engine",
    "EngineError",
    "EngineFactory",
    "EngineGroupFailed",
    "EngineNotReady",
    "EngineRegistry",
    "EngineSpec",
    "EngineWorker",
    "Mailbox",
    "MailboxFull",
    "MailboxItem",
    "Preparation",
    "PreparationCancelled",
    "SessionClosed",
    "SessionHandle",
    "UnknownEngine",
    "WrongEngineOptions",
    "default_registry",
]

logger = logging.getLogger(__name__)

DEFAULT_MAILBOX_SIZE = 4
"""Chunks a session may have in flight (queued, running or undelivered) at once."""

OptionsT = TypeVar("OptionsT")

JOIN_TIMEOUT_S = 30.0
"""How long ``shutdown`` waits for the device thread to finish its current job, in seconds."""


@dataclass(frozen=True)
class EngineSpec(Generic[OptionsT]):
    """How to make one registered engine: its factory and the options type it takes."""

    factory: EngineFactory[OptionsT]
    options_type: type[OptionsT]


class EngineRegistry:
    """Engines by name. Built by ``default_registry()``; no module-level mutable state."""

    def __init__(self) -> None:
        self._specs: dict[str, EngineSpec[Any]] = {}

    def register(
        self, name: str, factory: EngineFactory[OptionsT], options_type: type[OptionsT]
    ) -> None:
        """Register ``factory(options, parallel) -> Engine`` under ``name``; ``options_type``
        is the (frozen dataclass) type of its options."""
        if name in self._specs:
            raise ValueError(f"engine {name!r} is already registered")
        self._specs[name] = EngineSpec(factory, options_type)

    def names(self) -> list[str]:
        """The registered engine names, sorted."""
        return sorted(self._specs)

    def options_type(self, name: str) -> type[Any]:
        """The options type engine ``name`` takes; raises ``UnknownEngine``."""
        return self._spec(name).options_type

    def create(
        self, name: str, options: object | None = None, parallel: ParallelGroup | None = None
    ) -> Engine:
        """Create (not load) the engine ``name`` with its typed ``options`` (``None``: the
        defaults) as rank ``parallel`` of an engine group (``None``: no group)."""
        spec = self._spec(name)
        if options is None:
            options = spec.options_type()
        if not isinstance(options, spec.options_type):
            raise WrongEngineOptions(
                f"engine {name!r} takes {spec.options_type.__name__}, got "
                f"{type(options).__name__}; build its options with "
                f"registry.options_type({name!r})(...)"
            )
        return spec.factory(options, parallel)

    def _spec(self, name: str) -> EngineSpec[Any]:
        try:
            return self._specs[name]
        except KeyError:
            raise UnknownEngine(
                f"unknown engine {name!r}; choose one of: {', '.join(self.names())}"
            ) from None


def default_registry() -> EngineRegistry:
    """The registry of the engines headcast ships."""
    registry = EngineRegistry()
    registry.register("puppet", _puppet, PuppetOptions)
    registry.register("tiny", _tiny, TinyOptions)
    registry.register("flashtalk", _flashtalk, FlashTalkOptions)
    registry.register("omniavatar", _omniavatar, OmniAvatarOptions)
    return registry


# The factories import their engine when called: a puppet server (or worker process) never
# imports torch and the model code.


def _puppet(options: PuppetOptions, parallel: ParallelGroup | None = None) -> Engine:
    from headcast.pipeline.puppet import puppet_engine

    return puppet_engine(options, parallel)


def _tiny(options: TinyOptions, parallel: ParallelGroup | None = None) -> Engine:
    from headcast.pipeline.diffusion_engine import tiny_engine

    return tiny_engine(options, parallel)


def _flashtalk(options: FlashTalkOptions, parallel: ParallelGroup | None = None) -> Engine:
    from headcast.pipeline.diffusion_engine import flashtalk_engine

    return flashtalk_engine(options, parallel)


def _omniavatar(options: OmniAvatarOptions, parallel: ParallelGroup | None = None) -> Engine:
    from headcast.pipeline.omniavatar.stream_engine import omniavatar_engine

    return omniavatar_engine(options, parallel)


@dataclass(frozen=True)
class ChunkFailure:
    """An engine error for chunk ``index``, delivered to the session as a value."""

    index: int
    error: BaseException

    @property
    def message(self) -> str:
        return f"{type(self.error).__name__}: {self.error}"


MailboxItem = Chunk | ChunkFailure


class Mailbox:
    """A session's bounded, thread-safe box of results, filled by the device thread.

    Its bound is enforced at submission (a session cannot have more than ``capacity``
    chunks queued, running or undelivered), so the device thread never blocks on it.
    """

    def __init__(self, capacity: int, notify: Callable[[], None]) -> None:
        if capacity < 1:
            raise ValueError(f"mailbox capacity must be at least 1, got {capacity}")
        self.capacity = capacity
        self._notify = notify
        self._items: deque[MailboxItem] = deque()
        self._in_flight = 0
        self._lock = threading.Lock()
        self._closed = False

    def _reserve(self) -> None:
        with self._lock:
            if self._in_flight >= self.capacity:
                raise MailboxFull(
                    f"{self._in_flight} chunks already in flight (capacity {self.capacity})"
                )
            self._in_flight += 1

    def _release(self) -> None:
        """Give back a reserved slot whose job will never deliver (dropped or cancelled)."""
        with self._lock:
            self._in_flight -= 1

    def _deliver(self, item: MailboxItem) -> None:
        with self._lock:
            if self._closed:  # nobody will read it: a chunk's frames are tens of MB
                return
            self._items.append(item)
        try:
            self._notify()
        except Exception:  # e.g. the session's event loop closed; other sessions go on
            logger.exception("a session's notify callback failed; its result stays queued")

    def get_nowait(self) -> MailboxItem | None:
        """Take the oldest result, or ``None`` when there is none yet."""
        with self._lock:
            if not self._items:
                return None
            self._in_flight -= 1
            return self._items.popleft()

    def _close(self) -> None:
        """Drop every undelivered result and refuse later ones (the session closed)."""
        with self._lock:
            self._closed = True
            self._items.clear()

    @property
    def in_flight(self) -> int:
        """Chunks submitted and not yet taken out."""
        with self._lock:
            return self._in_flight


class SessionHandle:
    """A session's link to the device thread: submit chunk jobs, read the mailbox."""

    def __init__(self, worker: EngineWorker, session_id: int, mailbox: Mailbox) -> None:
        self._worker = worker
        self.session_id = session_id
        self.mailbox = mailbox
        self.closed = False
        self.generation = 0
        """Bumped by ``drop_pending``: queued jobs of an older generation are skipped."""
        self._pending: list[_StepJob] = []  # submitted, not yet started nor dropped
        self._pending_lock = threading.Lock()

    def submit(self, job: ChunkJob) -> None:
        """Queue one chunk job; raises MailboxFull or SessionClosed instead of blocking."""
        if self.closed:
            raise SessionClosed(f"session {self.session_id} is closed")
        self.mailbox._reserve()
        item = _StepJob(self, job, self.generation)
        with self._pending_lock:
            self._pending.append(item)
        try:
            self._worker._put(item)
        except SessionClosed:
            if self._claim(item):
                self.mailbox._release()
            raise

    def drop_pending(self) -> None:
        """Skip every job submitted so far that has not started (interrupt).

        Their mailbox slots are free again when this returns; a job already running on the
        device thread still delivers its chunk.
        """
        with self._pending_lock:
            self.generation += 1
            dropped, self._pending = self._pending, []
            for item in dropped:
                item.claimed = True
        for _ in dropped:
            self.mailbox._release()

    def _claim(self, item: _StepJob) -> bool:
        """Take ``item`` off the pending list; False if ``drop_pending`` already took it."""
        with self._pending_lock:
            if item.claimed:
                return False
            item.claimed = True
            self._pending.remove(item)
            return True

    def close(self) -> None:
        """Release the engine state; queued jobs of this session are skipped."""
        if self.closed:
            return
        self.closed = True
        self.mailbox._close()
        if not self._worker._stopped:  # after shutdown the thread already closed every state
            self._worker._put(_CloseJob(self))


@dataclass
class _OpenJob:
    handle: SessionHandle
    avatar: Avatar
    seed: int
    done: Callable[[BaseException | None], None]


@dataclass(eq=False)
class _StepJob:
    handle: SessionHandle
    job: ChunkJob
    generation: int
    claimed: bool = False
    """Set once, under the handle's lock, by whichever of the device thread (starting the
    job) or ``drop_pending`` (dropping it) comes first; the other leaves it alone."""


@dataclass
class _CloseJob:
    handle: SessionHandle


PreparationDone = Callable[[AvatarAssets | None, BaseException | None], None]
"""Called once from the device thread with the avatar's assets, or the error that stopped
its preparation (``PreparationCancelled`` when cancelled or the engine stopped)."""


class Preparation:
    """An avatar's preparation queued on the device thread (``EngineWorker.prepare_avatar``)."""

    def __init__(
        self,
        avatar: Avatar,
        on_progress: Callable[[float], None],
        done: PreparationDone,
    ) -> None:
        self.avatar = avatar
        self._on_progress = on_progress
        self._done = done
        self._cancelled = threading.Event()
        self._steps: Iterator[PreparationStep] | None = None
        self.device_seconds = 0.0
        """Time the device thread spent on this preparation's steps so far."""

    def cancel(self) -> None:
        """Stop before the next step (a step already running finishes); ``done`` gets
        ``PreparationCancelled``. Safe from any thread."""
        self._cancelled.set()

    @property
    def cancelled(self) -> bool:
        return self._cancelled.is_set()

    # -- on the device thread ----------------------------------------------------------------

    def _advance(self, engine: Engine) -> bool:
        """Run one step; True once finished (done was called)."""
        if self.cancelled:
            return self._finish(
                None, PreparationCancelled("the avatar's preparation was cancelled")
            )
        started = time.perf_counter()
        try:
            if self._steps is None:
                self._steps = iter(engine.prepare_avatar(self.avatar))
            step = next(self._steps)
        except StopIteration:
            return self._finish(
                None, EngineError(f"engine {engine.name!r} ended a preparation without assets")
            )
        except Exception as exc:
            logger.exception("preparing avatar %r failed", self.avatar.name)
            return self._finish(None, exc)
        finally:
            self.device_seconds += time.perf_counter() - started
        if step.assets is not None:
            return self._finish(step.assets, None)
        try:
            self._on_progress(step.progress)
        except Exception:
            logger.exception("the progress callback of avatar %r failed", self.avatar.name)
        return False

    def _finish(self, assets: AvatarAssets | None, error: BaseException | None) -> bool:
        close = getattr(self._steps, "close", None)  # a generator's clean-up (remote ranks)
        self._steps = None
        if close is not None:
            try:
                close()
            except Exception:
                logger.exception("closing the preparation of avatar %r failed", self.avatar.name)
        try:
            self._done(assets, error)
        except Exception:
            logger.exception("the done callback of avatar %r failed", self.avatar.name)
        return True


@dataclass
class _PreparationStep:
    """Run one step of ``preparation`` (made by the device thread itself, never queued)."""

    preparation: Preparation


_STOP = object()


class EngineWorker:
    """The one thread that owns a device: loads the engine, then runs jobs in order.

    Sessions are opened with ``open_session`` and talk to the thread through their
    ``SessionHandle``. ``ready`` is set once the engine has loaded and warmed up;
    ``load_error`` holds the exception if loading failed.
    """

    def __init__(self, engine: Engine, *, device_name: str = "cpu") -> None:
        self.engine = engine
        self.thread_name = f"headcast-engine-{device_name}"
        self.ready = threading.Event()
        self.load_error: BaseException | None = None
        self.load_seconds: float | None = None
        self._queue: queue.SimpleQueue[object] = queue.SimpleQueue()
        self._preparations: deque[Preparation] = deque()
        """Avatar preparations taken off the queue, oldest first (device thread only)."""
        self._states: dict[int, Any] = {}
        self._open_errors: dict[int, BaseException] = {}
        self._ids = itertools.count(1)
        self._thread: threading.Thread | None = None
        self._stopped = False

    # -- lifecycle -------------------------------------------------------------------------

    def start(self) -> None:
        """Start the device thread (loading happens on it)."""
        if self._thread is not None:
            raise EngineError("the engine worker is already started")
        self._thread = threading.Thread(target=self._run, name=self.thread_name, daemon=True)
        self._thread.start()

    def wait_ready(self, timeout: float | None = None) -> None:
        """Block until loaded; raise EngineNotReady on failure or timeout."""
        if not self.ready.wait(timeout):
            raise EngineNotReady(f"engine {self.engine.name!r} not ready after {timeout} s")
        if self.load_error is not None:
            raise EngineNotReady(f"engine {self.engine.name!r} failed to load: {self.load_error}")

    @property
    def is_ready(self) -> bool:
        """True once the engine loaded and warmed up without error."""
        return self.ready.is_set() and self.load_error is None

    @property
    def alive(self) -> bool:
        """True while the device thread runs."""
        return self._thread is not None and self._thread.is_alive()

    def shutdown(self, timeout: float = JOIN_TIMEOUT_S) -> None:
        """Stop taking jobs, let the current one finish, and join the thread."""
        if self._thread is None or self._stopped:
            return
        self._stopped = True
        self._queue.put(_STOP)
        self._thread.join(timeout)
        if self._thread.is_alive():
            logger.error("engine thread %s did not stop within %.0f s", self.thread_name, timeout)

    # -- sessions --------------------------------------------------------------------------

    def open_session(
        self,
        avatar: Avatar,
        *,
        notify: Callable[[], None],
        seed: int = 0,
        mailbox_size: int = DEFAULT_MAILBOX_SIZE,
        done: Callable[[BaseException | None], None] | None = None,
    ) -> SessionHandle:
        """Create a session; its engine state is prepared on the device thread.

        ``done(error_or_None)`` is called from the device thread once the state is ready
        (or preparing it failed; then the session's jobs fail with that error too).
        """
        if not self.is_ready:
            raise EngineNotReady("the engine is not ready; poll /readyz before opening sessions")
        if self._stopped:
            raise EngineNotReady("the engine is shutting down")
        handle = SessionHandle(self, next(self._ids), Mailbox(mailbox_size, notify))
        self._put(_OpenJob(handle, avatar, seed, done or (lambda _error: None)))
        return handle

    def prepare_avatar(
        self,
        avatar: Avatar,
        *,
        done: PreparationDone,
        on_progress: Callable[[float], None] | None = None,
    ) -> Preparation:
        """Queue ``avatar``'s preparation (``Engine.prepare_avatar``) as background work.

        The device thread runs its steps one at a time, only while no session job waits.
        ``on_progress(fraction)`` and ``done(assets, error)`` are called from the device
        thread. Raises ``EngineNotReady`` before the engine is loaded or once it stops.
        """
        if not self.is_ready:
            raise EngineNotReady("the engine is not ready; poll /readyz before preparing avatars")
        if self._stopped:
            raise EngineNotReady("the engine is shutting down")
        preparation = Preparation(avatar, on_progress or (lambda _fraction: None), done)
        self._put(preparation)
        return preparation

    def _put(self, item: object) -> None:
        if self._stopped:
            raise SessionClosed("the engine is shutting down")
        self._queue.put(item)

    # -- the device thread -----------------------------------------------------------------

    def _run(self) -> None:
        started = time.perf_counter()
        try:
            self.engine.load()
        except BaseException as exc:  # report, never crash silently
            logger.exception("engine %r failed to load", self.engine.name)
            self.load_error = exc
            self.ready.set()
            return
        self.load_seconds = time.perf_counter() - started
        logger.info(
            "engine %r ready in %.2f s: %s",
            self.engine.name,
            self.load_seconds,
            self.engine.description,
        )
        self.ready.set()
        while True:
            item = self._next_item()
            if item is _STOP:
                break
            self._handle(item)
            # A job reaches its session (handle -> mailbox -> notify -> the whole session:
            # tracks, peer connection, frames); while the thread waits for the next job it
            # must not keep the last one, or a closed session stays in memory until then.
            del item
        for state in self._states.values():
            self._close_state(state)
        self._states.clear()
        self._open_errors.clear()
        stopped = PreparationCancelled("the engine stopped before the avatar was prepared")
        while self._preparations:
            self._preparations.popleft()._finish(None, stopped)

    def _next_item(self) -> object:
        """The next queued job; while none waits, a step of the oldest preparation."""
        if not self._preparations:
            return self._queue.get()
        try:
            return self._queue.get_nowait()
        except queue.Empty:
            return _PreparationStep(self._preparations[0])

    def _handle(self, item: object) -> None:
        if isinstance(item, _OpenJob):
            self._open(item)
        elif isinstance(item, _StepJob):
            self._step(item)
        elif isinstance(item, _CloseJob):
            self._open_errors.pop(item.handle.session_id, None)
            state = self._states.pop(item.handle.session_id, None)
            if state is not None:
                self._close_state(state)
        elif isinstance(item, Preparation):
            self._preparations.append(item)  # background: stepped while no job waits
        elif isinstance(item, _PreparationStep):
            if item.preparation._advance(self.engine):
                self._preparations.remove(item.preparation)
        else:  # pragma: no cover - programming error
            raise TypeError(f"unknown job {item!r}")

    def _open(self, item: _OpenJob) -> None:
        error: BaseException | None = None
        try:
            self._states[item.handle.session_id] = self.engine.open_session(item.avatar, item.seed)
        except Exception as exc:
            logger.exception("preparing session %d failed", item.handle.session_id)
            error = exc
            self._open_errors[item.handle.session_id] = exc
        try:
            item.done(error)
        except Exception:
            logger.exception("the open callback of session %d failed", item.handle.session_id)

    def _step(self, item: _StepJob) -> None:
        handle = item.handle
        if not handle._claim(item):  # dropped by drop_pending, which freed its slot
            return
        if handle.closed or item.generation != handle.generation:
            handle.mailbox._release()
            return
        state = self._states.get(handle.session_id)
        if state is None:
            reason = self._open_errors.get(handle.session_id)
            result: MailboxItem = ChunkFailure(
                item.job.index,
                reason
                if reason is not None
                else SessionClosed("the session's engine state could not be prepared"),
            )
        else:
            started = time.perf_counter()
            try:
                job = item.job
                if job.reseed is not None:  # the session played its idle loop meanwhile
                    self.engine.reseed(state, job.reseed)
                    job = replace(job, reseed=None)
                chunk = self.engine.step(state, job)
                elapsed = time.perf_counter() - started
                result = Chunk(
                    index=chunk.index,
                    frames=chunk.frames,
                    audio=chunk.audio,
                    compute_seconds=chunk.compute_seconds or elapsed,
                    stats=chunk.stats,
                )
            except Exception as exc:
                logger.exception("chunk %d of session %d failed", item.job.index, handle.session_id)
                result = ChunkFailure(item.job.index, exc)
        handle.mailbox._deliver(result)

    def _close_state(self, state: Any) -> None:
        try:
            self.engine.close_session(state)
        except Exception:
            logger.exception("closing an engine session failed")
