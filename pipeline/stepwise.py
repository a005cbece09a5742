"""Work done in steps: generators that yield between steps and return a result.

Owns ``finish`` (run such a generator to its end and take its result) and ``relay``
(re-yield another generator's steps, each value transformed). The avatar preparation is written
this way (``pipeline.generator``, ``pipeline.vae``) so the device thread can run chunks of
live sessions between its steps. Knows nothing about what the steps compute.
"""

from __future__ import annotations

from collections.abc import Callable, Generator
from typing import Any, TypeVar

ResultT = TypeVar("ResultT")
InT = TypeVar("InT")
OutT = TypeVar("OutT")


def finish(steps: Generator[Any, None, ResultT]) -> ResultT:
    """Run every step of ``steps``; its return value."""
    while True:
        try:
            next(steps)
        except StopIteration as finished:
            result: ResultT = finished.value
            return result


def relay(
    steps: Generator[InT, None, ResultT], transform: Callable[[InT], OutT]
) -> Generator[OutT, None, ResultT]:
    """``steps``, yielding ``transform(value)`` for each value it yields; its result."""
    while True:
        try:
            value = next(steps)
        except StopIteration as finished:
            result: ResultT = finished.value
            return result
        yield transform(value)
