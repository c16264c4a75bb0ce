"""The FastAPI application: `create_app(settings)` for the launcher, `app` for
`uvicorn api.app:app`. Prefect is reached through PREFECT_API_URL (required: without it Prefect
would start a private in-process server that no worker polls), or the `prefect_api_url` given
(jobs.lifecycle.runs.connect).

Routes get everything they use (settings, store, Prefect client, job watcher) from one
dependency, `api.context.get_context`; `create_app(settings, store=..., prefect_api_url=...)`
builds an app on a given store and Prefect server, which tests serve in-process (TestClient)."""

from __future__ import annotations

import gc
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio
from fastapi import FastAPI

from api.context import ApiContext
from api.errors import install_error_handling
from api.routes import cancel, docs, download, events, files, health, status, submit, ui
from jobs.lifecycle import runs
from jobs.settings import Settings, get_settings
from jobs.storage import ObjectStore, get_store

API_VERSION = "0.1.0"
DESCRIPTION = ("Six calibrated views and six depth renders in, a textured 3D mesh out. Jobs run as Prefect flow "
               "runs; poll GET /jobs/{job_id} and download the ZIP when the status is `completed`.")


def _configure_logging() -> None:
    """The api logger writes to stderr (with request ids) when the host configured nothing."""
    logger = logging.getLogger("api")
    if not logger.handlers and not logging.getLogger().handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)


def _freeze_startup_objects() -> None:
    """Exempt everything alive after start-up (FastAPI, Prefect, pydantic: ~130k objects) from
    the cyclic garbage collector. Unfrozen, a full collection scanned them all, a 260-340 ms
    pause of the event loop (measured under load by bench/api_load.py) that every status poll
    in flight waited out; what requests allocate later is still collected. (Routes import
    their modules at the top, so those are frozen too.)"""
    gc.collect()
    gc.freeze()


def create_app(settings: Settings | None = None, *, store: ObjectStore | None = None,
               prefect_api_url: str | None = None) -> FastAPI:
    """The app; `store` and `prefect_api_url` replace the ones `settings` and the environment name."""
    settings = settings or get_settings()
    _configure_logging()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        client = runs.connect(prefect_api_url)
        if store is not None:
            job_store = store
        else:
            job_store = await anyio.to_thread.run_sync(get_store, settings)  # S3: creates the buckets
        async with client:
            context = ApiContext(settings=settings, store=job_store, prefect=client)
            app.state.context = context
            _freeze_startup_objects()
            context.views.start()
            try:
                yield
            finally:
                await context.views.stop()

    # docs_url/redoc_url None: FastAPI's own pages load their assets from a CDN; api/routes/docs.py serves them.
    app = FastAPI(title="3D reconstruction API", version=API_VERSION, description=DESCRIPTION, lifespan=lifespan,
                  docs_url=None, redoc_url=None)
    app.state.settings = settings
    for module in (health, submit, status, cancel, download, events, files, docs, ui):  # docs before ui: /static/docs
        app.include_router(module.router)
    _install_security(app, settings)
    install_error_handling(app)  # added last = outermost: request ids on every answer, 401/429 too
    return app


def _install_security(app: FastAPI, settings: Settings) -> None:
    """API keys and rate limiting (api/auth.py); both are off unless RECON_API_KEYS is set."""
    try:
        from api.auth import install_security
    except ModuleNotFoundError as exc:
        if exc.name != "api.auth":
            raise
        return
    install_security(app, settings)


app = create_app()
