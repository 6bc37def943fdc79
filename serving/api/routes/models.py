"""What is being served."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query

from serving.api.deps import ApiKeyDep, StateDep
from serving.schemas import ModelInfo, ModelList, error_responses

router = APIRouter(tags=["models"])


@router.get("/v1/models", responses=error_responses(401, 422, 503))
def list_models(
    state: StateDep,
    _: ApiKeyDep,
    offset: Annotated[int, Query(ge=0)] = 0,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> ModelList:
    """Served models with version, load time and self-test result, a page at a time."""
    served = state.models.all()
    return ModelList(
        total=len(served),
        offset=offset,
        models=[
            ModelInfo(
                name=s.model.name,
                city=s.city,
                target=s.target,
                version=s.model.version,
                feature_service=s.model.feature_service or None,
                features=s.model.features,
                loaded_at=s.loaded_at,
                self_test=s.self_test,
            )
            for s in served[offset : offset + limit]
        ],
    )
