"""The C allocator set up to reuse freed memory instead of returning it to the kernel.

Why: a job allocates and frees many full-size per-view buffers (renders, lookups, masks; tens of
MB each) from several threads. glibc's malloc serves every block above its mmap threshold with
fresh pages and unmaps them on free, and gives each thread an arena of its own, so every buffer
is page-faulted in again and one thread's freed memory is not reused by another. On virtual
machines a page fault is expensive, and the system time it costs becomes a large part of a job
(bench/quality.py's wall time and peak RSS show it). One arena, no mmap below 1 GiB and no trim
below 1 GiB make freed blocks reusable by the next allocation of any thread; the peak resident
memory does not grow, because freed blocks are reused instead of held beside fresh ones.

Settings are glibc's own (mallopt, or its MALLOC_*_ environment variables); elsewhere (musl,
macOS) nothing changes. A process gets them at start from `MALLOC_ENV` (the worker, job
containers, the bench) or calls `keep_freed_memory` before it starts threads (the CLI).
"""

from __future__ import annotations

import ctypes
import ctypes.util

_KEEP_BYTES = 1 << 30

# glibc reads these at start-up: the environment of processes that run jobs.
MALLOC_ENV: dict[str, str] = {
    "MALLOC_ARENA_MAX": "1",
    "MALLOC_MMAP_THRESHOLD_": str(_KEEP_BYTES),
    "MALLOC_TRIM_THRESHOLD_": str(_KEEP_BYTES),
}

# mallopt parameter numbers (glibc's malloc.h)
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_M_ARENA_MAX = -8


def with_malloc_env(env: dict[str, str]) -> dict[str, str]:
    """`env` with `MALLOC_ENV`'s settings added where `env` does not set them already (an
    operator's own allocator settings win)."""
    return {**MALLOC_ENV, **env}


def keep_freed_memory() -> bool:
    """Apply `MALLOC_ENV`'s settings to this process through mallopt; True where glibc took them.
    The arena limit only holds if no second thread has allocated yet, so call it first thing."""
    name = ctypes.util.find_library("c")
    if name is None:
        return False
    try:
        mallopt = ctypes.CDLL(name).mallopt
    except (OSError, AttributeError):  # not glibc
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    return all(mallopt(param, value) == 1 for param, value in (
        (_M_ARENA_MAX, 1), (_M_MMAP_THRESHOLD, _KEEP_BYTES), (_M_TRIM_THRESHOLD, _KEEP_BYTES)))
