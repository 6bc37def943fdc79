"""The FastAPI app: every city's champion in memory, predictions over REST.

Models load in the lifespan (never at import, in parallel) and reload in the background when an
``@champion`` alias moves, or at once on ``POST /admin/reload``. Predictions are logged by a
background writer; shutdown flushes it.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import sys
from collections.abc import AsyncIterator
from typing import Any

from fastapi import FastAPI
from fastapi_offline import FastAPIOffline
from starlette.concurrency import run_in_threadpool

from cityml import trees
from cityml.features.featurestore import get_store
from cityml.features.online import OnlineFeatures
from cityml.modeling import one_thread_per_call
from cityml.prediction_log import PredictionLog
from cityml.registry import fail_fast
from cityml.settings import Settings, get_settings
from serving.api.errors import install as install_errors
from serving.api.routes import admin, health, models, predict
from serving.model_store import ModelStore
from serving.signals import from_env as signals_from_env
from serving.state import AppState, Metrics
from serving.webhook import ensure_webhook

log = logging.getLogger(__name__)

SWITCH_INTERVAL_S = 0.00025
FOLLOW_S = 1.0  # how often a worker looks for reloads another worker was told to do


async def _watch(state: AppState) -> None:
    """Poll the registry and load champions whose alias moved."""
    while True:
        await asyncio.sleep(state.settings.reload_interval_s)
        try:
            await state.reload()
        except Exception:
            log.exception("background model refresh failed")


async def _follow(state: AppState) -> None:
    """Under several workers: reload what another worker was told to (a webhook, /admin/reload)."""
    while True:
        await asyncio.sleep(FOLLOW_S)
        try:
            await follow_once(state)
        except Exception:
            log.exception("following another worker's reload failed")


async def follow_once(state: AppState) -> None:
    if state.signals is None:
        return
    for names in state.signals.news():
        await state.reload(names)


def build_state(settings: Settings) -> AppState:
    """Everything a request needs, built once: online reader cache, champions, log writer, metrics."""
    fail_fast()
    one_thread_per_call()
    trees.warm()  # the compiled tree loop, before the first request (about 2 s)
    online = OnlineFeatures(get_store(settings), retry_s=settings.online_retry_s, cache_s=settings.online_cache_s)
    return AppState(
        settings=settings,
        online=online,
        models=ModelStore(settings, service_columns=lambda name: online.reader(name).names),
        log=PredictionLog(settings.predictions_dir, max_queue=settings.prediction_log_queue),
        metrics=Metrics(),
        signals=signals_from_env(),
    )


def create_app(settings: Settings | None = None, state: AppState | None = None) -> FastAPI:
    """Build the app; ``settings`` defaults to the process settings, ``state`` (tests) skips loading."""

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if state is not None:
            app.state.cityml = state
            yield
            return
        s = settings or get_settings()
        built = await run_in_threadpool(build_state, s)
        await run_in_threadpool(ensure_webhook, s)
        await built.reload()
        log.info("serving %d models (%d stale)", len(built.models.all()), len(built.models.stale))
        app.state.cityml = built
        # Everything loaded so far (Feast, MLflow, the models) lives as long as the server: keep it
        # out of the cyclic garbage collector, whose full passes over it stalled requests.
        gc.collect()
        gc.freeze()
        # The prediction log's writer thread converts a second of records at a time; with Python's
        # default 5 ms switch interval a request waiting for the GIL waited for it. Handing the GIL
        # back every 0.25 ms: in-process, over 20,000 requests, the longest went 36 -> 5 ms.
        sys.setswitchinterval(SWITCH_INTERVAL_S)
        tasks = [asyncio.create_task(_watch(built))] if s.reload_interval_s > 0 else []
        if built.signals is not None:
            tasks.append(asyncio.create_task(_follow(built)))
        try:
            yield
        finally:
            for task in tasks:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            await run_in_threadpool(built.log.close)
            await run_in_threadpool(built.hot.close)

    # /docs and /redoc with their assets served from the package: they work without internet.
    app = FastAPIOffline(title="cityml", version="0.1.0", lifespan=lifespan)
    install_errors(app)
    for router in (predict.router, models.router, health.router, admin.router):
        app.include_router(router)
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = predict.document(generate())
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
    return app
