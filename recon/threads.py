"""Running independent per-view work side by side on the CPU's cores.

The heavy parts of a view's work (Embree ray casting, numpy, scipy, skimage, PNG encoding) release
the GIL, so plain threads overlap them with no copies of the inputs; results come back in input
order, so sums over views stay bitwise reproducible."""

from __future__ import annotations

import contextvars
import os
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

# Full-size views processed at once where each holds large buffers (the bake's lookups, the
# quality report's supersampled renders): the job's peak memory grows with this, not with cores.
VIEW_THREADS = 2

T = TypeVar("T")
R = TypeVar("R")


def core_count() -> int:
    """Cores this process may run on (its CPU affinity, which containers and `taskset` narrow;
    the machine's count where the platform has no affinity call)."""
    affinity = getattr(os, "sched_getaffinity", None)
    return len(affinity(0)) if affinity is not None else os.cpu_count() or 1


def threads_for(device_type: str, limit: int | None = None) -> int:
    """Threads for per-view work on a render backend's device: on the CPU one per core (at most
    `limit`); on a GPU one, since its kernels run one after another anyway."""
    if device_type != "cpu":
        return 1
    return core_count() if limit is None else min(limit, core_count())


def map_in_threads(fn: Callable[[T], R], items: Iterable[T], threads: int | None = None) -> Iterator[R]:
    """`map(fn, items)` over `threads` threads (default: one per core), in input order. With one
    thread it is the plain map, run lazily in the caller's thread."""
    items = list(items)
    threads = min(core_count() if threads is None else threads, len(items))
    if threads < 2:
        yield from map(fn, items)
        return
    with ThreadPoolExecutor(max_workers=threads) as pool:
        # each item runs in a copy of the caller's context, so whatever the caller's context
        # carries (a Prefect run context for progress and cancellation calls) reaches the threads
        context = contextvars.copy_context()
        yield from pool.map(lambda item: context.copy().run(fn, item), items)
