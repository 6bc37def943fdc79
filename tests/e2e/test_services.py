"""The services environment on one machine: MLflow server and Airflow (CeleryExecutor, 2 workers) over Postgres/Redis.

One stack for the module (``cityml.services.start``): unique Postgres databases and broker keys, free ports,
dropped and stopped at the end whatever happened. Two small cities are generated, applied and materialized with
the ``cityml`` commands, then ``retrain_city_models`` is triggered through Airflow's REST API v2, as an ops user
or the drift job would, and what it left is checked where it must be: the MLflow server's registry (Postgres),
the task instances (which worker ran what), and a ``cityml serve`` process that loads champions from the server.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from cityml.naming import model_name
from cityml.services import TRAINING_POOL, ServicesConfig, Stack, purge, start
from cityml.settings import Settings
from tests.conftest import SMALL_CATALOG, bin_path, free_port, require_service, wait_until_up

pytestmark = pytest.mark.e2e
CITIES = ["alpha", "beta-city"]
TARGETS = ["eta", "price"]
DAG = "retrain_city_models"
KEY = "services-test-key"
RUN_POLLS = 900  # 1 s apart: a retrain of two small cities takes a few minutes on a busy 2-core machine


def _cityml(env: dict[str, str], *args: str) -> None:
    proc = subprocess.run([bin_path("cityml"), *args], env=env, capture_output=True, text=True, check=False)
    assert proc.returncode == 0, f"cityml {' '.join(args)}:\n{proc.stderr[-3000:]}"


def _build_world(env: dict[str, str]) -> None:
    """Trips for the two cities, Feast definitions applied and features materialized, by the cityml commands."""
    _cityml(env, "data", "generate", "--cities", ",".join(CITIES), "--days", "21")
    _cityml(env, "features", "apply")
    _cityml(env, "features", "materialize")


def _ports(n: int) -> list[int]:
    ports: set[int] = set()
    while len(ports) < n:
        ports.add(free_port())
    return sorted(ports)


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """Two generated cities with Feast applied and materialized, and the stack started over them."""
    require_service("postgres", "127.0.0.1", 5432)
    require_service("redis", "127.0.0.1", 6379)
    home = tmp_path_factory.mktemp("services") / "var"
    tag = uuid.uuid4().hex[:8]
    airflow_port, mlflow_port = _ports(2)
    config = ServicesConfig(
        folder=home / "services",
        airflow_port=airflow_port,
        mlflow_port=mlflow_port,
        airflow_db=f"cityml_test_airflow_{tag}",
        mlflow_db=f"cityml_test_mlflow_{tag}",
        redis_db=11,
        workers=2,
        pool_slots=2,
        schedules=False,  # only the runs the tests trigger
    )
    settings = Settings(home=home, catalog_path=SMALL_CATALOG)
    extra = {
        "CITYML_GATE_PARITY_SAMPLE": "5",
        "CITYML_TRAIN_THREADS": "1",  # two fits at once on two cores
    }
    world_env = {**os.environ, **extra, "CITYML_HOME": str(home), "CITYML_CATALOG_PATH": str(SMALL_CATALOG)}
    started: Stack | None = None
    try:
        # The world needs no service: it is built while the stack starts, which mostly waits.
        with ThreadPoolExecutor(1) as pool:
            world = pool.submit(_build_world, world_env)
            started = start(settings, config, extra_env=extra)
            world.result()
        yield started
    finally:
        if started is not None:
            processes = list(started.processes.values())
            started.stop()
            assert not [p.name for p in processes if p.alive()], "processes left running"
        purge(config)


def _api(stack: Stack) -> httpx.Client:
    return httpx.Client(
        base_url=f"{stack.airflow_url}/api/v2", headers={"Authorization": f"Bearer {stack.token()}"}, timeout=30
    )


def _wait_for_dag(api: httpx.Client) -> None:
    """The dag-processor has parsed the DAG (polls); a DAG file that does not import fails with its error."""
    for _ in range(240):
        if api.get(f"/dags/{DAG}").status_code == 200:
            return
        errors = api.get("/importErrors").json().get("import_errors", [])
        broken = [e for e in errors if e["filename"].endswith(f"{DAG}.py")]
        assert not broken, broken[0]["stack_trace"][-3000:]
        time.sleep(0.5)
    pytest.fail(f"{DAG} never showed up in the API")


def _task_instances(api: httpx.Client, run_id: str) -> list[dict[str, Any]]:
    r = api.get(f"/dags/{DAG}/dagRuns/{run_id}/taskInstances", params={"limit": 1000})
    assert r.status_code == 200, r.text
    return list(r.json()["task_instances"])


def _failure_report(api: httpx.Client, run_id: str) -> str:
    """Each task instance's state, and the end of the log of those that failed."""
    lines = []
    for ti in _task_instances(api, run_id):
        lines.append(f"{ti['task_id']}[{ti['map_index']}] {ti['state']} on {ti['hostname']}")
        if ti["state"] in ("failed", "up_for_retry"):
            r = api.get(
                f"/dags/{DAG}/dagRuns/{run_id}/taskInstances/{ti['task_id']}/logs/{max(ti['try_number'], 1)}",
                params={"map_index": ti["map_index"], "full_content": True},
            )
            events = r.json().get("content", []) if r.status_code == 200 else [r.text]
            lines += [json.dumps(e)[:1500] for e in events[-12:]]
    return "\n".join(lines)


@pytest.fixture(scope="module")
def retrain_run(stack: Stack) -> dict[str, Any]:
    """``retrain_city_models`` triggered through the REST API with the DAG's contract, waited for (polls)."""
    with _api(stack) as api:
        _wait_for_dag(api)
        r = api.patch(f"/dags/{DAG}", json={"is_paused": False})
        assert r.status_code == 200, r.text
        conf = {"cities": CITIES, "targets": TARGETS}
        r = api.post(f"/dags/{DAG}/dagRuns", json={"logical_date": None, "conf": conf})
        assert r.status_code == 200, r.text
        run_id = r.json()["dag_run_id"]
        for _ in range(RUN_POLLS):
            run = api.get(f"/dags/{DAG}/dagRuns/{run_id}").json()
            if run["state"] in ("success", "failed"):
                break
            time.sleep(1)
        else:
            pytest.fail(f"{run_id} still {run['state']} after {RUN_POLLS} polls:\n{_failure_report(api, run_id)}")
        assert run["state"] == "success", _failure_report(api, run_id)
        # The summary runs whatever the fits did: a successful run can still hide a failed fit.
        instances = _task_instances(api, run_id)
        assert all(ti["state"] in ("success", "skipped") for ti in instances), _failure_report(api, run_id)
        return {"run_id": run_id, "task_instances": instances}


def _mlflow(stack: Stack) -> Any:
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=stack.mlflow_url, registry_uri=stack.mlflow_url)


def test_retrain_triggered_through_the_rest_api_registers_on_the_mlflow_server(
    stack: Stack, retrain_run: dict[str, Any]
) -> None:
    """4a: a new version of every (city, target) the run asked for, tagged with the run's id, on the server."""
    client = _mlflow(stack)
    for city in CITIES:
        for target in TARGETS:
            name = model_name(target, city)
            versions = client.search_model_versions(f"name = '{name}'")
            tagged = [v for v in versions if v.tags.get("dag_run_id") == retrain_run["run_id"]]
            assert tagged, (name, [(v.version, v.tags.get("dag_run_id")) for v in versions])
            (version,) = tagged
            assert version.tags["city"] == city and version.tags["target"] == target
            # Its artifacts went through the server's proxy into the stack's artifact folder.
            assert version.source.startswith(("mlflow-artifacts:", "models:/")), version.source
    assert any(stack.config.artifacts.rglob("*")), "no artifact reached the server's artifact folder"


def test_mapped_fits_ran_on_both_celery_workers(retrain_run: dict[str, Any]) -> None:
    """4c: each worker runs one task at a time (concurrency 1) and the pool lets two fits run at once, so the
    mapped fits spread over both workers; any two that overlapped in time ran on different workers."""
    fits = [
        ti
        for ti in retrain_run["task_instances"]
        if ti["pool"] == TRAINING_POOL and ti["map_index"] >= 0 and ti["state"] == "success"
    ]
    assert len(fits) >= 2, [
        (t["task_id"], t["map_index"], t["pool"], t["state"]) for t in retrain_run["task_instances"]
    ]
    for ti in fits:  # shown with -s, and in the report of a failure
        print(f"{ti['task_id']}[{ti['map_index']}] {ti['hostname']} {ti['start_date']} -> {ti['end_date']}")
    assert {ti["hostname"] for ti in fits} == {"worker-1", "worker-2"}, [(t["task_id"], t["hostname"]) for t in fits]

    def span(ti: dict[str, Any]) -> tuple[datetime, datetime]:
        return datetime.fromisoformat(ti["start_date"]), datetime.fromisoformat(ti["end_date"])

    overlapping = [
        (a, b) for i, a in enumerate(fits) for b in fits[i + 1 :] if span(a)[0] < span(b)[1] and span(b)[0] < span(a)[1]
    ]
    assert overlapping, "no two fits ran at the same time: the pool or the workers serialised them"
    assert all(a["hostname"] != b["hostname"] for a, b in overlapping), overlapping


def test_mlflow_runs_as_a_service(stack: Stack, retrain_run: dict[str, Any], tmp_path: Path) -> None:
    """5: the registry lives in the server's Postgres database, its UI and REST API answer, and `cityml serve`
    pointed at the server loads champions from it and predicts."""
    import sqlalchemy as sa

    names = {model_name(t, c) for c in CITIES for t in TARGETS}
    engine = sa.create_engine(stack.config.db_url(stack.config.mlflow_db))
    try:
        with engine.connect() as conn:
            stored = set(conn.execute(sa.text("SELECT name FROM registered_models")).scalars())
    finally:
        engine.dispose()
    assert names <= stored, stored

    ui = httpx.get(f"{stack.mlflow_url}/", timeout=30)
    assert ui.status_code == 200 and "text/html" in ui.headers["content-type"] and '<div id="root"' in ui.text
    listed = httpx.get(
        f"{stack.mlflow_url}/ajax-api/2.0/mlflow/registered-models/search", params={"max_results": 100}, timeout=30
    )
    assert listed.status_code == 200, listed.text
    assert names <= {m["name"] for m in listed.json()["registered_models"]}

    port = free_port()
    env = {**os.environ, **stack.client_env(), "CITYML_API_KEYS": KEY, "CITYML_RELOAD_INTERVAL_S": "0"}
    log_path = tmp_path / "serve.log"
    with log_path.open("w") as log:
        proc = subprocess.Popen(
            [bin_path("cityml"), "serve", "--port", str(port)], env=env, stdout=log, stderr=subprocess.STDOUT
        )
        try:
            url = f"http://127.0.0.1:{port}"
            wait_until_up(f"{url}/readyz", proc, log_path)
            instance = {
                "city": "alpha",
                "pickup_lat": 38.72,
                "pickup_lon": -9.15,
                "dropoff_lat": 38.76,
                "dropoff_lon": -9.12,
            }
            r = httpx.post(f"{url}/v1/predict/eta", json={"instances": [instance]}, headers={"X-API-Key": KEY})
            assert r.status_code == 200, r.text
            (pred,) = r.json()["predictions"]
            champion = _mlflow(stack).get_model_version_by_alias(pred["model"], "champion")
            assert pred["model"] in ("eta-alpha", "eta-global") and pred["version"] == str(champion.version)
            assert 60 <= pred["value"] <= 4 * 3600
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
