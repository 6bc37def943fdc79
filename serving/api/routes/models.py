"""What is being served."""

from __future__ import annotations

from fastapi import APIRouter

from serving.api.deps import StateDep
from serving.schemas import ModelInfo

router = APIRouter(tags=["models"])


@router.get("/v1/models")
def list_models(state: StateDep) -> list[ModelInfo]:
    return [
        ModelInfo(
            name=s.model.name,
            city=s.city,
            target=s.target,
            version=s.model.version,
            feature_service=s.model.tags.get("feature_service"),
            features=s.model.features,
            loaded_at=s.loaded_at,
        )
        for s in state.models.all()
    ]
