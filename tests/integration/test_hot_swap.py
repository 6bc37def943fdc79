"""Hot swaps under load: ``@champion`` moved 10 times while requests are in flight, one move to a broken version.

Versions are registered for real (``training.registry.log_version``: MLflow run, LightGBM text model,
self-test artifact) in a SQLite registry; the app runs in-process (TestClient) with a fake online
reader, so that the only thing tested is the swap.
"""

from __future__ import annotations

import threading
from pathlib import Path

import lightgbm as lgb
import numpy as np
import pandas as pd
import pytest
from fastapi.testclient import TestClient
from mlflow import MlflowClient

from cityml.modeling import LabelScale
from cityml.prediction_log import PredictionLog
from cityml.registry import client, selftest_doc
from cityml.settings import Settings
from serving.app import create_app
from serving.model_store import ModelStore
from serving.state import AppState, Metrics
from tests.unit.test_serving_routes import ADMIN, FEATURES, KEY, ONLINE, FakeOnline, _booster, trip
from training.registry import experiment_id, log_version, set_champion

pytestmark = pytest.mark.integration


def _register(settings: Settings, booster: lgb.Booster, selftest_from: lgb.Booster | None = None) -> str:
    """Register ``booster`` as a version of eta-alpha; ``selftest_from``: record another model's predictions."""
    from cityml.modeling import predict

    c = client(settings)
    rng = np.random.default_rng(1)
    example = pd.DataFrame(
        {
            "distance_km": rng.uniform(1, 10, 8),
            "local_hour": rng.integers(0, 24, 8),
            "pickup_zone": ["z01", "z02"] * 4,
            "dropoff_zone": ["z03", "z04"] * 4,
            ONLINE: rng.uniform(0, 10, 8),
        }
    )
    scale = LabelScale("per_km")
    expected = predict(selftest_from or booster, scale, example)
    return log_version(
        c,
        experiment_id(c, settings),
        "eta-alpha",
        [(booster, scale)],
        example,
        FEATURES,
        {"mae": 1.0},
        {"city": "alpha", "target": "eta", "feature_service": "eta_v2"},
        {"features": {}},
        {},
        selftest=selftest_doc({f: example[f].to_numpy() for f in FEATURES}, expected),
    )


def _two_versions(tmp_path: Path) -> tuple[Settings, MlflowClient, str, str]:
    """A registry holding two good versions of eta-alpha, no champion yet."""
    settings = Settings(
        home=tmp_path / "var", catalog_path=Path(__file__).parents[1] / "fixtures" / "cities_small.yaml"
    )
    first, second = _register(settings, _booster(1)), _register(settings, _booster(2))
    return settings, client(settings), first, second


def test_ten_moves_one_broken_while_requests_are_in_flight(tmp_path: Path) -> None:
    settings = Settings(
        home=tmp_path / "var",
        catalog_path=Path(__file__).parents[1] / "fixtures" / "cities_small.yaml",
        reload_interval_s=0,
        api_keys=[KEY],  # type: ignore[list-item]
        admin_key=ADMIN,  # type: ignore[arg-type]
    )
    boosters = [_booster(seed) for seed in range(10)]
    good = [_register(settings, b) for b in boosters]
    broken = _register(settings, boosters[0], selftest_from=boosters[5])  # predicts other than it recorded
    c = client(settings)
    set_champion(c, "eta-alpha", good[0], "test")

    online = FakeOnline()
    state = AppState(
        settings=settings,
        online=online,  # type: ignore[arg-type]
        models=ModelStore(settings, service_columns=lambda name: [ONLINE]),
        log=PredictionLog(settings.predictions_dir, flush_s=0.05),
        metrics=Metrics(),
    )
    state.models.refresh()
    failures: list[str] = []
    served: list[str] = []
    stop = threading.Event()

    with TestClient(create_app(state=state)) as api:

        def traffic() -> None:
            while not stop.is_set():
                r = api.post("/v1/predict/eta", json={"instances": [trip()]}, headers={"X-API-Key": KEY})
                if r.status_code != 200:
                    failures.append(f"{r.status_code} {r.text[:200]}")
                else:
                    served.append(r.json()["predictions"][0]["version"])

        threads = [threading.Thread(target=traffic) for _ in range(3)]
        for t in threads:
            t.start()
        try:
            moves = [*good[1:5], broken, *good[5:]]
            assert len(moves) == 10
            expected = good[0]
            for version in moves:
                before = len(served)
                set_champion(c, "eta-alpha", version, "test")
                r = api.post("/admin/reload", headers={"X-API-Key": ADMIN})
                assert r.status_code == 200, r.text
                ready = api.get("/readyz").json()
                if version == broken:
                    assert "self-test" in r.json()["changed"]["eta-alpha"]
                    assert [s["version"] for s in ready["stale"]] == [broken]
                else:
                    expected = version
                    assert r.json()["changed"] == {"eta-alpha": f"v{version}"}
                    assert ready["stale"] == []
                listed = api.get("/v1/models", headers={"X-API-Key": KEY}).json()["models"]
                assert [m["version"] for m in listed] == [expected]
                for _ in range(200):  # requests keep flowing between moves (a budget in polls, not seconds)
                    if len(served) > before + 5:
                        break
                    stop.wait(0.01)
                assert served[-1] == expected
        finally:
            stop.set()
            for t in threads:
                t.join()
    state.log.close()
    assert failures == []
    assert len(served) > 50 and set(served) <= set(good) and broken not in served
    # 9 good moves loaded; the broken one was not counted as a load.
    assert "cityml_model_reloads_total 9.0" in state.metrics.scrape().decode()


def test_a_failing_registry_keeps_what_is_served_and_says_so(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Listing fails, or the registry fails between listing and reading a version: nothing held is unloaded,
    nothing is marked stale, and the next refresh that can read the registry loads the new version."""
    import mlflow

    settings, c, first, second = _two_versions(tmp_path)
    set_champion(c, "eta-alpha", second, "test")
    store = ModelStore(settings)
    store.refresh()
    assert store.get("eta", "alpha")[0].model.version == second  # type: ignore[union-attr]
    # Back to the older version: the listing gives its number only, and the loader reads it.
    set_champion(c, "eta-alpha", first, "test")

    def down(*args: object, **kwargs: object) -> None:
        # Quoting the URL it failed on, credentials and all: /readyz (no key) shows the error.
        url = "http://svc:s3cr3t@registry:5000/api/2.0/mlflow/registered-models/search"
        raise mlflow.exceptions.MlflowException(f"connection refused: {url}", error_code="INTERNAL_ERROR")

    monkeypatch.setattr(mlflow.MlflowClient, "search_registered_models", down)
    assert store.refresh() == {}
    assert store.get("eta", "alpha")[0].model.version == second  # type: ignore[union-attr]
    assert store.registry_error is not None and "listing champions" in store.registry_error
    assert "s3cr3t" not in store.registry_error and "http://***@registry:5000/" in store.registry_error
    monkeypatch.undo()

    monkeypatch.setattr(mlflow.MlflowClient, "get_model_version", down)  # listed, then the registry fails
    assert store.refresh() == {}
    assert store.get("eta", "alpha")[0].model.version == second  # type: ignore[union-attr]
    assert store.stale == {} and "connection refused" in str(store.registry_error)
    monkeypatch.undo()

    assert store.refresh() == {"eta-alpha": f"v{first}"}
    assert store.get("eta", "alpha")[0].model.version == first and store.registry_error is None  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("code", "outage"), [("TEMPORARILY_UNAVAILABLE", True), ("INTERNAL_ERROR", True), ("PERMISSION_DENIED", False)]
)
def test_a_registry_failing_in_the_middle_of_a_load_does_not_blame_the_version(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, code: str, outage: bool
) -> None:
    """The version was read, then reading where its model is fails. An outage: not stale, loaded at the
    next refresh. Any other refusal (permission denied) is the version's: stale, not retried as an outage."""
    import mlflow
    from mlflow.protos import databricks_pb2
    from mlflow.tracking._model_registry.client import ModelRegistryClient

    settings, c, first, second = _two_versions(tmp_path)
    set_champion(c, "eta-alpha", first, "test")
    store = ModelStore(settings)
    store.refresh()
    set_champion(c, "eta-alpha", second, "test")

    def failing(*args: object, **kwargs: object) -> None:
        url = "https://bucket.s3.amazonaws.com/m/model.lgb?X-Amz-Signature=f00d"  # a pre-signed URL
        raise mlflow.exceptions.MlflowException(f"it said no: {url}", error_code=getattr(databricks_pb2, code))

    monkeypatch.setattr(ModelRegistryClient, "get_model_version_download_uri", failing)
    changes = store.refresh()
    assert store.get("eta", "alpha")[0].model.version == first  # type: ignore[union-attr]
    if not outage:
        assert "it said no" in changes["eta-alpha"] and store.registry_error is None
        assert store.stale["eta-alpha"].version == second and "f00d" not in store.stale["eta-alpha"].reason
        return
    assert "f00d" not in str(store.registry_error)
    assert changes == {} and store.stale == {} and "it said no" in str(store.registry_error)
    monkeypatch.undo()

    assert store.refresh() == {"eta-alpha": f"v{second}"}
    assert store.get("eta", "alpha")[0].model.version == second and store.registry_error is None  # type: ignore[union-attr]


def test_a_champion_that_is_the_latest_version_loads_from_the_listing_without_another_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The registry search holds the latest version whole: loading it asks for no version again."""
    import mlflow

    from cityml.registry import champions

    settings, c, first, second = _two_versions(tmp_path)
    set_champion(c, "eta-alpha", first, "test")
    assert champions(c) == {"eta-alpha": first}  # not the latest: its number
    set_champion(c, "eta-alpha", second, "test")
    listed = champions(c)["eta-alpha"]
    assert not isinstance(listed, str) and str(listed.version) == second and listed.tags["feature_service"] == "eta_v2"

    def asked(*args: object, **kwargs: object) -> None:
        raise AssertionError("get_model_version called for a version the listing held")

    monkeypatch.setattr(mlflow.MlflowClient, "get_model_version", asked)
    store = ModelStore(settings)
    assert store.refresh() == {"eta-alpha": f"v{second}"}
