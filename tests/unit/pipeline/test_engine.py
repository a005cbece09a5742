"""Tests of the device worker thread, mailboxes and engine registry (pipeline/engine.py).

A small fake engine defined here makes the thread's behaviour observable (it can block a
step on an event, fail a chosen chunk, fail to load); the puppet engine runs through the same
worker once end to end. Every wait has a timeout; nothing sleeps to synchronise.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import pytest

from headcast.pipeline.engine import (
    ChunkFailure,
    EngineNotReady,
    EngineRegistry,
    EngineWorker,
    MailboxFull,
    SessionClosed,
    SessionHandle,
    UnknownEngine,
    WrongEngineOptions,
    default_registry,
)
from headcast.pipeline.engine_options import PuppetOptions, TinyOptions
from headcast.pipeline.media import CHUNK_FRAMES, CHUNK_SAMPLES, Avatar, Chunk, ChunkJob
from tests.conftest import REPO_ROOT

if TYPE_CHECKING:
    from headcast.pipeline.parallel import ParallelGroup

WAIT_S = 10.0
"""Upper bound of every wait in these tests, in seconds (generous: the CPU is shared)."""
FAKE_SIZE_PX = 4
"""Frame height and width of the fake engine, in pixels."""
FAILING_AVATAR = "fails-chunk-1"
"""Sessions of an avatar with this name fail their chunk with index 1."""
UNPREPARABLE_AVATAR = "cannot-prepare"
"""Sessions of an avatar with this name fail in ``open_session``."""


class FakeEngine:
    """A fake engine: frames are filled with the chunk index; behaviour set by arguments."""

    name = "fake"
    description = "fake engine for tests: each frame is filled with its chunk's index"
    height = FAKE_SIZE_PX
    width = FAKE_SIZE_PX
    warmup_rtf: float | None = None

    def __init__(
        self,
        *,
        load_error: BaseException | None = None,
        load_gate: threading.Event | None = None,
        step_gate: threading.Event | None = None,
    ) -> None:
        self.load_error = load_error
        self.load_gate = load_gate
        self.step_gate = step_gate
        self.step_started = threading.Event()
        self.steps: list[tuple[str, int]] = []
        self.closed: list[str] = []

    def load(self) -> None:
        if self.load_gate is not None:
            assert self.load_gate.wait(WAIT_S), "test never released load()"
        if self.load_error is not None:
            raise self.load_error

    def open_session(self, avatar: Avatar, seed: int) -> dict[str, Any]:
        if avatar.name == UNPREPARABLE_AVATAR:
            raise ValueError("this avatar cannot be prepared")
        return {"name": avatar.name, "seed": seed}

    def step(self, state: dict[str, Any], job: ChunkJob) -> Chunk:
        self.step_started.set()
        if self.step_gate is not None:
            assert self.step_gate.wait(WAIT_S), "test never released step()"
        self.steps.append((state["name"], job.index))
        if state["name"] == FAILING_AVATAR and job.index == 1:
            raise RuntimeError("chunk 1 of this avatar always fails")
        frames = np.full(
            (CHUNK_FRAMES, FAKE_SIZE_PX, FAKE_SIZE_PX, 3), job.index % 256, dtype=np.uint8
        )  # [28, 4, 4, 3]
        return Chunk(index=job.index, frames=frames, audio=job.audio)

    def close_session(self, state: dict[str, Any]) -> None:
        self.closed.append(state["name"])


class Inbox:
    """A session's notify callback and a bounded wait for its mailbox items."""

    def __init__(self) -> None:
        self.event = threading.Event()
        self.notifications = 0

    def notify(self) -> None:
        self.notifications += 1
        self.event.set()

    def collect(self, handle: SessionHandle, count: int, timeout: float = WAIT_S) -> list[Any]:
        """Take ``count`` items from the mailbox, waiting at most ``timeout`` in total."""
        deadline = time.monotonic() + timeout
        items: list[Any] = []
        while len(items) < count:
            item = handle.mailbox.get_nowait()
            if item is not None:
                items.append(item)
                continue
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"got {len(items)} of {count} items within {timeout} s")
            self.event.wait(remaining)
            self.event.clear()
        return items


def avatar(name: str = "face") -> Avatar:
    return Avatar(name=name, image=np.zeros((8, 8, 3), dtype=np.uint8))


def job(index: int) -> ChunkJob:
    audio = np.full(CHUNK_SAMPLES, index / 1000.0, dtype=np.float32)  # [17920]
    return ChunkJob(index=index, audio=audio)


def open_ready(
    worker: EngineWorker, inbox: Inbox, name: str = "face", **options: Any
) -> SessionHandle:
    """Open a session and wait until the device thread prepared its state without error."""
    prepared = threading.Event()
    errors: list[BaseException | None] = []

    def done(error: BaseException | None) -> None:
        errors.append(error)
        prepared.set()

    handle = worker.open_session(avatar(name), notify=inbox.notify, done=done, **options)
    assert prepared.wait(WAIT_S), "session state was not prepared in time"
    assert errors == [None]
    return handle


def engine_threads(name: str) -> list[threading.Thread]:
    return [thread for thread in threading.enumerate() if thread.name == name]


@pytest.fixture
def make_worker() -> Iterator[Any]:
    """Build, start and wait for workers; every one is shut down after the test."""
    workers: list[EngineWorker] = []

    def make(engine: Any, *, wait: bool = True) -> EngineWorker:
        worker = EngineWorker(engine)
        workers.append(worker)
        worker.start()
        if wait:
            worker.wait_ready(WAIT_S)
        return worker

    yield make
    for worker in workers:
        worker.shutdown(timeout=WAIT_S)


# -- ordering and delivery ---------------------------------------------------------------------


def test_results_come_out_in_submission_order_per_session(make_worker: Any) -> None:
    worker = make_worker(FakeEngine())
    inbox_a, inbox_b = Inbox(), Inbox()
    a = open_ready(worker, inbox_a, "a", mailbox_size=8)
    b = open_ready(worker, inbox_b, "b", mailbox_size=8)
    indices_a, indices_b = [5, 6, 7, 8, 9, 10], [100, 3, 42, 7]
    for i in range(max(len(indices_a), len(indices_b))):  # interleave the two sessions
        if i < len(indices_a):
            a.submit(job(indices_a[i]))
        if i < len(indices_b):
            b.submit(job(indices_b[i]))

    got_a = inbox_a.collect(a, len(indices_a))
    got_b = inbox_b.collect(b, len(indices_b))

    assert [chunk.index for chunk in got_a] == indices_a
    assert [chunk.index for chunk in got_b] == indices_b
    for chunk in got_a + got_b:
        assert isinstance(chunk, Chunk)
        assert np.all(chunk.frames == chunk.index % 256)  # the frames of that very job
        np.testing.assert_array_equal(chunk.audio, job(chunk.index).audio)
        assert chunk.compute_seconds > 0.0
    assert inbox_a.notifications >= len(indices_a)
    assert a.mailbox.in_flight == 0 and b.mailbox.in_flight == 0


def test_mailbox_is_bounded_and_frees_slots_as_results_are_taken(make_worker: Any) -> None:
    gate = threading.Event()
    engine = FakeEngine(step_gate=gate)
    worker = make_worker(engine)
    inbox = Inbox()
    handle = open_ready(worker, inbox, mailbox_size=2)

    handle.submit(job(0))
    handle.submit(job(1))
    with pytest.raises(MailboxFull, match="capacity 2"):
        handle.submit(job(2))
    assert handle.mailbox.in_flight == 2

    gate.set()
    got = inbox.collect(handle, 2)
    assert [chunk.index for chunk in got] == [0, 1]
    assert handle.mailbox.in_flight == 0
    handle.submit(job(2))  # the taken results freed their slots
    assert [chunk.index for chunk in inbox.collect(handle, 1)] == [2]


def test_a_session_that_never_reads_cannot_grow_its_mailbox(make_worker: Any) -> None:
    worker = make_worker(FakeEngine())
    inbox = Inbox()
    handle = open_ready(worker, inbox, mailbox_size=3)
    accepted = 0
    for index in range(50):  # a producer that keeps pushing and never reads
        try:
            handle.submit(job(index))
            accepted += 1
        except MailboxFull:
            pass
    assert accepted == 3
    assert handle.mailbox.in_flight == 3
    # Once delivered, the undelivered results still count: nothing more is accepted.
    sentinel_inbox = Inbox()
    other = open_ready(worker, sentinel_inbox, "other")
    other.submit(job(0))
    sentinel_inbox.collect(other, 1)  # FIFO: the first session's 3 jobs have run by now
    with pytest.raises(MailboxFull):
        handle.submit(job(99))
    assert [chunk.index for chunk in inbox.collect(handle, 3)] == [0, 1, 2]
    assert handle.mailbox.get_nowait() is None


# -- errors --------------------------------------------------------------------------------------


def test_an_engine_error_reaches_only_its_session_as_a_value(make_worker: Any) -> None:
    engine = FakeEngine()
    worker = make_worker(engine)
    bad_inbox, good_inbox = Inbox(), Inbox()
    bad = open_ready(worker, bad_inbox, FAILING_AVATAR)
    good = open_ready(worker, good_inbox, "good")
    for index in range(3):
        bad.submit(job(index))
        good.submit(job(index))

    bad_items = bad_inbox.collect(bad, 3)
    good_items = good_inbox.collect(good, 3)

    assert [type(item) for item in bad_items] == [Chunk, ChunkFailure, Chunk]
    failure = bad_items[1]
    assert failure.index == 1
    assert isinstance(failure.error, RuntimeError)
    assert failure.message == "RuntimeError: chunk 1 of this avatar always fails"
    assert all(isinstance(item, Chunk) for item in good_items)
    assert [item.index for item in good_items] == [0, 1, 2]
    assert worker.alive
    good.submit(job(3))  # the thread keeps serving after the error
    assert good_inbox.collect(good, 1)[0].index == 3


def test_a_session_whose_state_cannot_be_prepared_gets_the_reason(make_worker: Any) -> None:
    worker = make_worker(FakeEngine())
    inbox = Inbox()
    prepared = threading.Event()
    errors: list[BaseException | None] = []

    def done(error: BaseException | None) -> None:
        errors.append(error)
        prepared.set()

    handle = worker.open_session(avatar(UNPREPARABLE_AVATAR), notify=inbox.notify, done=done)
    assert prepared.wait(WAIT_S)
    assert isinstance(errors[0], ValueError)
    handle.submit(job(7))
    (failure,) = inbox.collect(handle, 1)
    assert isinstance(failure, ChunkFailure)
    assert failure.index == 7
    assert "cannot be prepared" in failure.message


def test_a_failing_notify_callback_does_not_stop_the_device_thread(make_worker: Any) -> None:
    worker = make_worker(FakeEngine())
    broken = threading.Event()

    def notify_closed_loop() -> None:  # what call_soon_threadsafe does once its loop closed
        broken.set()
        raise RuntimeError("Event loop is closed")

    dead = worker.open_session(avatar("dead"), notify=notify_closed_loop)
    inbox = Inbox()
    alive = open_ready(worker, inbox, "alive")
    dead.submit(job(0))
    alive.submit(job(1))

    assert broken.wait(WAIT_S)
    assert [chunk.index for chunk in inbox.collect(alive, 1)] == [1]
    assert worker.alive
    assert dead.mailbox.get_nowait() is not None  # the result was still delivered


def test_a_failing_load_sets_load_error_and_wait_ready_raises(make_worker: Any) -> None:
    engine = FakeEngine(load_error=OSError("checkpoint directory /nowhere does not exist"))
    worker = make_worker(engine, wait=False)

    with pytest.raises(EngineNotReady, match="failed to load: checkpoint directory"):
        worker.wait_ready(WAIT_S)
    assert isinstance(worker.load_error, OSError)
    assert not worker.is_ready
    with pytest.raises(EngineNotReady):
        worker.open_session(avatar(), notify=lambda: None)
    worker.shutdown(timeout=WAIT_S)
    assert not worker.alive


# -- lifecycle ---------------------------------------------------------------------------------


def test_open_session_before_ready_raises(make_worker: Any) -> None:
    load_gate = threading.Event()
    worker = make_worker(FakeEngine(load_gate=load_gate), wait=False)
    try:
        assert not worker.is_ready
        with pytest.raises(EngineNotReady, match="not ready"):
            worker.open_session(avatar(), notify=lambda: None)
        with pytest.raises(EngineNotReady, match="not ready after"):
            worker.wait_ready(timeout=0.01)
    finally:
        load_gate.set()
    worker.wait_ready(WAIT_S)
    assert worker.is_ready
    assert worker.load_seconds is not None


def test_drop_pending_skips_queued_jobs_and_frees_their_slots(make_worker: Any) -> None:
    gate = threading.Event()
    engine = FakeEngine(step_gate=gate)
    worker = make_worker(engine)
    inbox = Inbox()
    handle = open_ready(worker, inbox, mailbox_size=4)
    handle.submit(job(0))
    assert engine.step_started.wait(WAIT_S)  # job 0 is running: it will still deliver
    for index in (1, 2, 3):
        handle.submit(job(index))
    with pytest.raises(MailboxFull):
        handle.submit(job(4))

    handle.drop_pending()
    assert handle.mailbox.in_flight == 1  # only the running job 0 holds a slot now
    handle.submit(job(10))  # accepted at once, while job 0 still runs
    gate.set()
    got = inbox.collect(handle, 2)

    assert [chunk.index for chunk in got] == [0, 10]
    assert [index for _, index in engine.steps] == [0, 10]  # 1, 2, 3 never ran
    assert handle.mailbox.in_flight == 0
    for index in (11, 12, 13, 14):  # every dropped slot is free again
        handle.submit(job(index))
    assert [chunk.index for chunk in inbox.collect(handle, 4)] == [11, 12, 13, 14]


def test_close_skips_queued_jobs_and_releases_the_engine_state(make_worker: Any) -> None:
    gate = threading.Event()
    engine = FakeEngine(step_gate=gate)
    worker = make_worker(engine)
    inbox, other_inbox = Inbox(), Inbox()
    handle = open_ready(worker, inbox, "closing")
    other = open_ready(worker, other_inbox, "other")
    handle.submit(job(0))
    assert engine.step_started.wait(WAIT_S)
    handle.submit(job(1))
    handle.close()
    with pytest.raises(SessionClosed):
        handle.submit(job(2))
    gate.set()
    other.submit(job(5))
    other_inbox.collect(other, 1)  # FIFO: the close has been handled by now

    assert engine.closed == ["closing"]
    assert [index for name, index in engine.steps if name == "closing"] == [0]


def test_shutdown_joins_the_thread_and_closes_open_sessions(make_worker: Any) -> None:
    engine = FakeEngine()
    elsewhere = set(engine_threads("headcast-engine-cpu"))  # other tests' leaks, if any
    worker = make_worker(engine)
    assert worker.thread_name == "headcast-engine-cpu"
    ours = set(engine_threads(worker.thread_name)) - elsewhere
    assert len(ours) == 1
    inbox = Inbox()
    handle = open_ready(worker, inbox, "open-at-shutdown")
    handle.submit(job(0))

    worker.shutdown(timeout=WAIT_S)

    assert ours.isdisjoint(engine_threads("headcast-engine-cpu"))  # joined, gone
    assert not worker.alive
    assert engine.closed == ["open-at-shutdown"]
    assert [chunk.index for chunk in inbox.collect(handle, 1)] == [0]  # queued job finished
    with pytest.raises(SessionClosed):
        handle.submit(job(1))
    with pytest.raises(EngineNotReady):
        worker.open_session(avatar(), notify=lambda: None)
    handle.close()  # closing after shutdown is harmless


# -- the registry and the puppet through the worker ----------------------------------------


def test_registry_lists_puppet_and_names_the_choices_for_unknown_engines() -> None:
    registry = default_registry()
    assert "puppet" in registry.names()
    with pytest.raises(UnknownEngine) as raised:
        registry.create("flashtalk-typo")
    message = str(raised.value)
    assert "'flashtalk-typo'" in message
    for name in registry.names():
        assert name in message
    engine = registry.create("puppet", PuppetOptions(height=64, width=48))
    assert (engine.name, engine.height, engine.width) == ("puppet", 64, 48)
    with pytest.raises(TypeError):
        PuppetOptions(heigth=64)  # type: ignore[call-arg]  # a misspelt option is an error
    with pytest.raises(WrongEngineOptions, match=r"'tiny' takes TinyOptions, got PuppetOptions"):
        registry.create("tiny", PuppetOptions())  # another engine's options are refused
    assert registry.options_type("tiny") is TinyOptions


def test_no_engine_module_imports_the_machinery_that_drives_it() -> None:
    """The engines import ``pipeline.engine_api``, never ``pipeline.engine`` (no cycle)."""
    for module in ("pipeline/puppet.py", "pipeline/diffusion_engine.py"):
        source = (REPO_ROOT / module).read_text(encoding="utf-8")
        assert "from pipeline.engine import" not in source, module


@dataclass(frozen=True)
class FakeOptions:
    """The fake engine's (empty) options."""


def fake_engine(options: FakeOptions, parallel: ParallelGroup | None = None) -> FakeEngine:
    return FakeEngine()


def test_registry_refuses_a_second_engine_under_the_same_name() -> None:
    registry = EngineRegistry()
    registry.register("fake", fake_engine, FakeOptions)
    with pytest.raises(ValueError, match="already registered"):
        registry.register("fake", fake_engine, FakeOptions)
    assert registry.names() == ["fake"]
    assert isinstance(registry.create("fake"), FakeEngine)  # default options


def test_the_puppet_runs_through_the_worker(make_worker: Any) -> None:
    engine = default_registry().create("puppet", PuppetOptions(height=128, width=96))
    worker = make_worker(engine)
    inbox = Inbox()
    prepared = threading.Event()
    handle = worker.open_session(
        engine.default_avatar(), notify=inbox.notify, done=lambda _error: prepared.set()
    )
    assert prepared.wait(WAIT_S)
    jobs = [job(index) for index in (3, 4, 5)]
    for chunk_job in jobs:
        handle.submit(chunk_job)

    got = inbox.collect(handle, len(jobs))

    for chunk, chunk_job in zip(got, jobs, strict=True):
        assert isinstance(chunk, Chunk)
        assert chunk.index == chunk_job.index
        assert chunk.frames.shape == (CHUNK_FRAMES, 128, 96, 3)
        assert chunk.frames.dtype == np.uint8
        np.testing.assert_array_equal(chunk.audio, chunk_job.audio)
