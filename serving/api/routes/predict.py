"""POST /v1/predict/{target}: ETA or price for 1–1,000 trips.

One straight path, no pandas: validated instances → which model answers each and their trip rows
(``serving.predicting.prepare``: this request's refusals) → the model stage, shared with the
requests that arrived together (``serving.batching``, ``serving.predicting.answer``) → response.
"""

from __future__ import annotations

import itertools
import json
import os
import secrets
import time
from datetime import UTC, datetime
from typing import Any

from fastapi import APIRouter, Request, Response
from fastapi.exceptions import RequestValidationError
from pydantic import ValidationError

from cityml.naming import TARGETS, UNITS, Target
from serving.api.direct import DirectRoute
from serving.predicting import prepare
from serving.schemas import PredictRequest, PredictResponse, error_responses
from serving.state import AppState

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


class _Ids:
    """Request ids: 80 random bits drawn once per process, then a count (32 hex digits, as a uuid's).

    ``uuid4`` read the OS's random source on every request (1.3% of one). A forked child draws its own.
    """

    def __init__(self) -> None:
        self.reset()
        os.register_at_fork(after_in_child=self.reset)

    def reset(self) -> None:
        self.prefix = secrets.token_hex(10)
        self.count = itertools.count()

    def __call__(self) -> str:
        return f"{self.prefix}{next(self.count):012x}"


request_id = _Ids()


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
    job = prepare(state, target, body.instances, request_id(), datetime.now(UTC))
    answer = await state.predicts(job)  # with the requests that arrived with it (serving.batching)

    catalog = state.models.catalog
    predictions: list[dict[str, Any]] = []
    counts: dict[tuple[str, str], int] = {}
    units: dict[str, str] = {}
    for i, (served, fallback) in enumerate(zip(job.served_by, job.fallbacks, strict=True)):
        city = job.instances[i].city
        if city not in units:
            units[city] = UNITS[target] if target != "price" else catalog.get(city).currency
        predictions.append(
            {
                "value": round(float(answer.values[i]), 4),
                "unit": units[city],
                "model": served.model.name,
                "version": served.model.version,
                "fallback": fallback,
                "degraded": bool(answer.degraded[i]),
            }
        )
        key = (served.model.name, str(fallback is not None).lower())
        counts[key] = counts.get(key, 0) + 1
    for (name, fell_back), count in counts.items():
        state.metrics.predictions.labels(target, name, fell_back).inc(count)
    encoded = _encode({"request_id": job.request_id, "predictions": predictions})
    state.metrics.latency.labels(target).observe(time.perf_counter() - started)
    return Response(encoded, media_type="application/json")
