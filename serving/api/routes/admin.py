"""Operator endpoints (need CITYML_ADMIN_KEY)."""

from __future__ import annotations

from fastapi import APIRouter
from starlette.concurrency import run_in_threadpool

from serving.api.deps import AdminDep, StateDep

router = APIRouter(prefix="/admin", tags=["admin"])


@router.post("/reload")
async def reload(state: StateDep, _: AdminDep) -> dict[str, object]:
    """Load every champion whose alias moved since the last load."""
    changes = await run_in_threadpool(state.models.refresh)
    state.metrics.reloads.inc(len(changes))
    return {"changed": changes, "models": len(state.models.all())}
