"""POST /v1/predict/{target}: ETA or price for 1–1,000 trips.

One straight path, no pandas: validated instances → which model answers each (``ModelStore.get``)
→ trip rows with checked zones (``serving.features``) → per model: request-time and online feature
columns (``cityml.online.model_columns``, the code parity checks) → ``LoadedModel.predict_columns``
→ response, and the records queued for the prediction log (written off the request path).
"""

from __future__ import annotations

import time
import uuid
from datetime import UTC, datetime
from typing import Any

import numpy as np
from fastapi import APIRouter, HTTPException, status

from cityml.naming import UNITS, Target
from cityml.online import model_columns
from cityml.prediction_log import FeatureValue, PredictionRecord
from serving.api.deps import ApiKeyDep, StateDep
from serving.features import RequestError, known_zones, trip_rows
from serving.model_store import Served
from serving.schemas import Prediction, PredictRequest, PredictResponse
from serving.state import AppState

router = APIRouter(prefix="/v1", tags=["predict"])

# The route is ``async`` and runs on the event loop, as a bare ``booster.predict`` route would: a
# predict is CPU work of a millisecond or two (the online reads are local SQLite or one Redis round
# trip each, bounded by a cache), and a hop to the thread pool and back cost more than that.


def _refuse(state: AppState, code: int, index: int, field: str, message: str, reason: str) -> HTTPException:
    state.metrics.errors.labels(reason).inc()
    return HTTPException(code, detail=[{"loc": ["body", "instances", index, field], "msg": message, "type": reason}])


def _loggable(column: Any) -> list[FeatureValue]:
    """A feature column as the prediction log keeps it: numbers, zone names, None where missing."""
    values = column.tolist() if hasattr(column, "tolist") else list(column)
    return [None if v is None or (isinstance(v, float) and v != v) else v for v in values]


@router.post("/predict/{target}")
async def predict(target: Target, body: PredictRequest, state: StateDep, _: ApiKeyDep) -> PredictResponse:
    started = time.perf_counter()
    request_id = uuid.uuid4().hex
    now = datetime.now(UTC)
    instances = body.instances
    catalog = state.models.catalog

    served_by: list[Served] = []
    fallbacks: list[str | None] = []
    for i, inst in enumerate(instances):
        if inst.city not in catalog:
            raise _refuse(state, 422, i, "city", f"unknown city {inst.city[:40]!r}", "unknown_city")
        served, fallback = state.models.get(target, inst.city)
        if served is None:
            message = f"no {target} model for {inst.city!r} and no global fallback"
            raise _refuse(state, status.HTTP_503_SERVICE_UNAVAILABLE, i, "city", message, "no_model")
        served_by.append(served)
        fallbacks.append(fallback)
    try:
        known = {
            (x.city, id(s)): known_zones(catalog, x.city, s.zones) for x, s in zip(instances, served_by, strict=True)
        }
        zones = [known[(x.city, id(s))] for x, s in zip(instances, served_by, strict=True)]
        rows = trip_rows(instances, catalog, now, zones)
    except RequestError as exc:
        raise _refuse(state, 422, exc.index, exc.field, str(exc), exc.reason) from exc

    timezones = {c.slug: c.timezone for c in catalog.cities}
    values = np.empty(len(instances))
    degraded = np.zeros(len(instances), dtype=bool)
    records: list[PredictionRecord] = []
    groups: dict[int, list[int]] = {}
    for i, served in enumerate(served_by):
        groups.setdefault(id(served), []).append(i)
    for members in groups.values():
        index = np.asarray(members)
        model = served_by[members[0]].model
        part = rows.take(index)
        columns, online = model_columns(state.online.reader(model.feature_service), part, timezones)
        pred = model.predict_columns(columns, len(index))
        unknown = np.flatnonzero(~np.isfinite(pred))
        if unknown.size:  # a per-km model and a trip of unknown length
            i = members[int(unknown[0])]
            raise _refuse(state, 422, i, "distance_km", "give distance_km or the four coordinates", "no_distance")
        values[index] = pred
        degraded[index] = online.missing
        if online.missing.any():
            reason = "store_error" if online.error else "missing_or_stale"
            state.metrics.degraded.labels(target, reason).inc(int(online.missing.sum()))
        names = [n for n in model.features if n != "city"]
        logged = {n: _loggable(columns[n]) for n in names}
        for j, i in enumerate(members):
            records.append(
                PredictionRecord(
                    ts=now,
                    request_id=request_id,
                    city=instances[i].city,
                    target=target,
                    model=model.name,
                    version=model.version,
                    fallback=fallbacks[i],
                    degraded=bool(online.missing[j]),
                    features={n: logged[n][j] for n in names},
                    prediction=float(pred[j]),
                    trip_id=instances[i].trip_id,
                )
            )
    dropped = state.log.submit(records)
    if dropped:
        state.metrics.log_dropped.inc(dropped)

    predictions = []
    counts: dict[tuple[str, str], int] = {}
    units: dict[str, str] = {}
    for i, (served, fallback) in enumerate(zip(served_by, fallbacks, strict=True)):
        city = instances[i].city
        if city not in units:
            units[city] = UNITS[target] if target != "price" else catalog.get(city).currency
        predictions.append(
            Prediction(
                value=round(float(values[i]), 4),
                unit=units[city],
                model=served.model.name,
                version=served.model.version,
                fallback=fallback,
                degraded=bool(degraded[i]),
            )
        )
        key = (served.model.name, str(fallback is not None).lower())
        counts[key] = counts.get(key, 0) + 1
    for (name, fell_back), count in counts.items():
        state.metrics.predictions.labels(target, name, fell_back).inc(count)
    state.metrics.latency.labels(target).observe(time.perf_counter() - started)
    return PredictResponse(request_id=request_id, predictions=predictions)
