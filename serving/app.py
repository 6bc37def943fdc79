"""The FastAPI app: every city's champion in memory, predictions over REST.

Models load in the lifespan (never at import) and reload in the background when an
``@champion`` alias moves, or at once on ``POST /admin/reload``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator

from fastapi import FastAPI
from starlette.concurrency import run_in_threadpool

from cityml.catalog import load_catalog
from cityml.featurestore import get_store
from cityml.prediction_log import PredictionLogger
from cityml.settings import Settings, get_settings
from serving.api.routes import admin, health, models, predict
from serving.model_store import ModelStore
from serving.state import AppState, Metrics, Services

log = logging.getLogger(__name__)


async def _watch(state: AppState) -> None:
    """Poll the registry and load champions whose alias moved."""
    while True:
        await asyncio.sleep(state.settings.reload_interval_s)
        try:
            changes = await run_in_threadpool(state.models.refresh)
            state.metrics.reloads.inc(len(changes))
        except Exception:
            log.exception("background model refresh failed")


def create_app(settings: Settings | None = None) -> FastAPI:
    """Build the app; ``settings`` defaults to the process settings (tests pass their own)."""

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        s = settings or get_settings()
        store = get_store(s)
        state = AppState(
            settings=s,
            catalog=load_catalog(s.catalog_path),
            store=store,
            services=Services(store),
            models=ModelStore(s),
            log=PredictionLogger(s.predictions_dir),
            metrics=Metrics(),
        )
        changes = await run_in_threadpool(state.models.refresh)
        state.metrics.reloads.inc(len(changes))
        log.info("serving %d models", len(state.models.all()))
        app.state.cityml = state
        watcher = asyncio.create_task(_watch(state)) if s.reload_interval_s > 0 else None
        try:
            yield
        finally:
            if watcher is not None:
                watcher.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await watcher

    app = FastAPI(title="cityml", version="0.1.0", lifespan=lifespan)
    for router in (predict.router, models.router, health.router, admin.router):
        app.include_router(router)
    return app
