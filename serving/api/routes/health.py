"""Liveness, readiness and Prometheus metrics."""

from __future__ import annotations

from fastapi import APIRouter, Response, status
from fastapi.responses import PlainTextResponse
from prometheus_client import CONTENT_TYPE_LATEST

from serving.api.deps import StateDep

router = APIRouter(tags=["health"])

# ``async``: they only read what the server holds, so they answer on the event loop even when every
# worker thread is busy (a liveness probe that timed out then would restart a healthy server).


@router.get("/healthz")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/readyz", responses={503: {"description": "Not ready: models not loaded yet, or none."}})
async def readyz(state: StateDep, response: Response) -> dict[str, object]:
    """Ready once models loaded; lists champion versions that do not serve (``stale``), registry errors, and
    which shard of the fleet this server is (``i/n``; ``0/1`` unsharded)."""
    served = state.models.all()
    ready = state.models.loaded_once and bool(served)
    if not ready:
        response.status_code = status.HTTP_503_SERVICE_UNAVAILABLE
    held = list(state.models.stale.values())  # one step: a reload in its thread may change the dict meanwhile
    stale = [{"name": s.name, "version": s.version, "reason": s.reason} for s in held]
    return {
        "ready": ready,
        "models": len(served),
        "stale": stale,
        "registry_error": state.models.registry_error,
        "shard": f"{state.settings.serve_shard}/{state.settings.serve_shards}",
    }


@router.get("/metrics", response_class=PlainTextResponse, responses={200: {"description": "Prometheus text format."}})
async def metrics(state: StateDep) -> Response:
    m = state.metrics
    m.stale.set(len(state.models.stale))
    m.served.set(len(state.models.all()))
    m.log_pending.set(state.log.pending)
    return Response(m.scrape(), media_type=CONTENT_TYPE_LATEST)
