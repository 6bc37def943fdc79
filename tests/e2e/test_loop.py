"""The whole loop on two small cities: trips → Feast → Airflow → MLflow → HTTP → drift.

Real Feast apply/materialize, real Airflow DAG runs (dag.test()), a real MLflow registry,
a real uvicorn server over HTTP. Each assertion fails if its stage breaks.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pandas as pd
import pytest
from airflow.dag_processing.dagbag import DagBag
from airflow.sdk.exceptions import AirflowFailException
from typer.testing import CliRunner

from cityml.cli import app
from cityml.cli.demo import replay, replay_window, wait_logged
from cityml.data.trips import read_trips
from cityml.features.featurestore import apply
from cityml.naming import feature_service_name, model_name
from cityml.prediction_log import read_predictions
from cityml.registry import champion, client
from cityml.settings import PROJECT_ROOT, Settings
from tests.conftest import bin_path

pytestmark = pytest.mark.e2e
CITIES = ["alpha", "beta-city"]
KEY = "test-key"
ADMIN = "test-admin"


def _cli(*args: str) -> Any:
    result = CliRunner().invoke(app, [*args, "--json"])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def _run_dag(dag_id: str, conf: dict[str, Any] | None = None, logical_date: Any = None) -> Any:
    dag = DagBag(dag_folder=str(PROJECT_ROOT / "dags")).dags[dag_id]
    run = dag.test(run_conf=conf, logical_date=logical_date)
    assert run.state == "success", f"{dag_id} ended {run.state}"
    return run


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory, airflow_db: object) -> Iterator[Settings]:
    """Generate, apply, materialize (DAG) and retrain (DAG) once for the module."""
    from tests.conftest import SMALL_CATALOG

    home = tmp_path_factory.mktemp("e2e") / "var"
    env = {
        "CITYML_HOME": str(home),
        "CITYML_CATALOG_PATH": str(SMALL_CATALOG),
        "CITYML_RELOAD_INTERVAL_S": "0",
        # The replay moves the online store an hour at a time, many hours a second: a row cache
        # bounded in seconds of wall time would serve the hour before. Live traffic has no such problem.
        "CITYML_ONLINE_CACHE_S": "0",
        "CITYML_API_KEYS": KEY,
        "CITYML_ADMIN_KEY": ADMIN,
        "CITYML_GATE_PARITY_SAMPLE": "5",
    }
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    from cityml.settings import get_settings

    get_settings.cache_clear()
    settings = get_settings()
    try:
        gen = _cli("data", "generate", "--cities", "all", "--days", "21")
        assert set(gen["cities"]) == set(CITIES) and all(v["trips"] > 5000 for v in gen["cities"].values())
        assert apply(settings) == ["demand_v1", "eta_v1", "eta_v2", "price_v1", "price_v2"]
        # A materialize_features run whose interval ends where the replayed "live" week starts:
        # online features stop there, and the replay moves them on hour by hour.
        start, _ = replay_window(settings, CITIES, hours=7 * 24)
        run = _run_dag("materialize_features", logical_date=start)
        assert run.data_interval_end == start
        _run_dag("retrain_city_models", {"cities": []})
        yield settings
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        get_settings.cache_clear()


def _served_by(city: str, target: str) -> tuple[str, str | None]:
    """The model that must answer for a city: its champion, or the global fallback when it has none."""
    row = next(r for r in _cli("models", "list") if r["city"] == city and r["target"] == target)
    if row["champion_version"] is not None:
        return model_name(target, city), None
    return model_name(target, "global"), f"{model_name(target, city)} has no champion"


def test_retrain_dag_registers_champions_that_beat_the_baseline(world: Settings) -> None:
    fleet = {(r["city"], r["target"]): r for r in _cli("models", "list")}
    assert set(fleet) == {(c, t) for c in [*CITIES, "global"] for t in ("eta", "price")}
    report = json.loads(next((world.reports_dir / "gate").glob("gate-*.json")).read_text())
    decisions = {(m["city"], m["target"]): m for m in report["models"]}
    assert len(decisions) == 6
    for (city, target), row in fleet.items():
        tags = row["tags"]
        assert tags["city"] == city and tags["target"] == target
        assert tags["feature_service"] == feature_service_name(target)
        assert tags["dag_run_id"].startswith("manual__")
        for key in ("git_sha", "data_start", "data_end", "test_start", "train_rows", "feast_registry"):
            assert tags[key] and tags[key] != "unknown", key
        assert row["metrics"]["mae"] < row["metrics"]["baseline_mae"], row
        if row["champion_version"] == "1":
            assert tags["gate"] == "passed" and decisions[(city, target)]["decision"] == "promoted"
        else:  # the gate kept it out, and the report says why: the global model serves
            assert city != "global" and tags["gate"] == "failed", row
            assert decisions[(city, target)]["reason"].startswith("global model is better here")
            assert row["fallback"] == f"no champion: {target}-global serves"
    # Each version's profile keeps a sketch of its absolute test errors; their mean is the test MAE it was gated on.
    from cityml.registry import read_profile

    c = client(world)
    for name in ("eta-alpha", "price-beta-city", "eta-global"):
        mv = c.get_model_version(name, "1")
        errors = read_profile(c, mv)["test_error"]
        assert errors["mean"] == pytest.approx(float(mv.tags["mae"]), rel=1e-6) and errors["count"] > 50


@pytest.fixture(scope="module")
def server(world: Settings) -> Iterator[str]:
    port = 18000 + os.getpid() % 1000
    # The server's log goes to a file: an undrained pipe would fill up and block the server.
    log_path = world.home / "serve.log"
    with log_path.open("w") as log:
        proc = subprocess.Popen(
            [bin_path("cityml"), "serve", "--port", str(port)],
            env=os.environ.copy(),
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        url = f"http://127.0.0.1:{port}"
        try:
            for _ in range(240):
                assert proc.poll() is None, log_path.read_text()[-3000:]
                try:
                    if httpx.get(f"{url}/readyz").status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                time.sleep(0.5)
            else:
                pytest.fail("server never became ready")
            yield url
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()


def _instances(settings: Settings, city: str, n: int, long_only: bool = False) -> list[dict[str, Any]]:
    trips = read_trips(settings.trips_dir, [city])
    if long_only:
        trips = trips[trips["distance_km"] >= trips["distance_km"].quantile(0.8)]
    t = trips.tail(2000).sample(n, random_state=0)
    rows = t[["city", "pickup_lat", "pickup_lon", "dropoff_lat", "dropoff_lon"]].to_dict("records")
    for row, ts in zip(rows, t["pickup_ts"], strict=True):
        row["pickup_ts"] = ts.isoformat()
    return rows


def test_predict_over_http_for_every_city_and_target(world: Settings, server: str) -> None:
    c = client(world)
    for city in CITIES:
        for target in ("eta", "price"):
            instances = _instances(world, city, 60)
            r = httpx.post(f"{server}/v1/predict/{target}", json={"instances": instances}, headers={"X-API-Key": KEY})
            assert r.status_code == 200, r.text
            preds = r.json()["predictions"]
            assert len(preds) == 60
            name, fallback = _served_by(city, target)
            champ = champion(c, name)
            assert champ is not None
            assert {p["model"] for p in preds} == {name}
            assert {p["version"] for p in preds} == {str(champ.version)}
            assert all(p["fallback"] == fallback for p in preds)
            values = pd.Series([p["value"] for p in preds])
            if target == "eta":
                assert values.between(60, 4 * 3600).all() and values.nunique() > 30
            else:
                assert (values > 0).all() and preds[0]["unit"] in ("EUR", "IDR")
    with httpx.Client(base_url=server) as http:
        wait_logged(http)
    logged = read_predictions(world.predictions_dir, "alpha", "eta")
    assert len(logged) == 60 and set(logged[0]["features"]) >= {"distance_km", "pickup__zone_mean_speed_kmh"}


def test_predict_refuses_bad_requests_naming_the_field(world: Settings, server: str) -> None:
    ok = _instances(world, "alpha", 1)[0]
    assert httpx.post(f"{server}/v1/predict/eta", json={"instances": [ok]}).status_code == 401
    r = httpx.post(
        f"{server}/v1/predict/eta", json={"instances": [{**ok, "city": "gotham"}]}, headers={"X-API-Key": KEY}
    )
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", "instances", 0, "city"]
    far = {**ok, "pickup_lat": 10.0, "pickup_lon": 10.0}
    r = httpx.post(f"{server}/v1/predict/eta", json={"instances": [far]}, headers={"X-API-Key": KEY})
    assert r.status_code == 422 and r.json()["detail"][0]["loc"][-1] == "pickup_lat"  # outside the bbox
    assert r.json()["detail"][0]["type"] == "outside_bbox"
    r = httpx.post(f"{server}/v1/predict/tip", json={"instances": [ok]}, headers={"X-API-Key": KEY})
    assert r.status_code == 422
    # Zones without a distance: the models learn per km, so the trip's length is needed.
    zones_only = {"city": "alpha", "pickup_zone": "z01", "dropoff_zone": "z02"}
    r = httpx.post(f"{server}/v1/predict/eta", json={"instances": [ok, zones_only]}, headers={"X-API-Key": KEY})
    assert r.status_code == 422 and r.json()["detail"][0]["loc"][:3] == ["body", "instances", 1], r.text
    assert "distance_km" in r.json()["detail"][0]["msg"]


def test_drift_dag_flags_the_city_whose_traffic_moved(world: Settings, server: str) -> None:
    """A week of traffic replayed hour by hour; beta-city's app sends only its longest trips."""
    start, end = replay_window(world, CITIES, hours=7 * 24)
    replay(world, server, KEY, CITIES, start, end, share=0.3, long_only="beta-city")
    report = _cli("drift", "--cities", "all")
    verdicts = {(m["city"], m["target"]): m for m in report["models"]}
    assert verdicts[("beta-city", "eta")]["verdict"] == "drift"
    assert "distance_km" in verdicts[("beta-city", "eta")]["drifted"]
    alpha = verdicts[("alpha", "eta")]
    assert alpha["verdict"] in ("stable", "watch"), {
        n: (f["verdict"], f["method"], f["score"], f.get("wasserstein"), f.get("ks"), f.get("n_current"))
        for n, f in alpha["features"].items()
        if f["verdict"] == "drift"
    }
    assert report["retrain"] == ["beta-city"]
    run = _run_dag("monitor_drift")
    states = {ti.task_id: ti.state for ti in run.get_task_instances()}
    assert states["drift"] == "success"


def test_new_champion_is_hot_reloaded(world: Settings, server: str) -> None:
    from training.city import train_city
    from training.context import RunContext

    (result,) = train_city(RunContext.open(world, forced_by="test:ops"), "alpha", ["eta"])
    assert result.status == "promoted", result
    r = httpx.post(f"{server}/admin/reload", headers={"X-API-Key": ADMIN})
    assert r.status_code == 200 and r.json()["changed"] == {"eta-alpha": f"v{result.version}"}
    listed = httpx.get(f"{server}/v1/models", headers={"X-API-Key": KEY}).json()["models"]
    served = {m["name"]: m["version"] for m in listed}
    assert served["eta-alpha"] == result.version
    assert all(m["self_test"] == "passed" for m in listed)
    assert httpx.post(f"{server}/admin/reload", headers={"X-API-Key": KEY}).status_code == 403


def test_features_parity_training_vs_serving(world: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    """0 mismatches with the real code; the check does catch skew (serving ignoring the TTL)."""
    result = CliRunner().invoke(app, ["features", "parity", "--city", "alpha", "--sample", "40", "--json"])
    assert result.exit_code == 0, result.output
    reports = json.loads(result.stdout)
    assert [r["mismatches"] for r in reports] == [0, 0] and all(r["samples"] == 40 for r in reports)

    import cityml.features.online

    monkeypatch.setattr(cityml.features.online, "view_ttl_s", lambda view: None)
    from training.parity import parity_check

    skewed = parity_check(world, "alpha", sample=40)
    assert skewed["mismatches"] > 0 and skewed["examples"][0]["training"] is None


def test_train_with_a_tune_budget_records_the_search(world: Settings) -> None:
    """`cityml train --tune-budget`: Optuna trials on the validation window, recorded on the version."""
    from cityml.registry import client

    # Counted in trials, not seconds: an hour's budget that three trials end, however busy the machine is.
    report = _cli(
        "train",
        "--cities",
        "beta-city",
        "--targets",
        "eta",
        "--no-global",
        "--tune-budget",
        "3600",
        "--tune-trials",
        "3",
    )
    (model,) = report["models"]
    assert model["status"] in ("promoted", "rejected"), model
    tuning = model["tuning"]
    assert tuning["trials"] == 3 and tuning["valid_mae"] <= tuning["default_valid_mae"]
    assert "tune" in model["timings"] and "fit" not in model["timings"]
    version = client(world).get_model_version("eta-beta-city", model["version"])
    assert version.tags["tuned"].startswith(f"{tuning['trials']} trials")
    run = client(world).get_run(version.run_id)
    assert float(run.data.params["num_leaves"]) == tuning["params"]["num_leaves"]


def test_cli_and_dag_train_the_same_versions(world: Settings, tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """`cityml train` runs the DAG's units: for the DAG's window it trains the same models (every city, the
    global models on every city) on the same rows, with the same test scores and decisions."""
    import re

    from cityml.settings import get_settings

    first = sorted((world.reports_dir / "gate").glob("gate-*.json"))[0]
    dag_report = json.loads(first.read_text())
    until = re.search(r"trips before (\S+)", dag_report["window"]).group(1)  # type: ignore[union-attr]
    c = client(world)
    monkeypatch.setenv("CITYML_MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'cli.db'}")
    monkeypatch.setenv("CITYML_MLFLOW_ARTIFACT_ROOT", (tmp_path / "cli-artifacts").as_uri())
    get_settings.cache_clear()
    try:
        doc = _cli("train", "--until", until, "--workers", "1", "--targets", "eta")  # one target: half the fits
    finally:
        get_settings.cache_clear()
    by_cli = {r["model"]: r for r in doc["models"]}
    by_dag = {r["model"]: r for r in dag_report["results"] if r["target"] == "eta"}
    assert set(by_cli) == set(by_dag) == {model_name("eta", x) for x in [*CITIES, "global"]}
    for name, r in by_cli.items():
        dag_version = c.get_model_version(name, by_dag[name]["version"])
        assert r["status"] == by_dag[name]["status"], name
        assert r["test_window"] == by_dag[name]["test_window"], name
        assert r["metrics"]["train_rows"] == by_dag[name]["metrics"]["train_rows"], name
        assert r["metrics"]["mae"] == pytest.approx(by_dag[name]["metrics"]["mae"], rel=1e-3), name
        assert dag_version.tags["dag_run_id"].startswith("manual__")
    assert by_cli["eta-global"]["per_city_mae"].keys() == set(CITIES)


def test_a_city_without_data_shows_skipped_and_the_summary_counts_it(world: Settings) -> None:
    """A run of one city before its first trip: nothing to fit, so its task is skipped (not green), the global
    models are left alone (a run of some cities), and the summary says so."""
    run = _run_dag("retrain_city_models", {"cities": ["alpha"], "until": "2020-01-01"})
    states = {(ti.task_id, ti.map_index): ti.state for ti in run.get_task_instances()}
    assert states[("train_city", 0)] == "skipped"
    assert {states[("train_global", i)] for i in (0, 1)} == {"skipped"}
    assert states[("summarise", -1)] == "success"
    report = json.loads(sorted((world.reports_dir / "gate").glob("gate-*.json"))[-1].read_text())
    assert report["counts"] == {"promoted": 0, "rejected": 0, "skipped": 2, "failed": 0}
    assert report["window"].startswith("trips before 2020-01-01T00:00:00+00:00 (the form)")
    assert all("too little data" in m["reason"] for m in report["models"])


def test_force_promotion_from_the_form_is_recorded_with_who_asked(world: Settings) -> None:
    """Ops force a one-city retrain from the trigger form: the new version is champion whatever the gate said,
    and it says who asked (Airflow's triggering user and the run)."""
    run = _run_dag("retrain_city_models", {"cities": ["beta-city"], "targets": ["price"], "force_promote": True})
    c = client(world)
    mv = champion(c, "price-beta-city")
    assert mv is not None and mv.tags["dag_run_id"] == run.run_id
    assert mv.tags["force_promote_by"] == f"airflow:dag_test ({run.run_id})"
    assert mv.tags.get("force_promoted") == "true" or mv.tags["gate"] == "passed"


def test_a_model_added_in_one_dag_file_trains_gates_and_registers_per_city(world: Settings) -> None:
    """``dags/retrain_demand.py`` (one call of ``cityml.dagkit.hourly_retrain_dag``) plus the ``demand_v1``
    FeatureService is all a new per-city model takes: every city gets ``demand-<city>`` with cityml's lineage
    tags, a gate decision and a model that has learned the daily cycle (beats predicting the median). 21 days
    make too few hours for the gate (352 < 500 training rows): it registers without promoting, and a forced run
    records who forced it. The champion, loaded back from the registry, repeats its test MAE."""
    from cityml.registry import load_champion
    from cityml.targets import HourlyTarget
    from training.context import RunContext
    from training.fit import time_split
    from training.hourly import build_hourly_set

    c = client(world)
    run = _run_dag("retrain_demand", {"cities": []})
    for city in CITIES:
        mv = max(c.search_model_versions(f"name='demand-{city}'"), key=lambda v: int(v.version))
        assert mv.tags["dag_run_id"] == run.run_id
        assert (mv.tags["feature_service"], mv.tags["rows"], mv.tags["target"]) == ("demand_v1", "city_hour", "demand")
        assert {"git_sha", "data_start", "data_end", "train_rows", "baseline_mae"} <= set(mv.tags)
        assert "too little data" in mv.tags["gate_reasons"] and champion(c, f"demand-{city}") is None
        run_info = c.get_run(mv.run_id).data.metrics
        assert run_info["mae"] < 0.8 * run_info["median_mae"], (city, run_info)

    forced = _run_dag("retrain_demand", {"cities": ["alpha"], "force_promote": True})
    mv = champion(c, "demand-alpha")
    assert mv is not None and mv.tags["force_promote_by"] == f"airflow:dag_test ({forced.run_id})"
    listed = {r["name"]: r for r in _cli("models", "list")}
    assert listed["demand-alpha"]["champion_version"] == str(mv.version)
    assert listed["demand-beta-city"]["champion_version"] is None and listed["demand-beta-city"]["target"] == "demand"
    model = load_champion(c, "demand-alpha")
    assert model is not None
    spec = HourlyTarget(name="demand", feature_service="demand_v1")
    until = pd.Timestamp(mv.tags["test_end"]) + pd.Timedelta(hours=1)
    hours = build_hourly_set(RunContext.open(world, until=until.to_pydatetime()), "alpha", spec)
    test = time_split(hours.frame).test
    assert str(test["event_timestamp"].iloc[0]) == str(pd.Timestamp(mv.tags["test_start"]))
    assert float(abs(model.predict(test) - test["trips"]).mean()) == pytest.approx(float(mv.tags["mae"]), rel=1e-6)


def test_a_model_whose_feature_service_is_missing_fails_its_plan_naming_it(world: Settings, tmp_path: Any) -> None:
    """A typo in the DAG file's FeatureService fails the run's ``plan`` task (no retry), naming the field, before
    any city's task would run."""
    (tmp_path / "retrain_typo.py").write_text(
        '"""A DAG file with a typo in its FeatureService (airflow dag)."""\n'
        "from cityml.dagkit import hourly_retrain_dag\n"
        "from cityml.targets import HourlyTarget\n\n"
        'hourly_retrain_dag(HourlyTarget(name="typo", feature_service="demand_v9"), dag_id="retrain_typo", '
        "doc_md=__doc__)\n"
    )
    dag = DagBag(dag_folder=str(tmp_path)).dags["retrain_typo"]
    plan = dag.get_task("plan").python_callable  # type: ignore[attr-defined]
    with pytest.raises(AirflowFailException, match=r"feature_service: 'demand_v9' is not registered in Feast"):
        plan(params={"cities": ["alpha"]})
    assert {t.task_id for t in dag.get_task("plan").downstream_list} == {"train", "summarise"}  # the cities map over it
