"""``cityml demo``: the whole loop on the embedded defaults, through the same commands users run.

Every stage is a real process: the ``cityml`` CLI, ``airflow dags test`` for the retrain DAG,
``cityml serve`` under uvicorn, and HTTP requests to it. Output of each stage goes to
``<home>/demo/<stage>.log``; the terminal gets progress and the final table.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pandas as pd

from cityml.catalog import load_catalog
from cityml.settings import Settings
from cityml.trips import read_trips

REQUESTS_PER_CITY = 300
BATCH = 100


def _say(msg: str) -> None:
    print(f"[demo] {msg}", file=sys.stderr, flush=True)


class StageFailed(RuntimeError):
    pass


class Runner:
    def __init__(self, settings: Settings, env: dict[str, str]) -> None:
        self.logs = settings.home / "demo"
        self.logs.mkdir(parents=True, exist_ok=True)
        self.env = env
        self.bin = Path(sys.executable).parent

    def run(self, stage: str, *args: str) -> str:
        started = time.perf_counter()
        log = self.logs / f"{stage}.log"
        with log.open("w") as err:
            proc = subprocess.run([str(self.bin / args[0]), *args[1:]], stdout=subprocess.PIPE, stderr=err,
                                  text=True, env=self.env, check=False)
        if proc.returncode != 0:
            tail = "".join(log.read_text().splitlines(keepends=True)[-25:])
            raise StageFailed(f"stage {stage!r} failed (exit {proc.returncode}); end of {log}:\n{tail}")
        _say(f"{stage:<12} done in {time.perf_counter() - started:5.1f}s")
        return proc.stdout


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _instances(trips: pd.DataFrame, city: str, shifted: bool) -> list[dict[str, Any]]:
    """Recent real trips of a city as predict instances (long trips only when ``shifted``)."""
    t = trips[trips["city"] == city]
    t = t[t["pickup_ts"] >= t["pickup_ts"].max() - pd.Timedelta(days=2)]
    if shifted:
        t = t[t["distance_km"] >= t["distance_km"].quantile(0.8)]
    t = t.sample(n=min(REQUESTS_PER_CITY, len(t)), random_state=1)
    cols = ["city", "pickup_lat", "pickup_lon", "dropoff_lat", "dropoff_lon"]
    out = t[cols].to_dict("records")
    for row, ts in zip(out, t["pickup_ts"], strict=True):
        row["pickup_ts"] = ts.isoformat()
    return out


def _serve_and_predict(runner: Runner, settings: Settings, slugs: list[str], port: int, key: str) -> dict[tuple[str, str], str]:
    url = f"http://127.0.0.1:{port}"
    log = (runner.logs / "serve.log").open("w")
    server = subprocess.Popen([str(runner.bin / "cityml"), "serve", "--port", str(port)], stdout=log, stderr=log, env=runner.env)
    samples: dict[tuple[str, str], str] = {}
    try:
        started = time.perf_counter()
        with httpx.Client(base_url=url, timeout=30) as http:
            while True:
                if server.poll() is not None:
                    raise StageFailed(f"server exited with {server.returncode}; see {runner.logs / 'serve.log'}")
                try:
                    if http.get("/readyz").status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                if time.perf_counter() - started > 120:
                    raise StageFailed("server not ready after 120s")
                time.sleep(0.5)
            _say(f"{'serve':<12} ready in {time.perf_counter() - started:5.1f}s on {url}")
            trips = read_trips(settings.trips_dir, slugs)
            sent = 0
            started = time.perf_counter()
            for i, city in enumerate(slugs):
                instances = _instances(trips, city, shifted=(i == len(slugs) - 1 and len(slugs) > 1))
                for target in ("eta", "price"):
                    for b in range(0, len(instances), BATCH):
                        r = http.post(f"/v1/predict/{target}", json={"instances": instances[b:b + BATCH]},
                                      headers={"X-API-Key": key})
                        if r.status_code != 200:
                            raise StageFailed(f"predict {target} {city}: HTTP {r.status_code} {r.text[:300]}")
                        p = r.json()["predictions"][0]
                        samples.setdefault((city, target), f"{p['value']:.1f} {p['unit']}")
                        sent += len(instances[b:b + BATCH])
            _say(f"{'predict':<12} {sent} predictions over HTTP in {time.perf_counter() - started:5.1f}s")
    finally:
        server.terminate()
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()
        log.close()
    return samples


def run_demo(settings: Settings, cities: int, days: int, port: int) -> int:
    """Run the loop and print the fleet table. Returns the exit code."""
    started = time.perf_counter()
    key = settings.api_keys[0].get_secret_value() if settings.api_keys else "demo-key"
    env = {**os.environ, **settings.airflow_env(), "CITYML_HOME": str(settings.home), "CITYML_API_KEYS": key,
           "CITYML_RELOAD_INTERVAL_S": "0"}
    runner = Runner(settings, env)
    catalog = load_catalog(settings.catalog_path)
    slugs = [c.slug for c in catalog.cities if c.synthetic is not None][:cities]
    try:
        runner.run("generate", "cityml", "data", "generate", "--cities", ",".join(slugs), "--days", str(days))
        runner.run("apply", "cityml", "features", "apply")
        runner.run("materialize", "cityml", "features", "materialize")
        runner.run("airflow-db", "airflow", "db", "migrate")
        runner.run("retrain-dag", "airflow", "dags", "test", "retrain_city_models", "-c",
                   json.dumps({"cities": ",".join(slugs)}))
        samples = _serve_and_predict(runner, settings, slugs, port or _free_port(), key)
        drift = json.loads(runner.run("drift", "cityml", "drift", "--cities", ",".join(slugs), "--json"))
        fleet = json.loads(runner.run("models", "cityml", "models", "list", "--json"))
    except StageFailed as exc:
        print(str(exc), file=sys.stderr)
        return 1

    verdicts = {(m["city"], m["target"]): m for m in drift["models"]}
    rows = {(r["city"], r["target"]): r for r in fleet}
    print(f"\n{'city':<11} {'target':<6} {'champion':>8} {'test MAE':>10} {'baseline':>10} {'sample prediction':>18}  drift")
    ok = True
    for i, city in enumerate(slugs):
        for target in ("eta", "price"):
            r = rows.get((city, target), {})
            m = r.get("metrics", {})
            mae, base = m.get("mae"), m.get("baseline_mae")
            ok &= r.get("champion_version") is not None and mae is not None and base is not None and mae < base
            d = verdicts.get((city, target), {})
            worst = max(d.get("features", {}).items(), key=lambda kv: kv[1]["psi"], default=None)
            note = f" ({worst[0]} psi {worst[1]['psi']:.2f})" if worst and d.get("verdict") == "drift" else ""
            shifted = " [demo sent long trips only]" if i == len(slugs) - 1 and len(slugs) > 1 else ""
            print(f"{city:<11} {target:<6} {'v' + str(r.get('champion_version', '-')):>8} "
                  f"{mae if mae is not None else float('nan'):>10.2f} {base if base is not None else float('nan'):>10.2f} "
                  f"{samples.get((city, target), '-'):>18}  {d.get('verdict', '-')}{note}{shifted}")
    print(f"\ncities to retrain (drift): {', '.join(drift['retrain']) or 'none'}")
    print(f"demo finished in {time.perf_counter() - started:.0f}s; logs in {runner.logs}; "
          f"MLflow UI: mlflow ui --backend-store-uri {settings.tracking_uri}")
    return 0 if ok else 1
