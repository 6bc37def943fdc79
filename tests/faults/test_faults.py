"""Fault injection: poisoned labels, killed imports and killed multi-worker trainings, through the real CLI.

Each test breaks something the way it breaks in production (a source that starts lying, ``kill -9`` at a bad
moment) and checks what must hold afterwards: nothing bad promoted, nothing half-visible, nothing left running,
and the next run succeeds. Waits are bounded in polls, not in assumptions about the machine's speed.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pandas as pd
import psutil
import pytest

from cityml.data.trips import VERSIONS, read_trips, write_trips
from cityml.settings import Settings
from tests.conftest import FIXTURES, SMALL_CATALOG, bin_path, real_tlc_sample

pytestmark = pytest.mark.e2e

CITIES = ["alpha", "beta-city"]
POLL_S = 0.02


def _env(home: Path, catalog: Path) -> dict[str, str]:
    return {
        **os.environ,
        "CITYML_HOME": str(home),
        "CITYML_CATALOG_PATH": str(catalog),
        "CITYML_GATE_PARITY_SAMPLE": "0",
        "CITYML_TRAIN_THREADS": "2",
    }


def _cli(env: dict[str, str], *args: str) -> Any:
    out = subprocess.run([bin_path("cityml"), *args, "--json"], env=env, capture_output=True, text=True, check=False)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Settings, dict[str, str]]]:
    """Two small cities, 21 days, features applied and materialized; each city's models trained on days 1-14."""
    home = tmp_path_factory.mktemp("faults") / "var"
    env = _env(home, SMALL_CATALOG)
    settings = Settings(home=home, catalog_path=SMALL_CATALOG)
    _cli(env, "data", "generate", "--cities", "all", "--days", "21")
    _cli(env, "features", "apply")
    _cli(env, "features", "materialize")
    first = read_trips(settings.trips_dir)["pickup_ts"].min().normalize()
    until = (first + pd.Timedelta(days=14)).date().isoformat()
    report = _cli(env, "train", "--cities", "all", "--targets", "price", "--no-global", "--until", until)
    assert all(m["status"] == "promoted" for m in report["models"]), [m["reason"] for m in report["models"]]
    yield settings, env


def _champions(settings: Settings) -> dict[str, str | None]:
    from cityml.naming import model_name
    from cityml.registry import champion, client

    c = client(settings)
    out = {}
    for city in CITIES:
        for target in ("eta", "price"):
            mv = champion(c, model_name(target, city))
            out[model_name(target, city)] = None if mv is None else str(mv.version)
    return out


def test_fares_multiplied_by_ten_are_refused_by_the_gate(world: tuple[Settings, dict[str, str]]) -> None:
    """A source that starts sending fares x10 for one city: the challenger is refused, the champion keeps serving."""
    settings, env = world
    before = _champions(settings)
    trips = read_trips(settings.trips_dir, ["alpha"])
    first = trips["pickup_ts"].min().normalize()
    late = trips["pickup_ts"] >= first + pd.Timedelta(days=14)
    write_trips(settings.trips_dir, trips[late].assign(fare=trips.loc[late, "fare"] * 10))
    _cli(env, "features", "materialize")

    report = _cli(env, "train", "--cities", "all", "--targets", "price", "--no-global")
    by_model = {m["model"]: m for m in report["models"]}
    poisoned = by_model["price-alpha"]
    assert poisoned["status"] == "rejected", poisoned
    assert "data shift: test labels median per km" in poisoned["reason"], poisoned["reason"]
    assert re.search(r"is x(9|10|11)\.\d\d the champion's training data", poisoned["reason"]), poisoned["reason"]
    assert by_model["price-beta-city"]["status"] != "failed"  # the other city is judged on its own data
    after = _champions(settings)
    assert after["price-alpha"] == before["price-alpha"]
    # The refusal is on the version, readable in the MLflow UI and by `cityml models list`.
    from cityml.registry import client

    tags = client(settings).get_model_version("price-alpha", poisoned["version"]).tags
    assert tags["promotion"].startswith("rejected: data shift")
    # Put the city back for the tests that follow.
    write_trips(settings.trips_dir, trips[late])
    _cli(env, "features", "materialize")


def _children(pid: int) -> list[psutil.Process]:
    try:
        return psutil.Process(pid).children(recursive=True)
    except psutil.Error:
        return []


def _cmdline(p: psutil.Process) -> str:
    """The process's command line, or '' for one that exited (or became a zombie) between listing and reading."""
    try:
        return " ".join(p.cmdline())
    except psutil.Error:
        return ""


def _is_alive(p: psutil.Process) -> bool:
    try:
        return p.is_running() and p.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def _alive(procs: list[psutil.Process]) -> list[psutil.Process]:
    return [p for p in procs if _is_alive(p)]


def test_kill_9_of_a_two_worker_train_leaves_no_process_and_promotes_nothing(
    world: tuple[Settings, dict[str, str]],
) -> None:
    settings, env = world
    before = _champions(settings)
    proc = subprocess.Popen(
        [bin_path("cityml"), "train", "--cities", "all", "--targets", "eta,price", "--no-global", "--workers", "2"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        # Wait (bounded in polls) until both pool workers run, then kill the parent the hard way.
        workers: list[psutil.Process] = []
        for _ in range(6000):
            lines = [(p, _cmdline(p)) for p in _children(proc.pid)]
            workers = [p for p, line in lines if "multiprocessing" in line and "resource_tracker" not in line]
            if len(workers) >= 2 or proc.poll() is not None:
                break
            time.sleep(POLL_S)
        assert len(workers) >= 2, "the pool never started"
        everything = _children(proc.pid)
    finally:
        # Whatever happened above, no training of this test outlives it into the next one's registry.
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    for _ in range(500):
        if not _alive(everything):
            break
        time.sleep(POLL_S)
    assert _alive(everything) == [], [_cmdline(p) for p in _alive(everything)]
    assert _champions(settings) == before  # the parent registers and promotes; it died before that

    # The next run succeeds; a version an interrupted publication left pending is reported and closed.
    report = _cli(env, "train", "--cities", "all", "--targets", "eta,price", "--no-global", "--workers", "2")
    assert {m["status"] for m in report["models"]} <= {"promoted", "rejected"}, report["models"]


def test_a_version_left_pending_by_a_dead_run_is_reported_by_the_next(world: tuple[Settings, dict[str, str]]) -> None:
    """A crash between 'version created' and '@champion moved' leaves a tagged version, closed by the next run."""
    from cityml.registry import client

    settings, env = world
    c = client(settings)
    champion_before = _champions(settings)["price-alpha"]
    pending = next(
        str(v.version) for v in c.search_model_versions("name='price-alpha'") if str(v.version) != champion_before
    )
    c.set_model_version_tag("price-alpha", pending, "promotion", "pending")  # what a kill at that moment leaves
    report = _cli(env, "train", "--cities", "alpha", "--targets", "price", "--no-global")
    (model,) = report["models"]
    assert model["abandoned_versions"] == [pending]
    assert c.get_model_version("price-alpha", pending).tags["promotion"].startswith("abandoned")


def _trip_ids(trips_dir: Path) -> frozenset[str]:
    return frozenset(read_trips(trips_dir, ["nyc"])["trip_id"])


def test_kill_9_of_an_import_leaves_the_batch_all_in_or_all_out(tmp_path: Path) -> None:
    catalog = FIXTURES / "cities_real.yaml"
    sample = real_tlc_sample()
    base = FIXTURES / "trips" / "yellow_tripdata_2024-01.csv"

    # What the store holds before and after a complete import, measured in a home of its own.
    done = tmp_path / "done"
    _cli(_env(done, catalog), "data", "import", "nyc-tlc", str(base), "--city", "nyc")
    _cli(_env(done, catalog), "data", "import", "nyc-tlc", str(sample), "--city", "nyc")
    after = _trip_ids(done / "data" / "trips")

    home = tmp_path / "killed"
    env = _env(home, catalog)
    trips_dir = home / "data" / "trips"
    _cli(env, "data", "import", "nyc-tlc", str(base), "--city", "nyc")
    before = _trip_ids(trips_dir)
    assert before < after

    versions = trips_dir / VERSIONS / "city=nyc"
    known = set(versions.iterdir())
    killed_while_writing = 0
    for _ in range(5):
        proc = subprocess.Popen(
            [bin_path("cityml"), "data", "import", "nyc-tlc", str(sample), "--city", "nyc"],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        # Kill as soon as the new version has its first day file: in the middle of writing the batch.
        for _ in range(1_000_000):
            fresh = [v for v in versions.iterdir() if v not in known]
            if (fresh and any(fresh[0].glob("date=*/trips.parquet"))) or proc.poll() is not None:
                break
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
        proc.wait()
        now = _trip_ids(trips_dir)
        assert now in (before, after)  # never a part of the batch
        if now == after:  # this one got to publish before the kill: nothing more to interrupt
            break
        killed_while_writing += 1
        known = set(versions.iterdir())
    assert killed_while_writing >= 1, "no kill landed while the batch was being written"

    _cli(env, "data", "import", "nyc-tlc", str(sample), "--city", "nyc")  # the next run succeeds
    assert _trip_ids(trips_dir) == after
    # And importing it again is a no-op.
    _cli(env, "data", "import", "nyc-tlc", str(sample), "--city", "nyc")
    assert _trip_ids(trips_dir) == after
    assert len(list(versions.iterdir())) <= 2  # dead writes' versions were swept


def _instance(settings: Settings, city: str) -> dict[str, Any]:
    t = read_trips(settings.trips_dir, [city]).iloc[-1]
    return {
        "city": city,
        **{k: float(t[k]) for k in ("pickup_lat", "pickup_lon", "dropoff_lat", "dropoff_lon")},
        "pickup_ts": t["pickup_ts"].isoformat(),
    }


def _serve(env: dict[str, str], port: int, log: Path) -> subprocess.Popen[bytes]:
    with log.open("ab") as out:
        return subprocess.Popen([bin_path("cityml"), "serve", "--port", str(port)], env=env, stdout=out, stderr=out)


def test_kill_9_of_the_server_loses_no_written_prediction_and_it_comes_back(
    world: tuple[Settings, dict[str, str]], tmp_path: Path
) -> None:
    """Killed mid-traffic: every prediction-log file that exists reads whole, and a restart serves again."""
    import httpx

    from cityml.prediction_log import read_predictions
    from tests.conftest import free_port, wait_until_up

    settings, env = world
    env = {**env, "CITYML_API_KEYS": "k", "CITYML_RELOAD_INTERVAL_S": "0"}
    body = {"instances": [_instance(settings, "alpha")] * 10}
    port, log = free_port(), tmp_path / "serve.log"
    url = f"http://127.0.0.1:{port}"
    proc = _serve(env, port, log)
    try:
        wait_until_up(f"{url}/readyz", proc, log)
        sent = 0
        with httpx.Client(base_url=url, headers={"X-API-Key": "k"}) as http:
            # Traffic until the log has written some batches, then more requests and the kill between two of them.
            for _ in range(20_000):
                assert http.post("/v1/predict/price", json=body).status_code == 200
                sent += 10
                if list(settings.predictions_dir.glob("city=alpha/date=*/part-*.parquet")) and sent % 200 == 0:
                    break
            for _ in range(50):
                assert http.post("/v1/predict/price", json=body).status_code == 200
                sent += 10
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    finally:
        if proc.poll() is None:
            proc.kill()
    logged = read_predictions(settings.predictions_dir, "alpha", "price")  # every file reads whole
    assert 0 < len(logged) <= sent
    assert all(r["model"] == "price-alpha" and r["prediction"] > 0 for r in logged)

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    proc = _serve(env, port, log)
    try:
        wait_until_up(f"{url}/readyz", proc, log)
        r = httpx.post(f"{url}/v1/predict/price", json=body, headers={"X-API-Key": "k"})
        assert r.status_code == 200 and len(r.json()["predictions"]) == 10
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    assert len(read_predictions(settings.predictions_dir, "alpha", "price")) == len(logged) + 10  # flushed at exit
