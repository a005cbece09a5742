"""What the server and an engine group's worker processes say to each other, and how.

Owns ``GroupSpec`` (what a worker process is told when it starts), the requests rank 0 takes
from the server and hands on to the other ranks (``OpenRequest``, ``StepRequest``,
``ReseedRequest``, ``CloseRequest``, ``PrepareRequest``, ``StopRequest``; ``Heartbeat`` between
ranks only), the replies rank 0
sends back (``Loaded``, ``Done``, ``Failed``) and ``send_message`` / ``recv_message``:
pickle protocol 5 with out-of-band buffers over a ``multiprocessing`` connection (a Unix
socket pair), so a chunk's frames (28.9 MB at 768x448) cross as one raw write and one raw
read instead of being copied into and out of a pickle.

Knows nothing about engines' internals, threads, sessions or torch.
"""

from __future__ import annotations

import pickle
from dataclasses import dataclass, replace
from multiprocessing.connection import Connection

import numpy as np

from headcast.pipeline.engine_options import EngineOptions
from headcast.pipeline.media import Avatar, Chunk, ChunkJob, PreparationStep, Reseed

PICKLE_PROTOCOL = 5
"""The pickle protocol with out-of-band buffers (PEP 574)."""


@dataclass(frozen=True)
class GroupSpec:
    """What one worker process of an engine group is told when it starts."""

    engine: str
    """Registry name of the engine every rank creates."""

    options: EngineOptions
    """The engine's options (the same on every rank)."""

    label: str
    """The group's name in logs, e.g. ``"group 1"``."""

    rank: int
    """This process's rank; rank 0 talks to the server."""

    world_size: int
    """Processes in the group."""

    device: str
    """This rank's device: ``"cuda:<index>"``, or ``"cpu"`` for a CPU worker slot."""

    master_port: int
    """Free TCP port on 127.0.0.1 where ``torch.distributed``'s store of the group listens
    (unused when ``world_size`` is 1)."""

    log_level: str = "INFO"
    """Level of the worker's log (written to its stderr, which is the server's)."""


# -- requests: the server -> rank 0 -> every rank ------------------------------------------------


@dataclass(frozen=True)
class OpenRequest:
    """Prepare per-session state ``session`` for ``avatar``."""

    session: int
    avatar: Avatar
    seed: int


@dataclass(frozen=True)
class StepRequest:
    """Run one chunk job of session ``session``."""

    session: int
    job: ChunkJob


@dataclass(frozen=True)
class ReseedRequest:
    """Re-seed session ``session``'s motion state from the frames it showed (before its
    next step; ``idle_mode: loop``)."""

    session: int
    reseed: Reseed


@dataclass(frozen=True)
class CloseRequest:
    """Release the state of session ``session``."""

    session: int


@dataclass(frozen=True)
class PrepareRequest:
    """Run the next step of avatar preparation ``preparation`` on every rank: with
    ``avatar``, its first (every rank starts ``Engine.prepare_avatar``); with ``cancel``,
    drop it instead."""

    preparation: int
    avatar: Avatar | None = None
    cancel: bool = False


@dataclass(frozen=True)
class StopRequest:
    """Leave the loop and exit (the server stops the group, or went away)."""


@dataclass(frozen=True)
class Heartbeat:
    """Rank 0 had no request for a while: the other ranks' wait starts over (between ranks
    only; keeps an idle group inside the control group's timeout)."""


Request = (
    OpenRequest
    | StepRequest
    | ReseedRequest
    | CloseRequest
    | PrepareRequest
    | StopRequest
    | Heartbeat
)


# -- replies: rank 0 -> the server ----------------------------------------------------------------


@dataclass(frozen=True)
class Loaded:
    """Every rank loaded and warmed up its engine; rank 0's engine says what it is."""

    description: str
    height: int
    width: int
    warmup_rtf: float | None
    load_seconds: float


@dataclass(frozen=True)
class Done:
    """The request succeeded on every rank; ``chunk`` is rank 0's result of a step, ``step``
    its step of an avatar preparation."""

    chunk: Chunk | None = None
    step: PreparationStep | None = None
    avatar_cache_evictions: int = 0
    """Rank 0's engine's ``avatar_cache_evictions`` after the request."""


@dataclass(frozen=True)
class Failed:
    """The request (or loading) failed on at least one rank; ``message`` says where and why."""

    message: str


Reply = Loaded | Done | Failed


def contiguous(chunk: Chunk) -> Chunk:
    """``chunk`` with C-contiguous frames, so they cross as one out-of-band buffer."""
    if chunk.frames.flags.c_contiguous:
        return chunk
    return replace(chunk, frames=np.ascontiguousarray(chunk.frames))


def send_message(conn: Connection, message: object) -> None:
    """Send ``message``: its pickle, then each large buffer (numpy data) as raw bytes."""
    buffers: list[pickle.PickleBuffer] = []
    header = pickle.dumps(message, protocol=PICKLE_PROTOCOL, buffer_callback=buffers.append)
    conn.send_bytes(header)
    conn.send(len(buffers))
    for buffer in buffers:
        conn.send_bytes(buffer.raw())


def recv_message(conn: Connection) -> object:
    """Receive one message sent by ``send_message``; raises ``EOFError`` if the other end
    closed. Arrays arrive read-only (backed by the received bytes, not copied again)."""
    header = conn.recv_bytes()
    count = conn.recv()
    buffers = [conn.recv_bytes() for _ in range(count)]
    return pickle.loads(header, buffers=buffers)
