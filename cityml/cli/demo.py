"""``cityml demo``: the whole loop on the embedded defaults, through the same commands users run.

Every stage is a real process: the ``cityml`` CLI, ``airflow dags test`` for the retrain DAG,
``cityml serve`` under uvicorn, and HTTP requests to it. Output of each stage goes to
``<home>/demo/<stage>.log``; the terminal gets progress and the final table.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import socket
import subprocess
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import httpx
import pandas as pd

from cityml.catalog import load_catalog
from cityml.data.trips import read_trips
from cityml.settings import Settings

REPLAY_HOURS = 7 * 24  # a week of live traffic: the drift job's default window


def say(msg: str) -> None:
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
            proc = subprocess.run(
                [str(self.bin / args[0]), *args[1:]],
                stdout=subprocess.PIPE,
                stderr=err,
                text=True,
                env=self.env,
                check=False,
            )
        if proc.returncode != 0:
            tail = "".join(log.read_text().splitlines(keepends=True)[-25:])
            raise StageFailed(f"stage {stage!r} failed (exit {proc.returncode}); end of {log}:\n{tail}")
        say(f"{stage:<12} done in {time.perf_counter() - started:5.1f}s")
        return proc.stdout


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _instances(trips: pd.DataFrame) -> list[dict[str, Any]]:
    """Trips as predict instances: the app knows the points and the pickup time, not the outcome."""
    cols = ["city", "pickup_lat", "pickup_lon", "dropoff_lat", "dropoff_lon"]
    out = trips[cols].to_dict("records")
    for row, ts in zip(out, trips["pickup_ts"], strict=True):
        row["pickup_ts"] = ts.isoformat()
    return out


def replay_window(
    settings: Settings, cities: list[str], hours: int = REPLAY_HOURS
) -> tuple[pd.Timestamp, pd.Timestamp]:
    """The last ``hours`` whole hours of stored trips: the demo's "live" traffic."""
    last = read_trips(settings.trips_dir, cities)["pickup_ts"].max()
    end = last.floor("h") + pd.Timedelta(hours=1)
    return end - pd.Timedelta(hours=hours), end


def replay(
    settings: Settings,
    url: str,
    key: str,
    cities: list[str],
    start: pd.Timestamp,
    end: pd.Timestamp,
    share: float = 0.1,
    long_only: str | None = None,
) -> dict[tuple[str, str], str]:
    """Replay stored trips hour by hour as live traffic, as an app would send it.

    Before each hour the online store is materialized up to that hour, so every request sees
    the features it would have seen live. ``share`` of each hour's trips is sent, so busy hours
    weigh as much as they do in training. ``long_only`` names a city whose traffic is shifted
    to its longest trips, to show what drift looks like. Returns one sample prediction per
    (city, target).
    """
    from cityml.features.featurestore import materialize

    trips = read_trips(settings.trips_dir, cities, start=start.to_pydatetime(), end=end.to_pydatetime())
    samples: dict[tuple[str, str], str] = {}
    with httpx.Client(base_url=url, timeout=60) as http:
        for hour in pd.date_range(start, end, freq="h", inclusive="left"):
            # Feast prints its progress (on stdout, which materialize sends to stderr) and warnings: not the demo's.
            quiet = io.StringIO()
            with contextlib.redirect_stdout(quiet), contextlib.redirect_stderr(quiet), warnings.catch_warnings():
                warnings.simplefilter("ignore")
                materialize(settings, end=hour.to_pydatetime())
            in_hour = trips[(trips["pickup_ts"] >= hour) & (trips["pickup_ts"] < hour + pd.Timedelta(hours=1))]
            for city in cities:
                t = in_hour[in_hour["city"] == city]
                if city == long_only:
                    t = t[t["distance_km"] >= t["distance_km"].quantile(0.7)]
                if t.empty:
                    continue
                batch = _instances(t.sample(frac=share, random_state=hour.hour).head(1000))
                if not batch:
                    continue
                for target in ("eta", "price"):
                    r = http.post(f"/v1/predict/{target}", json={"instances": batch}, headers={"X-API-Key": key})
                    if r.status_code != 200:
                        raise StageFailed(f"predict {target} {city}: HTTP {r.status_code} {r.text[:300]}")
                    p = r.json()["predictions"][0]
                    samples.setdefault((city, target), f"{p['value']:.1f} {p['unit']}")
        wait_logged(http)
    return samples


def wait_logged(http: httpx.Client, polls: int = 600) -> None:
    """Wait until the server has written every prediction it answered (its log writer is asynchronous)."""
    for _ in range(polls):
        metrics = http.get("/metrics").text
        if "\ncityml_prediction_log_pending 0.0" in metrics:
            return
        time.sleep(0.1)
    raise StageFailed("the server's prediction log did not drain")


def serve_and_replay(
    runner: Runner,
    settings: Settings,
    slugs: list[str],
    port: int,
    key: str,
    window: tuple[pd.Timestamp, pd.Timestamp],
    long_only: str | None = None,
    share: float = 0.1,
    stage: str = "serve",
) -> dict[tuple[str, str], str]:
    """Start ``cityml serve``, replay the window's trips to it over HTTP, stop it; one sample per (city, target)."""
    url = f"http://127.0.0.1:{port}"
    log = (runner.logs / f"{stage}.log").open("w")
    server = subprocess.Popen(
        [str(runner.bin / "cityml"), "serve", "--port", str(port)], stdout=log, stderr=log, env=runner.env
    )
    try:
        started = time.perf_counter()
        with httpx.Client(base_url=url, timeout=30) as http:
            while True:
                if server.poll() is not None:
                    raise StageFailed(f"server exited with {server.returncode}; see {runner.logs / f'{stage}.log'}")
                try:
                    if http.get("/readyz").status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                if time.perf_counter() - started > 120:
                    raise StageFailed("server not ready after 120s")
                time.sleep(0.5)
        say(f"{stage:<12} ready in {time.perf_counter() - started:5.1f}s on {url}")
        started = time.perf_counter()
        samples = replay(settings, url, key, slugs, *window, share=share, long_only=long_only)
        hours = (window[1] - window[0]) / pd.Timedelta(hours=1)
        say(f"{'predict':<12} replayed {hours:.0f}h of traffic over HTTP in {time.perf_counter() - started:5.1f}s")
    finally:
        server.terminate()
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()
        log.close()
    return samples


def run_demo(settings: Settings, cities: int, days: int, port: int, drift_scenario: bool = False) -> int:
    """Run the loop and print the fleet table (or the drift scenario's). Returns the exit code."""
    started = time.perf_counter()
    key = settings.api_keys[0].get_secret_value() if settings.api_keys else "demo-key"
    env = {
        **os.environ,
        **settings.airflow_env(),
        "CITYML_HOME": str(settings.home),
        "CITYML_API_KEYS": key,
        "CITYML_RELOAD_INTERVAL_S": "0",
        # The replay moves the online store an hour at a time, many hours a second: a row cache
        # bounded in seconds of wall time would serve the hour before. Live traffic has no such problem.
        "CITYML_ONLINE_CACHE_S": "0",
    }
    runner = Runner(settings, env)
    catalog = load_catalog(settings.catalog_path)
    slugs = [c.slug for c in catalog.cities if c.synthetic is not None][:cities]
    if drift_scenario:
        from cityml.cli.scenario import run_scenario

        return run_scenario(settings, runner, slugs, days, port or _free_port(), key)
    try:
        runner.run("generate", "cityml", "data", "generate", "--cities", ",".join(slugs), "--days", str(days))
        runner.run("apply", "cityml", "features", "apply")
        window = replay_window(settings, slugs)
        # Online features stop where the replayed "live" day starts; the replay moves them on.
        runner.run("materialize", "cityml", "features", "materialize", "--end", window[0].isoformat())
        runner.run("airflow-db", "airflow", "db", "migrate")
        runner.run(
            "retrain-dag",
            "airflow",
            "dags",
            "test",
            "retrain_city_models",
            "-c",
            json.dumps({"cities": slugs}),
        )
        shifted = slugs[-1] if len(slugs) > 1 else None
        samples = serve_and_replay(runner, settings, slugs, port or _free_port(), key, window, long_only=shifted)
        drift = json.loads(
            runner.run("drift", "cityml", "drift", "--cities", ",".join(slugs), "--json", "--hours", str(REPLAY_HOURS))
        )
        fleet = json.loads(runner.run("models", "cityml", "models", "list", "--json"))
    except StageFailed as exc:
        print(str(exc), file=sys.stderr)
        return 1

    verdicts = {(m["city"], m["target"]): m for m in drift["models"]}
    champions = {(r["city"], r["target"]): r for r in fleet}
    gate_files = sorted((settings.reports_dir / "gate").glob("gate-*.json"))
    gate = {(m["city"], m["target"]): m for m in json.loads(gate_files[-1].read_text())["models"]} if gate_files else {}
    print(
        f"\n{'city':<11} {'target':<6} {'served by':>16} {'test MAE':>10} {'baseline':>10} "
        f"{'sample prediction':>18}  drift"
    )
    ok = True
    for i, city in enumerate(slugs):
        for target in ("eta", "price"):
            champ = champions.get((city, target), {})
            g = gate.get((city, target), {})
            if champ.get("champion_version") is not None:
                served, mae = f"v{champ['champion_version']}", champ["metrics"].get("mae")
            else:  # the gate kept the city model out: the global model answers for this city
                served, mae = "global fallback", g.get("global")
            base = g.get("baseline") or champ.get("metrics", {}).get("baseline_mae")
            ok &= mae is not None and base is not None and mae < base
            d = verdicts.get((city, target), {})
            drifted = d.get("drifted", [])
            note = f" ({', '.join(drifted[:2])}{', ...' if len(drifted) > 2 else ''})" if drifted else ""
            sent = " [demo sent its longest trips only]" if i == len(slugs) - 1 and len(slugs) > 1 else ""
            print(
                f"{city:<11} {target:<6} {served:>16} "
                f"{mae if mae is not None else float('nan'):>10.2f} "
                f"{base if base is not None else float('nan'):>10.2f} "
                f"{samples.get((city, target), '-'):>18}  {d.get('verdict', '-')}{note}{sent}"
            )
    for (city, target), g in gate.items():
        if city in slugs and g["decision"] != "promoted":
            print(f"gate kept {target}-{city} v{g['version']} out: {g['reason']}")
    print(f"\ncities to retrain (drift): {', '.join(drift['retrain']) or 'none'}")
    print(
        f"demo finished in {time.perf_counter() - started:.0f}s; logs in {runner.logs}; "
        f"MLflow UI: mlflow ui --backend-store-uri {settings.tracking_uri}"
    )
    return 0 if ok else 1
