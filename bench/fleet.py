"""Fleet scale (``make bench-fleet``): how each cost of the loop grows with the number of cities.

For each size (synthetic cities of ``cityml.data.synth.random_catalog``, 30 days × 300 trips a day by default),
a fresh home goes through the real path, each stage as the process a user would run:

1. ``generate``: ``cityml data generate --cities all``;
2. ``features``: ``cityml features apply`` and ``cityml features materialize`` (SQLite online store);
3. ``retrain``: ``retrain_city_models`` triggered once through Airflow's REST API on the stack of
   ``cityml services up`` (MLflow server on Postgres, Airflow with 2 Celery workers and the ``cityml_training``
   pool), every city and the two global models in one DAG run;
4. ``serve``: ``cityml serve`` loading every champion from the MLflow server (until ``/readyz``);
5. ``drift``: ``cityml drift`` over every city, after a few logged predictions per city;
6. ``serve every model``: ``@champion`` moved onto every model the gate kept off it (bench only), then
   ``cityml serve`` again: one server holding all of the fleet's models (2,002 at 1,000 cities).

Per stage: wall time and the peak RSS of its largest process (the retrain's: any task process of the workers,
sampled). Per size: bytes on disk (registry database, artifacts, online store) and the retrain against the sum
of the LightGBM fits inside it (each model's ``fit`` seconds, from the run's gate report).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import yaml

from bench import report
from cityml.naming import GLOBAL

log = logging.getLogger("bench.fleet")

SIZES = (10, 100, 1000)
DAG = "retrain_city_models"
#: Fits run one thread each, two at a time on 2 cores (the pool's 2 slots, one per Celery worker). The light
#: training profile: one label scale, no pooled or narrow candidates (2 fits a model: the early-stopped fit and
#: its refit, against ~12 by default). This bench measures what the platform adds around the fits as the fleet
#: grows (the quality bench judges the default profile); with the default one, 1,000 cities is 5+ hours here.
PROFILE = {
    "CITYML_TRAIN_LABEL_SCALES": "per_km",
    "CITYML_TRAIN_NARROW_MEMBERS": "false",
    "CITYML_TRAIN_POOL": "false",
}
STACK_ENV = {"CITYML_TRAIN_THREADS": "1", "CITYML_GATE_PARITY_SAMPLE": "5", **PROFILE}
PREDICTIONS_PER_CITY = 5


def _bin(name: str) -> str:
    return str(Path(sys.executable).with_name(name))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _rss_mb(pid: int, field: str = "VmRSS") -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def timed(name: str, cmd: list[str], env: dict[str, str], log_dir: Path) -> dict[str, Any]:
    """Run one stage's command; its seconds and peak RSS (from the kernel's accounting of that child)."""
    out = (log_dir / f"{name}.log").open("w")
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=out, text=True)
    stdout = proc.stdout.read() if proc.stdout else ""
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    seconds = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} exited {proc.returncode}; see {out.name}")
    return {"seconds": round(seconds, 1), "peak_rss_mb": round(usage.ru_maxrss / 1024, 1), "stdout": stdout}


class TreeSampler:
    """Peak RSS of any one process below some root processes (Celery workers and their task processes)."""

    def __init__(self, roots: list[int], every_s: float = 0.5) -> None:
        self.roots, self.every_s = roots, every_s
        self.peak_mb = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> TreeSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        import psutil

        while not self._stop.wait(self.every_s):
            for root in self.roots:
                try:
                    procs = [psutil.Process(root), *psutil.Process(root).children(recursive=True)]
                except psutil.Error:
                    continue
                for p in procs:
                    try:
                        self.peak_mb = max(self.peak_mb, p.memory_info().rss / 2**20)
                    except psutil.Error:
                        continue


def _du_mb(path: Path) -> float:
    if not path.exists():
        return 0.0
    files = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]
    return round(sum(p.stat().st_size for p in files) / 2**20, 1)


def _db_mb(database: str) -> float:
    import psycopg2

    with psycopg2.connect(host="127.0.0.1", user="postgres", dbname="postgres") as conn, conn.cursor() as cur:
        cur.execute("SELECT pg_database_size(%s)", (database,))
        return round(cur.fetchone()[0] / 2**20, 1)


def _retrain(stack: Any, polls: int) -> str:
    """Trigger the DAG for every city through the REST API and wait for it; its run id."""
    headers = {"Authorization": f"Bearer {stack.token()}"}
    with httpx.Client(base_url=f"{stack.airflow_url}/api/v2", headers=headers, timeout=60) as api:
        for _ in range(600):
            if api.get(f"/dags/{DAG}").status_code == 200:
                break
            time.sleep(0.5)
        api.patch(f"/dags/{DAG}", json={"is_paused": False}).raise_for_status()
        r = api.post(f"/dags/{DAG}/dagRuns", json={"logical_date": None, "conf": {"cities": []}})
        r.raise_for_status()
        run_id = r.json()["dag_run_id"]
        for _ in range(polls):
            state = api.get(f"/dags/{DAG}/dagRuns/{run_id}").json()["state"]
            if state in ("success", "failed"):
                break
            time.sleep(2)
        if state != "success":
            raise RuntimeError(f"{DAG} run {run_id} ended {state}")
        return str(run_id)


def _serve(env: dict[str, str], port: int, cities: list[str], log_dir: Path, name: str = "serve") -> dict[str, Any]:
    """``cityml serve`` until ready (every champion loaded and self-tested), then one request of a few
    predictions per city (their latency percentiles: every model held while they are answered)."""
    out = (log_dir / f"{name}.log").open("w")
    t0 = time.perf_counter()
    proc = subprocess.Popen([_bin("cityml"), "serve", "--port", str(port)], env=env, stdout=out, stderr=out)
    url = f"http://127.0.0.1:{port}"
    try:
        with httpx.Client(base_url=url, timeout=60) as api:
            for _ in range(3600):
                try:
                    if api.get("/readyz").status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                if proc.poll() is not None:
                    raise RuntimeError(f"cityml serve exited {proc.returncode}; see {out.name}")
                time.sleep(0.25)
            ready_s = time.perf_counter() - t0
            models = api.get("/v1/models", headers={"X-API-Key": env["CITYML_API_KEYS"]}, params={"limit": 1})
            held = int(models.json().get("total", 0)) if models.status_code == 200 else 0
            rss = _rss_mb(proc.pid)
            answered = 0
            latencies = []
            for city in cities:
                body = {"instances": [_trip(city, i) for i in range(PREDICTIONS_PER_CITY)]}
                t1 = time.perf_counter()
                r = api.post("/v1/predict/eta", json=body, headers={"X-API-Key": env["CITYML_API_KEYS"]})
                latencies.append(time.perf_counter() - t1)
                answered += len(r.json().get("predictions", [])) if r.status_code == 200 else 0
            api.get("/healthz")
    finally:
        proc.terminate()  # flushes the prediction log
        proc.wait(60)
    return {
        "seconds": round(ready_s, 1),
        "peak_rss_mb": round(max(rss, _rss_mb(proc.pid, "VmHWM")), 1),
        "models": held,
        "answered": answered,
        "predict_ms_p50": round(1000 * float(np.percentile(latencies, 50)), 1),
        "predict_ms_p99": round(1000 * float(np.percentile(latencies, 99)), 1),
    }


def _champion_everywhere(mlflow_url: str) -> int:
    """Point ``@champion`` at the newest version of every model the gate kept off it; how many moved.

    The gate promotes only models that beat the global one, so a fleet's server holds fewer models than the
    fleet trained (1,458 of 2,002 at 1,000 cities). #14's goal is one server holding every model: the last
    serve stage measures that, after this, on a registry whose every model has a champion.
    """
    from mlflow import MlflowClient

    from cityml.registry import CHAMPION, champions

    c = MlflowClient(tracking_uri=mlflow_url, registry_uri=mlflow_url)
    held = champions(c)
    newest: dict[str, int] = {}
    token = None
    while True:
        page = c.search_model_versions(max_results=10_000, page_token=token)
        for mv in page:
            newest[mv.name] = max(newest.get(mv.name, 0), int(mv.version))
        token = page.token
        if not token:
            break
    moved = 0
    for name, version in sorted(newest.items()):
        if name not in held:
            c.set_registered_model_alias(name, CHAMPION, str(version))
            moved += 1
    return moved


def _trip(city: str, i: int) -> dict[str, Any]:
    """A trip between cells of the smallest grid a synthetic city has (3 × 3)."""
    from cityml.catalog import grid_zone

    return {"city": city, "pickup_zone": grid_zone(0), "dropoff_zone": grid_zone(1 + i % 8), "distance_km": 2.0 + i}


def measure(cities: int, days: int, trips_per_day: int, tmp: Path) -> dict[str, Any]:
    from cityml.data.synth import random_catalog
    from cityml.services import ServicesConfig, purge, start
    from cityml.settings import Settings

    home = tmp / f"fleet-{cities}"
    logs = home / "bench-logs"
    logs.mkdir(parents=True, exist_ok=True)
    names = [f"f{cities}-{i:04d}" for i in range(cities)]
    catalog = home / "cities.yaml"
    catalog.write_text(yaml.safe_dump(random_catalog(names, seed=11, trips_per_day=trips_per_day)))
    var = home / "var"
    settings = Settings(home=var, catalog_path=catalog)
    tag = uuid.uuid4().hex[:8]
    config = ServicesConfig(
        folder=var / "services",
        airflow_port=_free_port(),
        mlflow_port=_free_port(),
        airflow_db=f"cityml_bench_airflow_{tag}",
        mlflow_db=f"cityml_bench_mlflow_{tag}",
        redis_db=12,
        schedules=False,
    )
    env = {**os.environ, **STACK_ENV, "CITYML_HOME": str(var), "CITYML_CATALOG_PATH": str(catalog)}
    stages: dict[str, dict[str, Any]] = {}
    stages["generate"] = timed(
        "generate", [_bin("cityml"), "data", "generate", "--cities", "all", "--days", str(days)], env, logs
    )
    apply = timed("apply", [_bin("cityml"), "features", "apply"], env, logs)
    mat = timed("materialize", [_bin("cityml"), "features", "materialize"], env, logs)
    stages["features"] = {
        "seconds": round(apply["seconds"] + mat["seconds"], 1),
        "peak_rss_mb": max(apply["peak_rss_mb"], mat["peak_rss_mb"]),
    }
    stack = None
    try:
        t0 = time.perf_counter()
        stack = start(settings, config, extra_env=STACK_ENV)
        stages["stack start"] = {"seconds": round(time.perf_counter() - t0, 1), "peak_rss_mb": None}
        workers = [p.pid for name, p in stack.processes.items() if name.startswith("worker")]
        t0 = time.perf_counter()
        with TreeSampler(workers) as sampler:
            run_id = _retrain(stack, polls=int(3600 * 6 / 2))
        stages["retrain"] = {"seconds": round(time.perf_counter() - t0, 1), "peak_rss_mb": round(sampler.peak_mb, 1)}
        serve_env = {**env, **stack.client_env(), "CITYML_API_KEYS": "bench", "CITYML_RELOAD_INTERVAL_S": "0"}
        stages["serve"] = _serve(serve_env, _free_port(), names, logs)
        stages["drift"] = timed("drift", [_bin("cityml"), "drift", "--json"], serve_env, logs)
        drift_doc = json.loads(stages["drift"].pop("stdout") or "{}")
        forced = _champion_everywhere(stack.mlflow_url)
        stages["serve every model"] = {**_serve(serve_env, _free_port(), names, logs, "serve-all"), "forced": forced}
        gate = json.loads(sorted((var / "reports" / "gate").glob("gate-*.json"))[-1].read_text())
        results = gate["results"]
        fits = sum(r.get("timings", {}).get("fit", 0.0) for r in results)
        # Where a model's time went (summed over the run's models, by the stage its unit timed), and the global
        # units' whole time: what the next change to the per-city cost starts from.
        stage_seconds: dict[str, float] = {}
        for r in results:
            if r.get("city") == GLOBAL:
                stage_seconds[f"global {r['target']}"] = r.get("seconds", 0.0)
                continue
            for stage, seconds in r.get("timings", {}).items():
                stage_seconds[stage] = round(stage_seconds.get(stage, 0.0) + seconds, 1)
        disk = {
            "trips_mb": _du_mb(settings.trips_dir),
            "features_mb": _du_mb(settings.features_dir),
            "online_store_mb": _du_mb(settings.feast_state_dir / "online.db"),
            "artifacts_mb": _du_mb(config.artifacts),
            "registry_db_mb": _db_mb(config.mlflow_db),
        }
    finally:
        if stack is not None:
            stack.stop()
        purge(config)
    for s in stages.values():
        s.pop("stdout", None)
    return {
        "cities": cities,
        "days": days,
        "trips_per_day": trips_per_day,
        "run_id": run_id,
        "stages": stages,
        "models": {k: v for k, v in gate["counts"].items()},
        "fit_seconds": round(fits, 1),
        "model_stage_seconds": stage_seconds,
        "retrain_over_fits": round(stages["retrain"]["seconds"] / fits, 2) if fits else None,
        "disk": disk,
        "drift_flagged": len(drift_doc.get("flagged", [])) if isinstance(drift_doc, dict) else None,
    }


def plot(rows: list[dict[str, Any]], path: Path) -> None:
    """Wall time of each stage against the number of cities, log-log."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    sizes = [r["cities"] for r in rows]
    for stage in rows[0]["stages"]:
        ax.plot(sizes, [r["stages"][stage]["seconds"] for r in rows], marker="o", label=stage)
    ax.plot(sizes, [r["fit_seconds"] for r in rows], linestyle="--", color="grey", label="sum of LightGBM fits")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("cities")
    ax.set_ylabel("wall time (s)")
    ax.set_title("cityml fleet: each stage's time against the number of cities")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


#: Each size's row, saved as it is measured and kept in git: the 1,000-city size alone takes hours.
ROWS_DIR = report.RESULTS.with_name("fleet-rows")


def run(
    sizes: list[int], days: int, trips_per_day: int, tmp: Path, rows_dir: Path = ROWS_DIR, resume: bool = False
) -> report.Section:
    """Measure each size (a fresh home each) and write the section. Each size's row is saved as it is measured
    (``rows_dir/fleet-<n>.json``): a run that stops keeps the sizes it finished, and ``resume`` reuses a saved
    row measured with the same days, trips a day and training profile instead of measuring it again."""
    rows = []
    for n in sizes:
        path = rows_dir / f"fleet-{n}.json"
        if resume and path.exists():
            row = json.loads(path.read_text())
            if (row["days"], row["trips_per_day"], row.get("profile")) == (days, trips_per_day, STACK_ENV):
                log.info("fleet: %d cities: reusing the row measured %s (%s)", n, row.get("measured"), path)
                rows.append(row)
                continue
        log.info("fleet: %d cities x %d days x %d trips a day", n, days, trips_per_day)
        started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
        row = {**measure(n, days, trips_per_day, tmp), "measured": started, "profile": STACK_ENV}
        shutil.rmtree(tmp / f"fleet-{n}", ignore_errors=True)
        rows_dir.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(row, indent=2, default=str))
        rows.append(row)
    return section(rows, days, trips_per_day)


#: #14: the server holds the 2,000 models of 1,000 cities under 8 GB RSS.
SERVER_RSS_GOAL_MB = 8192


def _every_model(row: dict[str, Any]) -> str:
    s = row["stages"].get("serve every model")
    if s is None:
        return "not measured"
    return f"{s['models']} / {s['seconds']} / {s['peak_rss_mb']} / {s.get('predict_ms_p99')}"


def section(rows: list[dict[str, Any]], days: int, trips_per_day: int, note: str = "") -> report.Section:
    """The section from measured rows (one per size), with the plot beside RESULTS.md."""
    from cityml.settings import Settings

    png = report.RESULTS.with_name("fleet-scaling.png")
    plot(rows, png)
    stage_names = list(rows[0]["stages"])
    table_rows = []
    for r in rows:
        for stage in stage_names:
            s = r["stages"][stage]
            table_rows.append(
                [r["cities"], stage, s["seconds"], round(s["seconds"] / r["cities"], 2), s.get("peak_rss_mb")]
            )
    measured = ", ".join(f"{r['cities']} cities {r.get('measured', '?')}" for r in rows)
    body = [
        f"Synthetic cities of {days} days × {trips_per_day} trips a day; each stage as its own process (see "
        f"`bench/fleet.py`). Plot: `{png.name}`. Training profile: "
        + ", ".join(f"`{k}={v}`" for k, v in STACK_ENV.items())
        + " (2 fits a city model; the default profile's ~12 are judged by the quality section). Mapped "
        f"`train_city` tasks at most: `CITYML_TRAIN_MAX_TASKS` ({Settings().train_max_tasks}). Sizes measured: "
        f"{measured}.",
        "",
        report.table(["cities", "stage", "wall s", "s per city", "peak RSS of its largest process (MB)"], table_rows),
        "",
        report.table(
            [
                "cities",
                "models promoted/kept/skipped/failed",
                "retrain s",
                "sum of fits s",
                "retrain / fits",
                "models served",
                "one server, every model: models / ready s / RSS MB / predict p99 ms",
                "registry DB MB",
                "artifacts MB",
                "online store MB",
            ],
            [
                [
                    r["cities"],
                    "/".join(str(r["models"][k]) for k in ("promoted", "rejected", "skipped", "failed")),
                    r["stages"]["retrain"]["seconds"],
                    r["fit_seconds"],
                    r["retrain_over_fits"],
                    r["stages"]["serve"]["models"],
                    _every_model(r),
                    r["disk"]["registry_db_mb"],
                    r["disk"]["artifacts_mb"],
                    r["disk"]["online_store_mb"],
                ]
                for r in rows
            ],
        ),
    ]
    failures = []
    by_size = {r["cities"]: r for r in rows}
    big = max(by_size)
    if by_size[big]["retrain_over_fits"] and by_size[big]["retrain_over_fits"] > 2:
        failures.append(
            f"fleet: at {big} cities the retrain took {by_size[big]['retrain_over_fits']}x its fits (goal 2x)"
        )
    every = by_size[big]["stages"].get("serve every model")
    if every is not None and every["peak_rss_mb"] > SERVER_RSS_GOAL_MB:
        failures.append(f"fleet: one server holding {every['models']} models peaked at {every['peak_rss_mb']} MB")
    if 100 in by_size and big > 100:
        per = {n: by_size[n]["stages"]["retrain"]["seconds"] / n for n in (100, big)}
        growth = per[big] / per[100] - 1
        body += ["", f"Retrain time per city, 100 → {big} cities: {growth:+.0%} (goal ≤ +25%)."]
        if growth > 0.25:
            failures.append(f"fleet: retrain time per city grew {growth:+.0%} from 100 to {big} cities")
    if note:
        body += ["", note]
    if failures:
        body += ["", "Not met in this run:", *[f"- {f}" for f in failures]]
    return report.Section("fleet", "Fleet scale", "\n".join(body), raw={"sizes": rows}, failures=failures)
