"""POST /v1/predict/{target}: ETA or price for 1–1,000 trips.

One straight path, no pandas: validated instances → which model answers each (``ModelStore.get``)
→ trip rows with checked zones (``serving.features``) → per model: request-time and online feature
columns (``cityml.features.online.model_columns``, the code parity checks) → ``LoadedModel.predict_columns``
→ response, and the records queued for the prediction log (written off the request path).
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable, Coroutine
from datetime import UTC, datetime
from typing import Any

import numpy as np
from fastapi import APIRouter, HTTPException, Request, Response, status
from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute
from pydantic import ValidationError

from cityml.features.online import model_columns
from cityml.naming import TARGETS, UNITS, Target
from cityml.prediction_log import PredictionBatch
from serving.features import RequestError, known_zones, trip_rows
from serving.model_store import Served
from serving.schemas import PredictRequest, PredictResponse, error_responses
from serving.state import AppState


class DirectRoute(APIRoute):
    """A route whose endpoint is the request handler itself: ``async (Request) -> Response``.

    FastAPI's handler solves the endpoint's parameters on every request (query string, cookies,
    headers) before calling it; the predict endpoint takes the bare request and reads and checks
    its body itself, so that was work for nothing, about 5% of a request. The route keeps
    everything else of an ``APIRoute``: its OpenAPI entry, FastAPI's exception handlers.
    """

    def __init__(self, path: str, endpoint: Callable[..., Any], **kwargs: Any) -> None:
        super().__init__(path, endpoint, **kwargs)
        d = self.dependant
        declared = [*d.dependencies, *d.path_params, *d.query_params, *d.header_params, *d.cookie_params]
        if declared or d.body_params:  # FastAPI would solve them; this route would silently not
            raise TypeError(f"{path}: a DirectRoute endpoint takes the request only, not dependencies or parameters")

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        return self.endpoint  # type: ignore[no-any-return]


router = APIRouter(prefix="/v1", tags=["predict"], route_class=DirectRoute)

# The route is ``async`` and runs on the event loop, as a bare ``booster.predict`` route would: a
# predict is CPU work of a fraction of a millisecond (the online reads are local SQLite or one Redis
# round trip each, bounded by a cache), and a hop to the thread pool and back cost more than that.
#
# It reads the raw body and validates it with pydantic in one pass from JSON
# (``PredictRequest.model_validate_json``), and answers with JSON it encodes itself: FastAPI's
# generic body handling and response serialization cost as much as the predict. The schemas stay
# the contract: the OpenAPI document shows them (``openapi_extra`` here, the components added by
# :func:`document`), and a validation error is FastAPI's, in the API's one error shape.
BODY_SCHEMA = {"$ref": "#/components/schemas/PredictRequest"}
#: The answer's encoder; the route's dicts carry the fields of ``PredictResponse`` and ``Prediction``
#: (a test validates answers against them).
_encode = json.JSONEncoder(allow_nan=False, separators=(",", ":")).encode
# The key is checked by ``serving.api.errors.Guard`` before the body is read; the document says so
# here rather than through a dependency FastAPI would solve on every request.
# So is the path's target, checked in the route: FastAPI's generic parameter solving cost more
# than the online reads.
_OPENAPI = {
    "parameters": [
        {"name": "target", "in": "path", "required": True, "schema": {"type": "string", "enum": list(TARGETS)}}
    ],
    "requestBody": {"required": True, "content": {"application/json": {"schema": BODY_SCHEMA}}},
    "security": [{"APIKeyHeader": []}],
}


def document(openapi: dict[str, Any]) -> dict[str, Any]:
    """Add the request body's schemas to an OpenAPI document (the route does not declare a body param)."""
    template = "#/components/schemas/{model}"
    schema = PredictRequest.model_json_schema(ref_template=template)
    components = openapi.setdefault("components", {}).setdefault("schemas", {})
    components.update(schema.pop("$defs", {}))
    components["PredictRequest"] = schema
    return openapi


def _target(value: str) -> Target:
    if value not in TARGETS:
        msg = f"Input should be {' or '.join(repr(t) for t in TARGETS)}"
        raise RequestValidationError([{"loc": ("path", "target"), "msg": msg, "type": "literal_error"}])
    return value  # type: ignore[return-value]


def _body(raw: bytes) -> PredictRequest:
    try:
        return PredictRequest.model_validate_json(raw)
    except ValidationError as exc:
        errors = [{**e, "loc": ("body", *e["loc"])} for e in exc.errors(include_url=False, include_input=False)]
        raise RequestValidationError(errors) from None


def _refuse(state: AppState, code: int, index: int, field: str, message: str, reason: str) -> HTTPException:
    state.metrics.errors.labels(reason).inc()
    return HTTPException(code, detail=[{"loc": ["body", "instances", index, field], "msg": message, "type": reason}])


@router.post(
    "/predict/{target}",
    response_model=PredictResponse,
    responses=error_responses(401, 421, 422, 503),
    openapi_extra=_OPENAPI,
)
async def predict(request: Request) -> Response:
    started = time.perf_counter()
    state: AppState = request.app.state.cityml
    target = _target(request.path_params["target"])
    body = _body(await request.body())
    request_id = uuid.uuid4().hex
    now = datetime.now(UTC)
    instances = body.instances
    catalog = state.models.catalog

    # Which model answers, and which zones exist, once per city of the request.
    per_city: dict[str, tuple[Served, str | None, frozenset[str] | None]] = {}
    served_by: list[Served] = []
    fallbacks: list[str | None] = []
    zones: list[frozenset[str] | None] = []
    for i, inst in enumerate(instances):
        hit = per_city.get(inst.city)
        if hit is None:
            if inst.city not in catalog:
                raise _refuse(state, 422, i, "city", f"unknown city {inst.city[:40]!r}", "unknown_city")
            if not state.models.owns(inst.city):  # a sharded fleet: the proxy routes by X-City
                shard = state.models.shard_of(inst.city)
                message = f"{inst.city!r} is served by shard {shard}: send X-City: {inst.city} through the proxy"
                raise _refuse(state, status.HTTP_421_MISDIRECTED_REQUEST, i, "city", message, "other_shard")
            served, fallback = state.models.get(target, inst.city)
            if served is None:
                message = f"no {target} model for {inst.city!r} and no global fallback"
                raise _refuse(state, status.HTTP_503_SERVICE_UNAVAILABLE, i, "city", message, "no_model")
            hit = per_city[inst.city] = (served, fallback, known_zones(catalog, inst.city, served.zones))
        served_by.append(hit[0])
        fallbacks.append(hit[1])
        zones.append(hit[2])
    try:
        rows = trip_rows(instances, catalog, now, zones)
    except RequestError as exc:
        raise _refuse(state, 422, exc.index, exc.field, str(exc), exc.reason) from exc

    contexts = {city: catalog.get(city).context for city in per_city}
    values = np.empty(len(instances))
    degraded = np.zeros(len(instances), dtype=bool)
    batches: list[PredictionBatch] = []
    groups: dict[int, list[int]] = {}
    for i, served in enumerate(served_by):
        groups.setdefault(id(served), []).append(i)
    for members in groups.values():
        index = np.asarray(members)
        model = served_by[members[0]].model
        part = rows.take(index)
        columns, online = model_columns(state.online.reader(model.feature_service), part, contexts)
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
        batches.append(
            PredictionBatch(
                ts=now,
                request_id=request_id,
                target=target,
                model=model.name,
                version=model.version,
                cities=[instances[i].city for i in members],
                fallbacks=[fallbacks[i] for i in members],
                degraded=online.missing,
                features={n: columns[n] for n in names},
                predictions=pred,
                trip_ids=[instances[i].trip_id for i in members],
                pickup_s=part.pickup_s,
                pickup_zones=part.pickup_zone,
                dropoff_zones=part.dropoff_zone,
            )
        )
    dropped = state.log.submit(batches)
    if dropped:
        state.metrics.log_dropped.inc(dropped)

    predictions: list[dict[str, Any]] = []
    counts: dict[tuple[str, str], int] = {}
    units: dict[str, str] = {}
    for i, (served, fallback) in enumerate(zip(served_by, fallbacks, strict=True)):
        city = instances[i].city
        if city not in units:
            units[city] = UNITS[target] if target != "price" else catalog.get(city).currency
        predictions.append(
            {
                "value": round(float(values[i]), 4),
                "unit": units[city],
                "model": served.model.name,
                "version": served.model.version,
                "fallback": fallback,
                "degraded": bool(degraded[i]),
            }
        )
        key = (served.model.name, str(fallback is not None).lower())
        counts[key] = counts.get(key, 0) + 1
    for (name, fell_back), count in counts.items():
        state.metrics.predictions.labels(target, name, fell_back).inc(count)
    answer = _encode({"request_id": request_id, "predictions": predictions})
    state.metrics.latency.labels(target).observe(time.perf_counter() - started)
    return Response(answer, media_type="application/json")
