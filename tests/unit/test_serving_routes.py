"""The routes through TestClient, no uvicorn: every status code, the error shape, degraded answers, the log.

The app gets a hand-built state (``create_app(state=...)`` and ``dependency_overrides``): real small
LightGBM models in a ModelStore, a fake online reader, a real prediction log in a temp folder.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import lightgbm as lgb
import numpy as np
import pandas as pd
import pytest
from fastapi.testclient import TestClient
from pydantic import SecretStr

from cityml.features.online import OnlineRows
from cityml.modeling import LabelScale, model_frame
from cityml.prediction_log import PredictionLog, read_predictions
from cityml.registry import LoadedModel
from cityml.settings import Settings
from serving.api.deps import get_state
from serving.app import create_app
from serving.model_store import ModelStore, Served
from serving.schemas import Prediction, PredictResponse
from serving.state import AppState, Metrics
from tests.conftest import SMALL_CATALOG

ONLINE = "pickup__zone_trips_1h"
FEATURES = ["distance_km", "local_hour", "pickup_zone", "dropoff_zone", ONLINE]
KEY, ADMIN = "predict-key", "admin-key"


class FakeReader:
    """Online values: ``value`` for every row, or missing rows / a failed store."""

    def __init__(self) -> None:
        self.names = [ONLINE]
        self.value = 5.0
        self.missing_every: int | None = None
        self.error: str | None = None

    def read(self, keys: dict[str, Any], at_s: np.ndarray) -> OnlineRows:
        n = len(at_s)
        if self.error:
            return OnlineRows({ONLINE: np.full(n, np.nan)}, np.ones(n, dtype=bool), self.error)
        values = np.full(n, self.value)
        missing = np.zeros(n, dtype=bool)
        if self.missing_every:
            missing[:: self.missing_every] = True
            values[missing] = np.nan
        return OnlineRows({ONLINE: values}, missing)


class FakeOnline:
    def __init__(self) -> None:
        self.r = FakeReader()

    def reader(self, service: str) -> FakeReader:
        return self.r


def _booster(seed: int = 0) -> lgb.Booster:
    rng = np.random.default_rng(seed)
    n = 1500
    zones = [f"z{i:02d}" for i in range(16)]
    t = pd.DataFrame(
        {
            "distance_km": rng.uniform(0.5, 15, n),
            "local_hour": rng.integers(0, 24, n),
            "pickup_zone": rng.choice(zones, n),
            "dropoff_zone": rng.choice(zones, n),
            ONLINE: rng.uniform(0, 20, n),
        }
    )
    y, w = LabelScale("per_km").encode(t["distance_km"] * 120 + t[ONLINE] * 3, t)
    params = {"objective": "l1", "verbosity": -1, "num_threads": 1, "min_data_in_leaf": 5}
    return lgb.train(params, lgb.Dataset(model_frame(t, FEATURES), y, weight=w), num_boost_round=30)


@pytest.fixture(scope="module")
def booster() -> lgb.Booster:
    return _booster()


def _state(tmp_path: Path, booster: lgb.Booster, **settings_over: Any) -> AppState:
    settings = Settings(
        home=tmp_path / "var",
        catalog_path=SMALL_CATALOG,
        reload_interval_s=0,
        api_keys=[SecretStr(KEY)],
        admin_key=SecretStr(ADMIN),
        max_body_bytes=200_000,
        **settings_over,
    )
    models = ModelStore(settings)
    model = LoadedModel(
        name="eta-alpha",
        version="3",
        booster=booster,
        tags={"city": "alpha", "feature_service": "eta_v2"},
        run_id=None,
        scale=LabelScale("per_km"),
    )
    models._models = {("eta", "alpha"): Served(city="alpha", target="eta", model=model)}
    models.loaded_once = True
    return AppState(
        settings=settings,
        online=FakeOnline(),  # type: ignore[arg-type]
        models=models,
        log=PredictionLog(settings.predictions_dir, max_queue=10_000, flush_s=0.05),
        metrics=Metrics(),
    )


@pytest.fixture
def state(tmp_path: Path, booster: lgb.Booster) -> AppState:
    return _state(tmp_path, booster)


@pytest.fixture
def api(state: AppState) -> Iterator[TestClient]:
    app = create_app(state=state)
    app.dependency_overrides[get_state] = lambda: state
    with TestClient(app, raise_server_exceptions=False) as client:
        yield client
    state.log.close()


def trip(**over: Any) -> dict[str, Any]:
    base = {
        "city": "alpha",
        "pickup_ts": "2026-03-02T08:15:00Z",
        "pickup_zone": "z01",
        "dropoff_zone": "z10",
        "distance_km": 4.2,
    }
    return {**base, **over}


def post(api: TestClient, body: Any, key: str | None = KEY, target: str = "eta") -> Any:
    headers = {"X-API-Key": key} if key is not None else {}
    return api.post(f"/v1/predict/{target}", json=body, headers=headers)


def test_a_prediction_is_what_the_model_predicts_from_the_same_inputs(api: TestClient, state: AppState) -> None:
    r = post(api, {"instances": [trip(), trip(distance_km=9.0, pickup_zone="z05")]})
    assert r.status_code == 200, r.text
    got = [p["value"] for p in r.json()["predictions"]]
    model = state.models.get("eta", "alpha")[0].model  # type: ignore[union-attr]
    frame = pd.DataFrame(
        {
            "distance_km": [4.2, 9.0],
            "local_hour": [8, 8],  # 08:15 UTC is 08:15 in Lisbon in winter
            "pickup_zone": ["z01", "z05"],
            "dropoff_zone": ["z10", "z10"],
            ONLINE: [5.0, 5.0],
        }
    )
    np.testing.assert_allclose(got, model.predict(frame), atol=1e-4)
    p = r.json()["predictions"][0]
    assert p["unit"] == "s" and p["model"] == "eta-alpha" and p["version"] == "3" and p["degraded"] is False
    # The route writes its JSON itself: the answer is exactly what the documented schema says.
    assert r.headers["content-type"] == "application/json"
    assert PredictResponse.model_validate_json(r.content).model_dump(mode="json") == r.json()
    assert set(p) == set(Prediction.model_fields)


def test_missing_online_values_and_a_failed_store_answer_degraded_not_500(api: TestClient, state: AppState) -> None:
    reader = state.online.reader("eta_v2")
    reader.missing_every = 2  # type: ignore[attr-defined]
    r = post(api, {"instances": [trip(), trip(), trip()]})
    assert r.status_code == 200 and [p["degraded"] for p in r.json()["predictions"]] == [True, False, True]
    reader.error = "Error 111 connecting to 127.0.0.1:1"  # type: ignore[attr-defined]
    r = post(api, {"instances": [trip()]})
    assert r.status_code == 200 and r.json()["predictions"][0]["degraded"] is True
    metrics = api.get("/metrics").text
    assert 'cityml_predictions_degraded_total{reason="store_error",target="eta"} 1.0' in metrics
    assert 'reason="missing_or_stale"' in metrics


def test_predictions_are_logged_off_the_request_path_with_the_clients_trip_id(api: TestClient, state: AppState) -> None:
    r = post(api, {"instances": [trip(trip_id="t-1"), trip(trip_id="t-2")]})
    assert r.status_code == 200
    state.log.close()
    logged = read_predictions(state.settings.predictions_dir, "alpha", "eta")
    assert [x["trip_id"] for x in logged] == ["t-1", "t-2"]
    assert logged[0]["request_id"] == r.json()["request_id"] and logged[0]["version"] == "3"
    assert logged[0]["features"]["pickup_zone"] == "z01" and logged[0]["features"][ONLINE] == 5.0
    assert logged[0]["prediction"] == pytest.approx(r.json()["predictions"][0]["value"], abs=1e-4)


def test_a_full_log_queue_drops_and_counts_never_blocks(tmp_path: Path, booster: lgb.Booster) -> None:
    state = _state(tmp_path, booster)
    state.log.close()  # no writer: the queue only fills
    state.log = PredictionLog(tmp_path / "log", max_queue=3, flush_s=60)
    state.log._stop.set()
    state.log._thread.join()
    app = create_app(state=state)
    with TestClient(app) as client:
        r = post(client, {"instances": [trip()] * 5})
        assert r.status_code == 200
        assert "cityml_prediction_log_dropped_total 5.0" in client.get("/metrics").text  # the request's batch


@pytest.mark.parametrize(
    ("key", "path", "code"),
    [
        (None, "/v1/predict/eta", 401),
        ("", "/v1/predict/eta", 401),
        ("wrong", "/v1/predict/eta", 401),
        ("clé-naïve", "/v1/predict/eta", 401),  # not ASCII: compared as bytes, not a 500
        (KEY, "/admin/reload", 403),
        (None, "/admin/reload", 401),
        (None, "/v1/models", 401),
    ],
)
def test_keys(api: TestClient, key: str | None, path: str, code: int) -> None:
    headers = {"X-API-Key": key.encode()} if key is not None else {}
    r = api.post(path, json={"instances": [trip()]}, headers=headers) if path != "/v1/models" else api.get(path)
    assert r.status_code == code, r.text
    assert r.json()["detail"][0]["loc"] == ["header", "X-API-Key"]


def test_under_a_path_prefix_every_route_still_needs_its_key(state: AppState) -> None:
    """Behind ``--root-path`` (or a proxy's mount) the prefix is part of the request's path: the guard checks
    the path the router matches, and anything not public needs a key, a route nobody listed included."""
    with TestClient(create_app(state=state), root_path="/api", raise_server_exceptions=False) as client:
        assert client.post("/api/admin/reload").status_code == 401
        assert client.post("/api/admin/reload", headers={"X-API-Key": KEY}).status_code == 403
        assert client.get("/api/v1/models").status_code == 401
        assert client.post("/api/v1/predict/eta", json={"instances": [trip()]}).status_code == 401
        r = client.post("/api/v1/predict/eta", json={"instances": [trip()]}, headers={"X-API-Key": KEY})
        assert r.status_code == 200, r.text
        assert client.get("/api/healthz").status_code == 200 and client.get("/api/openapi.json").status_code == 200
        assert client.get("/api/healthz/", follow_redirects=False).status_code == 307  # the router's redirect
        assert client.get("/api/not-a-route").status_code == 401  # closed unless listed public
        assert client.get("/api/not-a-route", headers={"X-API-Key": KEY}).status_code == 404


def test_a_key_sent_with_surrounding_spaces_is_the_key(api: TestClient) -> None:
    """h11 strips a header value's spaces, httptools keeps them: the same key works under both."""
    assert post(api, {"instances": [trip()]}, key=f" {KEY} ").status_code == 200


@pytest.mark.parametrize("length", ["9" * 5_000, "-5", "+5", "1e3"])
def test_a_content_length_that_is_not_a_size_is_400(api: TestClient, length: str) -> None:
    r = api.post("/v1/predict/eta", content=b"{}", headers={"Content-Length": length, "X-API-Key": KEY})
    assert r.status_code == 400, r.text
    assert r.json()["detail"][0]["loc"] == ["header", "Content-Length"]


def test_blank_keys_count_as_unset(tmp_path: Path, booster: lgb.Booster) -> None:
    state = _state(tmp_path, booster)
    state.settings = state.settings.model_copy(update={"admin_key": SecretStr("  "), "api_keys": [SecretStr("")]})
    with TestClient(create_app(state=state)) as client:
        assert post(client, {"instances": [trip()]}, key="").status_code == 503
        assert client.post("/admin/reload", headers={"X-API-Key": ""}).status_code == 503
    state.log.close()


def test_the_key_is_checked_and_the_size_bounded_before_the_body_is_read(api: TestClient) -> None:
    big = b'{"instances": [' + b" " * 300_000 + b"]}"
    r = api.post("/v1/predict/eta", content=big, headers={"Content-Type": "application/json"})
    assert r.status_code == 401  # no key: refused before the 300 kB body
    r = api.post("/v1/predict/eta", content=big, headers={"Content-Type": "application/json", "X-API-Key": KEY})
    assert r.status_code == 413 and r.json()["detail"][0]["type"] == "too_large"

    def chunks() -> Iterator[bytes]:  # no Content-Length: counted while read
        yield b'{"instances": ['
        for _ in range(300):
            yield b" " * 1000
        yield b"]}"

    r = api.post("/v1/predict/eta", content=chunks(), headers={"Content-Type": "application/json", "X-API-Key": KEY})
    assert r.status_code == 413


def test_more_than_1000_instances_is_413_and_422s_do_not_echo_the_input(api: TestClient) -> None:
    r = post(api, {"instances": [trip(distance_km=1.0)] * 1001})
    assert r.status_code == 413 and r.json()["detail"][0]["type"] == "too_many_instances"
    r = post(api, {"instances": [trip(distance_km=-1.0, pickup_zone="x" * 60)] * 500})
    assert r.status_code == 422
    assert len(r.content) < 5_000 and "input" not in r.json()["detail"][0]
    assert r.json()["errors"] == 500 and len(r.json()["detail"]) == 20


@pytest.mark.parametrize(
    ("instance", "field", "code"),
    [
        (trip(city="gotham"), "city", 422),
        (trip(pickup_zone="z99"), "pickup_zone", 422),  # not one of alpha's zones
        (trip(dropoff_zone="z" * 10_000), "dropoff_zone", 422),
        (trip(pickup_ts="0001-01-01T00:00:00Z"), "pickup_ts", 422),
        (trip(pickup_ts="9999-12-31T23:59:59Z"), "pickup_ts", 422),
        (trip(distance_km=None), "distance_km", 422),
        (
            {k: v for k, v in trip(pickup_lat=38.7, pickup_lon=-9.2).items() if k != "pickup_zone"},
            "pickup_lat",
            422,
        ),
        (trip(city="beta-city"), "city", 503),  # in the catalog, no model
        # Zones given, but a point on another continent: the distance would be, and training never saw it.
        (trip(pickup_lat=38.75, pickup_lon=-9.15, dropoff_lat=-33.9, dropoff_lon=151.2), "dropoff_lat", 422),
        (trip(distance_km=True), "distance_km", 422),  # not a number: not a 1 km trip
        (trip(distance_km="4.2"), "distance_km", 422),
    ],
)
def test_refusals_name_the_field(api: TestClient, instance: dict[str, Any], field: str, code: int) -> None:
    r = post(api, {"instances": [instance]})
    assert r.status_code == code, r.text
    detail = r.json()["detail"]
    assert any(field in [str(x) for x in d["loc"]] or field in d["msg"] for d in detail), detail


def test_nan_coordinates_are_refused(api: TestClient) -> None:
    body = '{"instances": [{"city": "alpha", "pickup_lat": NaN, "pickup_lon": 1, "dropoff_lat": 1, "dropoff_lon": 1}]}'
    r = api.post("/v1/predict/eta", content=body, headers={"Content-Type": "application/json", "X-API-Key": KEY})
    assert r.status_code == 422 and "pickup_lat" in r.json()["detail"][0]["loc"]


def test_a_500_is_counted_logged_and_leaks_nothing(api: TestClient, state: AppState) -> None:
    def boom(*_: Any) -> None:
        raise RuntimeError("secret internals")

    state.online.reader("eta_v2").read = boom  # type: ignore[method-assign]
    r = post(api, {"instances": [trip()]})
    assert r.status_code == 500 and "secret" not in r.text and r.json()["detail"][0]["type"] == "server_error"
    assert 'cityml_server_errors_total{path="/v1/predict/{target}"} 1.0' in api.get("/metrics").text
    assert api.get("/healthz").status_code == 200  # the same client goes on


def test_readyz_lists_stale_versions_and_models_lists_what_serves(api: TestClient, state: AppState) -> None:
    from serving.model_store import Stale

    assert api.get("/readyz").json() == {
        "ready": True,
        "models": 1,
        "stale": [],
        "registry_error": None,
        "shard": "0/1",
    }
    state.models.stale["eta-alpha"] = Stale("eta-alpha", "4", "self-test: predicts 1e6 for row 0, recorded 812")
    body = api.get("/readyz").json()
    assert body["stale"][0]["version"] == "4" and "self-test" in body["stale"][0]["reason"]
    listed = api.get("/v1/models", headers={"X-API-Key": KEY}).json()
    assert listed["total"] == 1 and listed["models"][0]["version"] == "3"
    assert listed["models"][0]["self_test"] == "passed"


def test_docs_are_served_from_the_package(api: TestClient) -> None:
    page = api.get("/docs")
    assert page.status_code == 200 and "cdn" not in page.text.lower()
    asset = next(part.split('"')[0] for part in page.text.split('src="')[1:] if part.endswith(".js") or ".js" in part)
    assert api.get(asset).status_code == 200


def _alias_event(name: str) -> bytes:
    import json

    data = {"name": name, "alias": "champion", "version": "4"}
    return json.dumps({"entity": "model_version_alias", "action": "created", "data": data}).encode()


def _signed(body: bytes, secret: str, stamp: str, delivery: str = "d1") -> dict[str, str]:
    """MLflow's webhook headers for ``body``: an HMAC-SHA256 of delivery id, timestamp and body."""
    import base64
    import hashlib
    import hmac

    mac = hmac.new(secret.encode(), f"{delivery}.{stamp}.".encode() + body, hashlib.sha256).digest()
    return {
        "X-MLflow-Signature": "v1," + base64.b64encode(mac).decode(),
        "X-MLflow-Timestamp": stamp,
        "X-MLflow-Delivery-Id": delivery,
    }


def test_a_signed_registry_event_reloads_just_that_model(api: TestClient, state: AppState) -> None:
    import time

    asked: list[Any] = []
    state.models.refresh = lambda only=None: asked.append(only) or {"eta-alpha": "v4"}  # type: ignore[method-assign]
    body = _alias_event("eta-alpha")

    def signed(secret: str, stamp: str) -> dict[str, str]:
        return _signed(body, secret, stamp)

    now = str(int(time.time()))
    assert api.post("/admin/registry-events", content=body, headers=signed("s", now)).status_code == 404  # off
    state.settings = state.settings.model_copy(update={"webhook_secret": SecretStr("s")})
    assert api.post("/admin/registry-events", content=body, headers=signed("wrong", now)).status_code == 401
    old = str(int(time.time()) - 3600)
    assert api.post("/admin/registry-events", content=body, headers=signed("s", old)).status_code == 401  # replay
    r = api.post("/admin/registry-events", content=body, headers=signed("s", now))
    assert r.status_code == 200 and r.json() == {"changed": {"eta-alpha": "v4"}} and asked == [{"eta-alpha"}]
    # The same delivery again (captured and replayed, or MLflow trying again): received, nothing reloaded.
    r = api.post("/admin/registry-events", content=body, headers=signed("s", now))
    assert r.status_code == 200 and "already received" in r.json()["ignored"] and asked == [{"eta-alpha"}]


@pytest.mark.parametrize(
    ("stamp", "body", "code"),
    [
        ("9" * 5_000, _alias_event("eta-alpha"), 401),  # past int()'s digit limit
        ("now", b"[" * 5_000 + b"]" * 5_000, 422),  # nested past the JSON parser's recursion limit
        ("now", b'{"entity": "model_version_alias", "action": "created", "data": "eta-alpha"}', 422),
        ("now", b'"just text"', 422),
    ],
)
def test_a_signed_delivery_that_is_no_event_is_refused_not_a_500(
    api: TestClient, state: AppState, stamp: str, body: bytes, code: int
) -> None:
    import time

    state.settings = state.settings.model_copy(update={"webhook_secret": SecretStr("s")})
    stamp = str(int(time.time())) if stamp == "now" else stamp
    r = api.post("/admin/registry-events", content=body, headers=_signed(body, "s", stamp))
    assert r.status_code == code, r.text
    assert "detail" in r.json()


def _webhook_app(state: AppState, refresh: Any = None) -> Any:
    """The app with the registry webhook on (secret ``s``), for httpx's ASGI transport (no lifespan runs)."""
    if refresh is not None:
        state.models.refresh = refresh  # type: ignore[method-assign]
    state.settings = state.settings.model_copy(update={"webhook_secret": SecretStr("s")})
    app = create_app(state=state)
    app.state.cityml = state
    return app


def test_a_webhook_body_that_never_arrives_is_408(state: AppState, monkeypatch: pytest.MonkeyPatch) -> None:
    """The webhook route is open to anyone (it checks a signature, not a key): a body sent byte by byte, or
    never, is given up on instead of holding the connection."""
    import asyncio

    import httpx

    from serving.api.routes import admin

    monkeypatch.setattr(admin, "BODY_TIMEOUT_S", 0.2)
    app = _webhook_app(state)

    async def trickle() -> Any:
        async def body() -> Any:
            yield b"{"
            await asyncio.sleep(5)
            yield b"}"

        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://cityml") as client:
            headers = _signed(b"{}", "s", "1")
            return await asyncio.wait_for(client.post("/admin/registry-events", content=body(), headers=headers), 3)

    r = asyncio.run(trickle())
    state.log.close()
    assert r.status_code == 408 and r.json()["detail"][0]["type"] == "timeout"


def test_copies_of_one_delivery_arriving_together_reload_once(state: AppState) -> None:
    import asyncio
    import time

    import httpx

    asked: list[Any] = []

    def slow(only: set[str] | None = None) -> dict[str, str]:
        asked.append(only)
        time.sleep(0.2)
        return {}

    app = _webhook_app(state, slow)
    body = _alias_event("eta-alpha")

    async def copies() -> list[dict[str, Any]]:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://cityml") as client:
            headers = _signed(body, "s", str(int(time.time())), "d7")
            sent = [client.post("/admin/registry-events", content=body, headers=headers) for _ in range(10)]
            return [r.json() for r in await asyncio.gather(*sent)]

    answers = asyncio.run(copies())
    state.log.close()
    assert asked == [{"eta-alpha"}]
    assert (
        sum("changed" in a for a in answers) == 1
        and sum("already received" in a.get("ignored", "") for a in answers) == 9
    )


def test_a_burst_of_deliveries_reloads_one_at_a_time_and_health_answers_meanwhile(state: AppState) -> None:
    """60 signed deliveries while a reload takes its time (44 s at 2,000 models): they wait their turn on the
    event loop, not each in a worker thread (the pool has 40), and the probes keep answering."""
    import asyncio
    import threading
    import time

    import httpx

    release = threading.Event()
    running: list[int] = []
    most = [0]

    def slow(only: set[str] | None = None) -> dict[str, str]:
        running.append(1)
        most[0] = max(most[0], len(running))
        release.wait(30)
        running.pop()
        return {}

    app = _webhook_app(state, slow)
    body = _alias_event("eta-alpha")

    async def burst() -> tuple[list[int], list[int]]:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://cityml") as client:
            now = str(int(time.time()))
            posts = [
                asyncio.create_task(
                    client.post("/admin/registry-events", content=body, headers=_signed(body, "s", now, f"d{i}"))
                )
                for i in range(60)
            ]
            try:
                await asyncio.sleep(0.3)
                probes = [
                    (await asyncio.wait_for(client.get(path), 10)).status_code
                    for path in ("/healthz", "/readyz", "/metrics")
                ]
                listed = await asyncio.wait_for(client.get("/v1/models", headers={"X-API-Key": KEY}), 10)
                probes.append(listed.status_code)
            finally:
                release.set()
            return probes, [r.status_code for r in await asyncio.gather(*posts)]

    probes, answers = asyncio.run(burst())
    state.log.close()
    assert probes == [200, 200, 200, 200]
    assert answers == [200] * 60 and most[0] == 1


def test_a_city_held_by_another_shard_gets_421_naming_that_shard(tmp_path: Path, booster: lgb.Booster) -> None:
    from cityml.shards import shard_of

    shard = shard_of("alpha", 2)
    other = shard_of("beta-city", 2)
    assert other != shard  # the small catalog's two cities sit on different shards of 2
    state = _state(tmp_path, booster, serve_shards=2, serve_shard=shard)
    app = create_app(state=state)
    app.dependency_overrides[get_state] = lambda: state
    with TestClient(app, raise_server_exceptions=False) as api:
        assert post(api, {"instances": [trip()]}).status_code == 200
        r = post(api, {"instances": [trip(), trip(city="beta-city")]})
        assert r.status_code == 421
        detail = r.json()["detail"][0]
        assert detail["loc"] == ["body", "instances", 1, "city"] and detail["type"] == "other_shard"
        assert f"served by shard {other}" in detail["msg"]
        assert api.get("/readyz").json()["shard"] == f"{shard}/2"
        # Each shard has its own webhook: an event for the other shard's model reloads nothing here.
        import time

        asked: list[Any] = []
        state.models.refresh = lambda only=None: asked.append(only) or {}  # type: ignore[method-assign]
        state.settings = state.settings.model_copy(update={"webhook_secret": SecretStr("s")})
        now = str(int(time.time()))
        theirs = _alias_event("price-beta-city")
        r = api.post("/admin/registry-events", content=theirs, headers=_signed(theirs, "s", now))
        assert r.status_code == 200 and r.json() == {"ignored": f"price-beta-city is held by shard {other}"}
        assert asked == []
        mine = _alias_event("eta-alpha")
        r = api.post("/admin/registry-events", content=mine, headers=_signed(mine, "s", now, "d2"))
        assert r.status_code == 200
        assert asked == [{"eta-alpha"}]
    state.log.close()


def test_the_predict_is_called_past_the_router_and_other_requests_still_route(
    api: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The guard calls the predict endpoint itself (``serving.api.direct``): the router's handling of the
    route is never reached, a refusal still gets the app's error shape, and what does not match the route
    exactly (another method, a trailing slash, another target) is the router's, as for any route."""
    from serving.api.direct import DirectRoute

    [route] = [r for r in api.app.routes if isinstance(r, DirectRoute)]  # type: ignore[attr-defined]

    handled: list[str] = []
    handle = route.handle

    async def counted(scope: Any, receive: Any, send: Any) -> None:
        handled.append(scope["method"])
        await handle(scope, receive, send)

    monkeypatch.setattr(route, "handle", counted)
    assert post(api, {"instances": [trip()]}).status_code == 200
    refused = post(api, {"instances": [trip(pickup_zone="z99")]})
    assert refused.status_code == 422 and refused.json()["detail"][0]["loc"] == ["body", "instances", 0, "pickup_zone"]
    assert post(api, {"instances": [trip()]}, target="fare").json()["detail"][0]["loc"] == ["path", "target"]
    wrong_method = api.get("/v1/predict/eta", headers={"X-API-Key": KEY})
    assert wrong_method.status_code == 405 and wrong_method.json()["detail"][0]["type"] == "method_not_allowed"
    slash = api.post(
        "/v1/predict/eta/", json={"instances": [trip()]}, headers={"X-API-Key": KEY}, follow_redirects=False
    )
    assert slash.status_code == 307 and slash.headers["location"].endswith("/v1/predict/eta")
    assert handled == ["GET"], "the router handled a predict"


def test_keys_rotate_by_overlap() -> None:
    """The runbook's rotation: both keys open predict while clients move, then only the new one does."""
    from serving.api.deps import check_key

    both = Settings(api_keys=[SecretStr("old-key"), SecretStr("new-key")], admin_key=SecretStr("adm"))
    assert check_key(both, b"old-key", admin=False) == check_key(both, b"new-key", admin=False) == "ok"
    after = both.model_copy(update={"api_keys": [SecretStr("new-key")]})
    assert check_key(after, b"new-key", admin=False) == "ok"
    assert check_key(after, b"old-key", admin=False) == "wrong"
    assert check_key(after, b"new-key", admin=True) == "not_admin"


def test_requests_arriving_together_share_one_pass_and_get_the_answers_they_get_alone(state: AppState) -> None:
    """Eight requests sent at once: one run of the model stage. Each answer is the one the request gets
    alone, a request refused (an unknown zone; no distance) is refused alone, and the log holds each
    answered request's rows under its own id. (A refusal from the model stage itself is in
    ``tests/unit/test_batching.py``.)"""
    import asyncio

    import httpx

    app = create_app(state=state)
    app.state.cityml = state  # httpx's ASGI transport runs no lifespan
    good = [{"instances": [trip(trip_id=f"a{i}", distance_km=1.0 + i, pickup_zone=f"z{i:02d}")]} for i in range(5)] + [
        {"instances": [trip(trip_id="b0", distance_km=3.3), trip(trip_id="b1", dropoff_zone="z07")]}
    ]
    bad = [
        {"instances": [trip(), trip(pickup_zone="z99")]},  # refused before the models
        {"instances": [trip(), trip(distance_km=None)]},  # neither a distance nor the coordinates
    ]

    async def send(bodies: list[dict[str, Any]], together: bool) -> list[httpx.Response]:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://cityml") as client:
            calls = [client.post("/v1/predict/eta", json=b, headers={"X-API-Key": KEY}) for b in bodies]
            if together:
                return list(await asyncio.gather(*calls))
            return [await c for c in calls]

    alone = asyncio.run(send(good, together=False))
    before = state.metrics.coalesced.collect()[0].samples
    together = asyncio.run(send([*good[:3], *bad, *good[3:]], together=True))
    after = {s.name: s.value for s in state.metrics.coalesced.collect()[0].samples}
    runs = (
        after["cityml_predict_requests_per_run_count"]
        - {s.name: s.value for s in before}["cityml_predict_requests_per_run_count"]
    )
    state.log.close()
    assert runs == 1, "the six requests that reached the models went through them in one run"
    assert [r.status_code for r in together] == [200, 200, 200, 422, 422, 200, 200, 200]
    assert together[3].json()["detail"][0]["loc"] == ["body", "instances", 1, "pickup_zone"]
    assert together[4].json()["detail"][0]["loc"][:3] == ["body", "instances", 1]
    answered = [*together[:3], *together[5:]]
    for solo, shared in zip(alone, answered, strict=True):
        assert [p["value"] for p in shared.json()["predictions"]] == [p["value"] for p in solo.json()["predictions"]]
    logged = read_predictions(state.settings.predictions_dir, "alpha", "eta")
    by_request: dict[str, list[str]] = {}
    for x in logged:
        by_request.setdefault(x["request_id"], []).append(x["trip_id"])
    assert [by_request[r.json()["request_id"]] for r in answered] == [
        ["a0"],
        ["a1"],
        ["a2"],
        ["a3"],
        ["a4"],
        ["b0", "b1"],
    ]
    solo_ids = {r.json()["request_id"] for r in alone}
    assert {x["request_id"] for x in logged} - solo_ids == {r.json()["request_id"] for r in answered}  # none refused


def test_the_model_stage_refuses_one_request_of_a_run_and_answers_the_others(state: AppState) -> None:
    """A per-km model cannot answer a trip of unknown length (the schema asks for a distance or the
    coordinates; this builds the instance past it): that request's 422 names the instance and the
    field, the other request of the run is answered and logged, the refused one is not."""
    from datetime import UTC, datetime

    from fastapi import HTTPException

    from serving.predicting import Answer, answer, prepare
    from serving.schemas import TripRequest

    now = datetime(2026, 3, 2, 9, tzinfo=UTC)
    ok = TripRequest.model_validate(trip(trip_id="ok"))
    unknown_length = TripRequest.model_construct(**{**ok.model_dump(), "distance_km": None, "trip_id": "no"})
    later = datetime(2026, 3, 2, 9, 0, 1, tzinfo=UTC)
    untimed = TripRequest.model_validate({k: v for k, v in trip(trip_id="untimed").items() if k != "pickup_ts"})
    jobs = [
        prepare(state, "eta", [ok], "r-ok", now),
        prepare(state, "eta", [ok, unknown_length], "r-no", now),
        prepare(state, "eta", [ok, untimed], "r-later", later),
    ]
    got = answer(state, jobs)
    state.log.close()
    assert isinstance(got[0], Answer) and np.isfinite(got[0].values).all()
    assert isinstance(got[1], HTTPException) and got[1].status_code == 422
    assert got[1].detail[0]["loc"] == ["body", "instances", 1, "distance_km"]
    assert isinstance(got[2], Answer) and got[2].values[0] == got[0].values[0]
    # One batch for the run's rows of the model, less the refused request's: each row its own request and
    # time, and an instance without a pickup time is picked up when its own request asked.
    logged = read_predictions(state.settings.predictions_dir, "alpha", "eta")
    assert [(x["request_id"], x["trip_id"], x["ts"], x["pickup_ts"]) for x in logged] == [
        ("r-ok", "ok", now.isoformat(), "2026-03-02T08:15:00+00:00"),
        ("r-later", "ok", later.isoformat(), "2026-03-02T08:15:00+00:00"),
        ("r-later", "untimed", later.isoformat(), later.isoformat()),
    ]
    assert [x["prediction"] for x in logged] == [got[0].values[0], *got[2].values]


def test_request_ids_look_like_uuids_never_repeat_and_a_forked_worker_draws_its_own() -> None:
    import re

    from serving.api.routes.predict import request_id

    ids = [request_id() for _ in range(10_000)]
    assert len(set(ids)) == len(ids) and all(re.fullmatch(r"[0-9a-f]{32}", i) for i in ids)
    before = request_id.prefix
    request_id.reset()  # what os.register_at_fork runs in a child
    assert request_id.prefix != before and request_id() not in ids


def test_a_run_that_fails_and_is_rerun_counts_each_refusal_and_degraded_row_once(state: AppState) -> None:
    """A poison request breaks the shared run; the run is answered again request by request. The
    refused request names its first instance without a length and counts once, the degraded rows of
    the good request count once, and the poison request alone gets the fault."""
    import asyncio
    from datetime import UTC, datetime

    from serving.predicting import Answer, prepare
    from serving.schemas import TripRequest

    reader = state.online.reader("eta_v2")
    reader.missing_every = 1  # type: ignore[attr-defined]
    read = reader.read
    poison_s = int(datetime(2026, 3, 2, 7, tzinfo=UTC).timestamp())

    def fragile(keys: dict[str, Any], at_s: np.ndarray) -> OnlineRows:
        if (np.asarray(at_s) == poison_s).any():
            raise RuntimeError("this request breaks the store client")
        return read(keys, at_s)

    reader.read = fragile  # type: ignore[method-assign]
    # The poison request asks another model, which the run reaches after the ETA model has answered.
    eta = state.models.get("eta", "alpha")[0]
    price = LoadedModel(name="price-alpha", version="1", booster=eta.model.booster, tags={}, run_id=None)  # type: ignore[union-attr]
    state.models._models[("price", "alpha")] = Served(city="alpha", target="price", model=price)
    now = datetime(2026, 3, 2, 9, tzinfo=UTC)
    ok = TripRequest.model_validate(trip())
    lengthless = TripRequest.model_construct(**{**ok.model_dump(), "distance_km": None})
    poison = TripRequest.model_validate(trip(pickup_ts="2026-03-02T07:00:00Z"))
    jobs = [
        prepare(state, "eta", [ok, ok], "good", now),
        prepare(state, "eta", [ok, lengthless, lengthless], "refused", now),
        prepare(state, "price", [poison], "poison", now),
    ]

    async def together() -> list[Any]:
        return list(await asyncio.gather(*(state.predicts(j) for j in jobs), return_exceptions=True))

    def counts() -> tuple[float, float]:
        # Deltas, of children made before: once Feast's import has set PROMETHEUS_MULTIPROC_DIR in this
        # process, a counter's value is kept per process and name, and a new child starts from earlier tests'.
        state.metrics.errors.labels("no_distance")
        state.metrics.degraded.labels("eta", "missing_or_stale")
        get = state.metrics.registry.get_sample_value
        refused = get("cityml_predict_errors_total", {"reason": "no_distance"}) or 0.0
        missing = get("cityml_predictions_degraded_total", {"reason": "missing_or_stale", "target": "eta"}) or 0.0
        return refused, missing

    before = counts()
    got = asyncio.run(together())
    state.log.close()
    assert isinstance(got[0], Answer) and got[0].degraded.tolist() == [True, True]
    assert got[1].detail[0]["loc"] == ["body", "instances", 1, "distance_km"]
    assert isinstance(got[2], RuntimeError)
    after = counts()
    assert (after[0] - before[0], after[1] - before[1]) == (1.0, 2.0)
    assert [x["request_id"] for x in read_predictions(state.settings.predictions_dir, "alpha", "eta")] == ["good"] * 2
