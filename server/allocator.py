"""The C allocator's policy for the long-running server process (glibc; elsewhere nothing).

Owns ``tune_allocator``, which ``headcast serve`` calls once, before any thread starts.
Every chunk, a dozen threads (the engine thread, the media executor, aiortc's codecs)
allocate and free video buffers of 0.5 to 29 MB: RGB frames, yuv420p frames, a chunk's
frame array. With glibc's defaults -- a heap arena per thread (up to 8 per core) and an
mmap threshold that rises to the largest block freed (up to 32 MiB) -- those buffers land in
the threads' arenas, which fragment and give back almost nothing: the server's RSS grew by
about 50 MB per 20 s call and never came down (issue 16; ``MALLOC_ARENA_MAX=2`` alone did not
help). With a fixed threshold every buffer of ``MMAP_THRESHOLD_BYTES`` or more is mapped on
its own and unmapped when freed, and ``ARENA_MAX`` arenas bound where the small allocations
can scatter: RSS stays flat from one call to the next (the figures are in the issue's
closing note). The cost is a page fault per 4 kB of a fresh buffer, about 2 % of a core per
session at 25 fps.

Knows nothing about the app; touches no memory itself.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import platform

logger = logging.getLogger(__name__)

M_MMAP_THRESHOLD = -3
M_ARENA_MAX = -8
"""``mallopt`` parameters (glibc's ``malloc.h``)."""

MMAP_THRESHOLD_BYTES = 256 * 1024
"""Blocks this large or larger are mapped on their own and returned to the system when freed
(a yuv420p frame of 448x768 is 516 kB; RTP packets and audio frames stay in the heap)."""

ARENA_MAX = 2
"""Heap arenas the threads share (glibc's default: 8 per core)."""

MALLOPT_OK = 1
"""What ``mallopt`` returns on success."""


def tune_allocator() -> bool:
    """Set the mmap threshold and the arena count; True if the C library took both."""
    if platform.libc_ver()[0] != "glibc":
        logger.info("not glibc: the C allocator keeps its defaults")
        return False
    try:
        mallopt = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").mallopt
    except (OSError, AttributeError) as exc:
        logger.warning("cannot tune the C allocator (%s); memory may grow between calls", exc)
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    took: bool = (
        mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES) == MALLOPT_OK
        and mallopt(M_ARENA_MAX, ARENA_MAX) == MALLOPT_OK
    )
    if took:
        logger.info(
            "C allocator: buffers of %d kB and more are mapped on their own, %d heap arenas",
            MMAP_THRESHOLD_BYTES // 1024,
            ARENA_MAX,
        )
    else:
        logger.warning("the C allocator refused the tuning; memory may grow between calls")
    return took
