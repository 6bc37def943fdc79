"""POST /v1/predict/{target}: ETA or price for 1–1,000 trips."""

from __future__ import annotations

import time
import uuid
from datetime import UTC, datetime
from typing import Any

import numpy as np
import pandas as pd
from fastapi import APIRouter, HTTPException, status

from cityml.naming import UNITS, Target
from cityml.online import model_input
from serving.api.deps import ApiKeyDep, StateDep
from serving.features import RequestError, resolve_zones
from serving.schemas import Prediction, PredictRequest, PredictResponse

router = APIRouter(prefix="/v1", tags=["predict"])


def _refuse(state: Any, code: int, index: int, field: str, message: str, reason: str) -> HTTPException:
    state.metrics.errors.labels(reason).inc()
    return HTTPException(code, detail=[{"loc": ["body", "instances", index, field], "msg": message, "type": reason}])


def _logged(value: Any) -> float | str | None:
    """A feature value as the prediction log keeps it: a number, a zone's name, or None."""
    if value is None or (not isinstance(value, str) and pd.isna(value)):
        return None
    return value if isinstance(value, str) else float(value)


@router.post("/predict/{target}")
def predict(target: Target, body: PredictRequest, state: StateDep, _: ApiKeyDep) -> PredictResponse:
    started = time.perf_counter()
    request_id = uuid.uuid4().hex
    now = datetime.now(UTC)
    df = pd.DataFrame([i.model_dump() for i in body.instances])
    df["pickup_ts"] = pd.to_datetime(df["pickup_ts"], utc=True).fillna(pd.Timestamp(now))

    served_by: list[Any] = []
    fallbacks: list[str | None] = []
    for i, city in enumerate(df["city"]):
        if city not in state.catalog.slugs:
            raise _refuse(state, 422, i, "city", f"unknown city {city!r}", "unknown_city")
        served, fallback = state.models.get(target, city)
        if served is None:
            raise _refuse(
                state,
                status.HTTP_503_SERVICE_UNAVAILABLE,
                i,
                "city",
                f"no {target} model for {city!r} and no global fallback",
                "no_model",
            )
        served_by.append(served)
        fallbacks.append(fallback)
    try:
        df = resolve_zones(df, state.catalog)
    except RequestError as exc:
        raise _refuse(state, 422, exc.index, exc.field, str(exc), "bad_zone") from exc

    timezones = {c.slug: c.timezone for c in state.catalog.cities}
    values = np.empty(len(df))
    records: list[dict[str, Any]] = []
    keys = pd.Series([id(s) for s in served_by], index=df.index)
    for _, rows in df.groupby(keys, sort=False):
        model = served_by[rows.index[0]].model
        service = state.services.get(model.tags.get("feature_service", ""))
        features = model_input(state.store, service, rows, timezones).assign(city=rows["city"])
        pred = model.predict(features)
        unknown = np.flatnonzero(~np.isfinite(pred))
        if unknown.size:  # a per-km model and a trip of unknown length
            i = int(rows.index[unknown[0]])
            raise _refuse(state, 422, i, "distance_km", "give distance_km or the four coordinates", "no_distance")
        values[rows.index] = pred
        logged = features[model.features].to_dict("records")  # the model's inputs, zones as names
        for idx, row_features, value in zip(rows.index, logged, pred, strict=True):
            records.append(
                {
                    "ts": now.isoformat(),
                    "request_id": request_id,
                    "city": rows.at[idx, "city"],
                    "target": target,
                    "model": model.name,
                    "version": model.version,
                    "fallback": fallbacks[idx],
                    "features": {k: _logged(v) for k, v in row_features.items() if k != "city"},
                    "prediction": float(value),
                }
            )
    state.log.write(records)

    predictions = []
    for i, (served, fallback) in enumerate(zip(served_by, fallbacks, strict=True)):
        unit = UNITS[target] if target != "price" else state.catalog.get(df.at[i, "city"]).currency
        predictions.append(
            Prediction(
                value=round(float(values[i]), 4),
                unit=unit,
                model=served.model.name,
                version=served.model.version,
                fallback=fallback,
            )
        )
        state.metrics.predictions.labels(target, served.model.name, str(fallback is not None).lower()).inc()
    state.metrics.latency.labels(target).observe(time.perf_counter() - started)
    return PredictResponse(request_id=request_id, predictions=predictions)
