"""What an engine is, and the errors of the machinery that runs engines.

Owns the ``Engine`` protocol (what a model backend provides, including the warm-up
real-time factor it measured), ``EngineFactory`` (how an engine is made from its typed
options and, in an engine group, its ``ParallelGroup``) and the ``EngineError`` family. Small
and free of torch and threads, so the engines (``pipeline.puppet``,
``pipeline.diffusion_engine``) and the machinery that drives them (``pipeline.engine``,
``pipeline.engine_processes``) can all import it without importing each other.

Knows nothing about threads, processes, queues or sessions.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any, Protocol, TypeVar, runtime_checkable

from headcast.pipeline.media import Avatar, Chunk, ChunkJob, PreparationStep, Reseed

if TYPE_CHECKING:
    from headcast.pipeline.parallel import ParallelGroup


class EngineError(RuntimeError):
    """Base class of errors raised by the engine machinery."""


class EngineNotReady(EngineError):
    """The engine has not finished loading and warming up (or failed to)."""


class MailboxFull(EngineError):
    """A session submitted more chunks than its mailbox can hold; wait for results first."""


class SessionClosed(EngineError):
    """The session was closed; it accepts no more jobs."""


class UnknownEngine(EngineError):
    """No engine is registered under the requested name."""


class WrongEngineOptions(EngineError, TypeError):
    """An engine was given the options of another engine."""


class EngineGroupFailed(EngineError):
    """A worker process of the engine group died; the group serves nothing more."""


class PreparationCancelled(EngineError):
    """An avatar's preparation was cancelled (or the engine stopped) before it finished."""


@runtime_checkable
class Engine(Protocol):
    """What a model backend provides. Every method runs on the device thread only.

    ``state`` is whatever per-session object the engine returns from ``open_session``; the
    engine itself holds no per-session state, so one loaded model serves every session.
    In an engine group of N > 1 ranks every rank's engine is called with the same arguments
    in the same order; rank 0's results are the group's.
    """

    name: str
    """Registry name, e.g. ``"puppet"``."""

    description: str
    """One line for logs and the demo page, saying honestly what the pictures are."""

    height: int
    width: int

    warmup_rtf: float | None
    """Compute seconds per second of media, measured while warming up in ``load``; ``None``
    until loaded, or for an engine that measures none (the puppet: capacity then comes from
    ``max_sessions_fallback``)."""

    def load(self) -> None:
        """Load weights, compile and warm up. Called once, first, on the device thread."""
        ...

    @property
    def avatar_cache_evictions(self) -> int:
        """Prepared avatars dropped from the engine's bounded device cache since it loaded."""
        ...

    def prepare_avatar(self, avatar: Avatar) -> Iterator[PreparationStep]:
        """Compute ``avatar``'s assets (its per-avatar conditioning) once, in short steps.

        Each ``next`` runs one step of device work; the device thread runs chunks of live
        sessions between steps. The last step carries the assets (what ``open_session``
        takes back as ``Avatar.assets``); the avatar is in the device cache afterwards.
        """
        ...

    def open_session(self, avatar: Avatar, seed: int) -> Any:
        """Prepare per-session state for ``avatar`` (cached per avatar where possible; from
        ``avatar.assets`` when given)."""
        ...

    def step(self, state: Any, job: ChunkJob) -> Chunk:
        """Turn one chunk of audio into 28 frames, advancing ``state``."""
        ...

    def reseed(self, state: Any, reseed: Reseed) -> None:
        """Make ``state`` continue from ``reseed.frames`` (the last frames the session showed,
        at the engine's output size) after ``reseed.silent_samples`` of silence: the next
        ``step`` then continues from the picture on screen. Called before a chunk whose job
        carries a ``Reseed`` (``idle_mode: loop``, when speech resumes after the idle loop)."""
        ...

    def close_session(self, state: Any) -> None:
        """Release per-session state."""
        ...


OptionsT_contra = TypeVar("OptionsT_contra", contravariant=True)


class EngineFactory(Protocol[OptionsT_contra]):
    """Makes (does not load) an engine from its typed options.

    ``parallel`` is this process's place in an engine group (``None``: no group, the engine
    picks its device as it always did). An engine that cannot split its work (the puppet)
    ignores it: every rank computes the same and rank 0 answers.
    """

    def __call__(
        self, options: OptionsT_contra, parallel: ParallelGroup | None = None
    ) -> Engine: ...
