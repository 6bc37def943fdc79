"""Property-based: no request is a 500, whether schemathesis writes it from /openapi.json or hypothesis
from the request schema's fields (with real cities and zones, so that requests reach the model)."""

from __future__ import annotations

import tempfile
from datetime import UTC, datetime
from pathlib import Path

import pytest
import schemathesis
from fastapi import Request
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from serving.app import create_app
from serving.model_store import Served
from tests.unit.test_serving_routes import KEY, _booster, _state

STATE = _state(Path(tempfile.mkdtemp(prefix="cityml-contract-")), _booster())
_eta = STATE.models._models[("eta", "alpha")]
STATE.models._models[("price", "alpha")] = Served(city="alpha", target="price", model=_eta.model)  # so no 503
APP = create_app(state=STATE)
APP.state.cityml = STATE  # also outside a lifespan: schemathesis calls the app directly
schema = schemathesis.openapi.from_asgi("/openapi.json", APP)


@schema.parametrize()
@settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
def test_no_request_the_schema_allows_is_a_server_error(case: schemathesis.Case) -> None:
    case.headers = {**(case.headers or {}), "X-API-Key": KEY}
    _cities_made_real(case.body)
    response = case.call()
    # and every answer, error or not, is one the document declares, in the declared shape
    checks = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]
    case.validate_response(response, checks=checks)


def _cities_made_real(body: object) -> None:
    """Random city names never reach a model: make every other instance's city one the catalog has."""
    if isinstance(body, dict) and isinstance(body.get("instances"), list):
        for i, inst in enumerate(body["instances"]):
            if isinstance(inst, dict) and i % 2 == 0:
                inst["city"] = "alpha"


instant = st.datetimes(min_value=datetime(1, 1, 2), max_value=datetime(9999, 12, 30), timezones=st.just(UTC))
numbers = st.one_of(
    st.none(), st.floats(allow_nan=False, allow_infinity=False), st.floats(-200, 200), st.integers(-(10**6), 10**6)
)
zone = st.one_of(st.none(), st.sampled_from(["z00", "z05", "z15", "z16", "z99"]), st.text(max_size=70))
instance = st.fixed_dictionaries(
    {"city": st.sampled_from(["alpha", "alpha", "beta-city", "gotham"])},
    optional={
        "pickup_ts": st.one_of(instant.map(datetime.isoformat), st.text(max_size=30)),
        "pickup_zone": zone,
        "dropoff_zone": zone,
        "pickup_lat": st.one_of(numbers, st.floats(38.69, 38.80)),
        "pickup_lon": st.one_of(numbers, st.floats(-9.23, -9.09)),
        "dropoff_lat": st.one_of(numbers, st.floats(38.69, 38.80)),
        "dropoff_lon": st.one_of(numbers, st.floats(-9.23, -9.09)),
        "distance_km": numbers,
        "trip_id": st.one_of(st.none(), st.text(max_size=200)),
    },
)


plausible = st.fixed_dictionaries(
    {
        "city": st.just("alpha"),
        "pickup_ts": st.datetimes(min_value=datetime(1970, 1, 2), max_value=datetime(2099, 12, 30)).map(
            datetime.isoformat
        ),
        "pickup_zone": st.sampled_from([f"z{i:02d}" for i in range(16)]),
        "dropoff_zone": st.sampled_from([f"z{i:02d}" for i in range(16)]),
        "distance_km": st.floats(0.001, 500),
    },
    optional={"trip_id": st.text(max_size=128)},
)


@given(
    st.one_of(st.lists(plausible, min_size=1, max_size=5), st.lists(instance, min_size=1, max_size=30)),
    st.sampled_from(["eta", "price"]),
)
@settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))
def test_no_instance_the_request_schema_can_hold_is_a_server_error(instances: list[dict], target: str) -> None:
    with TestClient(APP, raise_server_exceptions=False) as api:
        r = api.post(f"/v1/predict/{target}", json={"instances": instances}, headers={"X-API-Key": KEY})
    assert r.status_code != 500, r.text
    assert r.status_code in (200, 413, 422, 503), r.text
    if r.status_code == 422:
        assert all(d["loc"] for d in r.json()["detail"])  # every refusal names where


def test_the_property_runs_reached_the_model() -> None:
    test_no_instance_the_request_schema_can_hold_is_a_server_error()
    assert "cityml_predictions_total{" in STATE.metrics.scrape().decode()


def test_the_predict_route_class_refuses_what_it_would_not_solve() -> None:
    """``DirectRoute`` hands FastAPI's per-request solving over to the endpoint: a dependency or a declared
    parameter on such a route would be skipped silently, so declaring one fails when the route is built."""
    from fastapi import APIRouter, Depends

    from serving.api.direct import DirectRoute

    router = APIRouter(route_class=DirectRoute)

    async def bare(request: Request) -> None: ...

    async def with_query(request: Request, limit: int = 10) -> None: ...

    router.add_api_route("/fine", bare, methods=["POST"])
    with pytest.raises(TypeError, match="request only"):
        router.add_api_route("/guarded", bare, methods=["POST"], dependencies=[Depends(lambda: None)])
    with pytest.raises(TypeError, match="request only"):
        router.add_api_route("/query", with_query, methods=["POST"])


def test_a_direct_route_answers_its_exceptions_with_the_handlers_the_router_would_use() -> None:
    """``serving.api.direct.call`` looks a handler up as Starlette does: an HTTPException's status code
    first, then the class; a plain-function handler runs in the thread pool; no handler: it raises."""
    from fastapi import APIRouter, FastAPI, HTTPException
    from fastapi.responses import JSONResponse, PlainTextResponse
    from starlette.types import Receive, Scope, Send

    from serving.api.direct import DirectRoute, call, match

    app = FastAPI()
    router = APIRouter(route_class=DirectRoute)

    async def gone(request: Request) -> None:
        raise HTTPException(404, "no such thing")

    async def broken(request: Request) -> None:
        raise ValueError("bad value")

    async def other(request: Request) -> None:
        raise KeyError("nobody handles this")

    router.add_api_route("/gone", gone, methods=["POST"])
    router.add_api_route("/broken", broken, methods=["POST"])
    router.add_api_route("/other", other, methods=["POST"])
    app.include_router(router)

    def by_status(request: Request, exc: Exception) -> PlainTextResponse:  # sync: Starlette runs it in a thread
        return PlainTextResponse("by status", status_code=410)

    async def by_class(request: Request, exc: Exception) -> JSONResponse:
        return JSONResponse({"handled": str(exc)}, status_code=418)

    app.add_exception_handler(404, by_status)
    app.add_exception_handler(ValueError, by_class)

    async def direct_only(scope: Scope, receive: Receive, send: Send) -> None:
        scope["app"] = app
        found = match(app, scope["method"], scope["path"])
        assert found is not None, scope["path"]
        await call(*found, scope, receive, send)

    client = TestClient(direct_only, raise_server_exceptions=True)  # no lifespan: requests only
    gone_r = client.post("/gone")
    assert (gone_r.status_code, gone_r.text) == (410, "by status")
    assert client.post("/broken").json() == {"handled": "bad value"}
    with pytest.raises(KeyError):
        client.post("/other")
    assert match(app, "GET", "/gone") is None and match(app, "POST", "/gone/") is None
