"""What every route needs, created once per app in the lifespan: settings, the object store,
one Prefect client (a pooled HTTP connection to the Prefect API) and the job watcher that
answers status polls from memory (api/job_watch.py).

The object store is synchronous (filesystem or the minio client); routes call it through
`ApiContext.io()` so that storage latency never blocks the event loop.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from typing import TYPE_CHECKING, Any, TypeVar

import anyio
from fastapi import Request

from jobs.settings import Settings
from jobs.storage import ObjectStore

if TYPE_CHECKING:
    from prefect.client.orchestration import PrefectClient

    from api.job_watch import JobWatcher

T = TypeVar("T")


@dataclass
class ApiContext:
    settings: Settings
    store: ObjectStore
    prefect: PrefectClient
    views: JobWatcher = field(init=False)

    def __post_init__(self) -> None:
        from api.job_watch import JobWatcher

        self.views = JobWatcher(self)

    async def io(self, func: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run a blocking storage call in the thread pool."""
        return await anyio.to_thread.run_sync(partial(func, *args, **kwargs))


async def get_context(request: Request) -> ApiContext:
    """FastAPI dependency: the app's context (set by the lifespan in api.app). Async on purpose:
    FastAPI would run a plain function in the thread pool, a thread hop on every request."""
    return request.app.state.context
