"""Serving throughput and latency over HTTP, against `mlflow models serve` and a bare route, in one run.

A synthetic city goes through cityml's real path (generate → `feast apply` → materialize →
`cityml train`), then four servers run side by side on loopback, one uvicorn worker each unless
said otherwise, and wrk (Debian's package) sends each the same load in turn, round-robin, so
that load from other processes falls on all of them alike:

- ``cityml serve``: single-instance ETA predict with online features (SQLite), the self-tested
  champion, and the prediction log;
- ``cityml serve --workers 2``;
- ``mlflow models serve`` of the same booster (its trees, not a retrained copy). MLflow's JSON
  input cannot carry pandas categoricals, so the booster is logged again with its category lists
  dropped and the request sends the zones' codes: the same trees on the same inputs;
- a bare FastAPI route doing only ``booster.predict`` on a posted feature vector: the floor.

Then a 1,000-instance batch, in rows/s, against in-process ``booster.predict`` of the same rows;
and model loading: 2,000 registered models (one artifact registered under 2,000 names) loaded
into one ``ModelStore``, with the time and the process RSS.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from bench import report

log = logging.getLogger(__name__)

KEY = "bench-key"
CITY = "lisbon"
BIN = Path(sys.executable).parent
BARE_APP = """
import json, os, lightgbm as lgb, numpy as np
from fastapi import FastAPI, Request
members = [
    (lgb.Booster(model_file=path), None if cols is None else np.asarray(cols))
    for path, cols in zip(os.environ["BARE_MODELS"].split(","), json.loads(os.environ["BARE_COLS"]))
]
app = FastAPI()

@app.post("/predict")
async def predict(request: Request) -> dict:
    x = np.asarray((await request.json())["x"], dtype="float64").reshape(1, -1)
    raw = [booster.predict(x if cols is None else x[:, cols], num_threads=1)[0] for booster, cols in members]
    return {"value": float(sum(raw) / len(raw))}
"""
WRK_LUA = """
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.headers["X-API-Key"] = "{key}"
bodies = {{
{bodies}
}}
counter = 0
request = function()
  counter = counter + 1
  return wrk.format(nil, nil, nil, bodies[(counter % #bodies) + 1])
end
"""


@dataclass
class Load:
    """One wrk run."""

    rps: float
    p50_ms: float
    p99_ms: float
    errors: int
    requests: int


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _run(cmd: list[str], env: dict[str, str], cwd: Path | None = None) -> str:
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False, cwd=cwd)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd[:4])} failed:\n{proc.stderr[-3000:]}")
    return proc.stdout


@contextmanager
def _server(cmd: list[str], env: dict[str, str], url: str, logfile: Path, ready: str = "/readyz") -> Iterator[int]:
    with logfile.open("w") as out:
        proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            for _ in range(600):
                if proc.poll() is not None:
                    raise RuntimeError(f"{cmd[0]} exited: {logfile.read_text()[-2000:]}")
                try:
                    if httpx.get(url + ready, timeout=2).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                time.sleep(0.5)
            else:
                raise RuntimeError(f"{cmd[0]} not ready: {logfile.read_text()[-2000:]}")
            yield proc.pid
        finally:
            with contextlib.suppress(ProcessLookupError):  # it exited on its own (the error above says why)
                os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)


def _wrk(url: str, bodies: list[str], seconds: int, connections: int, tmp: Path) -> Load:
    """wrk against ``url``, each request the next of ``bodies`` (trips differ: online reads and caches work)."""
    script = tmp / f"wrk-{abs(hash(tuple(bodies))) % 10**8}.lua"
    script.write_text(WRK_LUA.format(key=KEY, bodies=",\n".join(f"[==[{b}]==]" for b in bodies)))
    out = subprocess.run(
        ["wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "--latency", "-s", str(script), url],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    requests = int(re.search(r"(\d+) requests in", out).group(1))  # type: ignore[union-attr]
    errors = 0
    for pattern in (
        r"Non-2xx or 3xx responses: (\d+)",
        r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)",
    ):
        m = re.search(pattern, out)
        if m:
            errors += sum(int(g) for g in m.groups())
    return Load(rps, _latency(out, "50%"), _latency(out, "99%"), errors, requests)


def _drained(base: str, timeout_s: float = 120.0) -> None:
    """Wait until a cityml server's prediction log has written everything it was given.

    A 1,000-instance batch load hands the log 10,000 records a second; measured right after it, a
    single-instance load also measured the writer catching up with that backlog (p99 48, 63, 81 ms
    in three rounds). Each load starts on a server whose writer is idle.
    """
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        metrics = httpx.get(f"{base}/metrics", timeout=10).text
        m = re.search(r"^cityml_prediction_log_pending ([\d.e+]+)$", metrics, re.M)
        if m is None:
            raise RuntimeError(f"{base}/metrics has no cityml_prediction_log_pending gauge")
        if float(m.group(1)) == 0:
            return
        time.sleep(0.5)
    raise RuntimeError(f"{base}: prediction log still writing after {timeout_s:.0f} s")


def _coalesced(base: str) -> tuple[float, float]:
    """A cityml server's model-stage runs so far, and the requests they took (``serving.batching``)."""
    metrics = httpx.get(f"{base}/metrics", timeout=10).text
    found = {
        name: float(m.group(1))
        if (m := re.search(rf"^cityml_predict_requests_per_run_{name} ([\d.e+]+)$", metrics, re.M))
        else 0.0
        for name in ("count", "sum")
    }
    return found["count"], found["sum"]


def _latency(out: str, pct: str) -> float:
    m = re.search(rf"{re.escape(pct)}\s+([\d.]+)(us|ms|s)\b", out)
    if not m:
        return float("nan")
    value, unit = float(m.group(1)), m.group(2)
    return value / 1000 if unit == "us" else value * 1000 if unit == "s" else value


def _rss_mb(pid: int) -> float:
    """RSS of a process and its children (uvicorn workers), MB."""
    total = 0
    pids = [pid]
    out = subprocess.run(["pgrep", "-g", str(os.getpgid(pid))], capture_output=True, text=True).stdout.split()
    pids = [int(p) for p in out] or pids
    for p in pids:
        try:
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
        except OSError:
            continue
    return total / 1024


def _build(home: Path, env: dict[str, str], days: int) -> dict[str, Any]:
    """A cityml home with one synthetic city's champions, features materialized to its last day."""
    cityml = str(BIN / "cityml")
    _run([cityml, "data", "generate", "--cities", CITY, "--days", str(days), "--json"], env)
    _run([cityml, "features", "apply"], env)
    from cityml.data.trips import read_trips
    from cityml.settings import Settings

    trips = read_trips(Settings(home=home).trips_dir, [CITY])
    end = trips["pickup_ts"].max().ceil("h")
    _run([cityml, "features", "materialize", "--end", end.isoformat()], env)
    # Promoted whatever the gate says, no fleet model: this measures serving one city's own champion.
    _run([cityml, "train", "--cities", CITY, "--targets", "eta", "--no-global", "--force-promote", "--json"], env)
    last = trips[trips["pickup_ts"] >= end - np.timedelta64(1, "h")].head(1000)
    if len(last) < 1000:
        last = trips.tail(1000)
    instances = [
        {
            "city": CITY,
            "pickup_ts": end.isoformat(),
            "pickup_lat": r.pickup_lat,
            "pickup_lon": r.pickup_lon,
            "dropoff_lat": r.dropoff_lat,
            "dropoff_lon": r.dropoff_lon,
        }
        for r in last.itertuples()
    ]
    return {"instances": instances, "trips": len(trips)}


def _mlflow_twin(settings: Any, tmp: Path) -> tuple[str, Any]:
    """The champion's booster logged again for `mlflow models serve`: category lists dropped, codes as numbers."""
    import lightgbm as lgb
    import mlflow
    import mlflow.lightgbm

    from cityml.registry import champion, client, load_version

    c = client(settings)
    mv = champion(c, f"eta-{CITY}")
    assert mv is not None, "no eta champion to serve"
    model = load_version(c, mv)
    text = model.booster.model_to_string()
    booster = lgb.Booster(model_str=text)
    booster.pandas_categorical = None
    # Its artifacts in the bench's folder: a SQLite registry's default artifact root is ./mlruns, the
    # working directory (it once put a model into the repository).
    experiment = c.create_experiment("bench-serve", artifact_location=(tmp / "mlartifacts").as_uri())
    mlflow.set_experiment(experiment_id=experiment)
    with mlflow.start_run():
        info = mlflow.lightgbm.log_model(booster, name="model", pip_requirements=["lightgbm"])
    for i, (raw, _, _) in enumerate(model.members):  # the bare routes' boosters, category lists dropped too
        member = lgb.Booster(model_str=raw.booster.model_to_string())
        member.pandas_categorical = None
        member.save_model(str(tmp / f"member{i}.txt"))
    return info.model_uri, model


def _encoded(model: Any, columns: dict[str, Any], n: int) -> np.ndarray:
    return np.asarray(model.encoder.matrix(columns, n))


def _features(model: Any, home: Path, instances: list[dict[str, Any]]) -> tuple[np.ndarray, list[str]]:
    """The served model's input matrix for the instances, as cityml's server builds it."""
    from cityml.catalog import load_catalog
    from cityml.features.featurestore import get_store
    from cityml.features.online import OnlineReader, model_columns
    from cityml.settings import Settings
    from serving.features import place, trip_rows
    from serving.schemas import TripRequest

    settings = Settings(home=home)
    catalog = load_catalog(settings.catalog_path)
    reqs = [TripRequest.model_validate(i) for i in instances]
    from datetime import UTC, datetime

    pickup, dropoff = place(reqs, catalog, [None] * len(reqs))
    rows = trip_rows(reqs, pickup, dropoff, [datetime.now(UTC)] * len(reqs))
    reader = OnlineReader(get_store(settings), get_store(settings).get_feature_service(model.feature_service))
    columns, _ = model_columns(reader, rows, catalog.contexts())
    return _encoded(model, columns, len(reqs)), model.features


def _in_process_rows_per_s(model: Any, x: np.ndarray, rounds: int = 30) -> float:
    """Rows a second through the model's own trees: every booster of a blend (``cityml.modeling``)."""
    members = [(raw.booster, cols) for raw, _, cols in model.members]
    times = []
    for _ in range(rounds):
        t = time.perf_counter()
        for booster, cols in members:
            booster.predict(x if cols is None else x[:, cols], num_threads=1)
        times.append(time.perf_counter() - t)
    return len(x) / statistics.median(times)


def _load_many(settings: Any, env: dict[str, str], n_cities: int, tmp: Path) -> dict[str, Any]:
    """Register the eta champion under 2 × ``n_cities`` names of a synthetic catalog; load them all in one process."""
    import yaml

    from cityml.data.synth import random_catalog
    from cityml.registry import champion, client

    names = [f"c{i:04d}" for i in range(n_cities)]
    catalog_path = tmp / "many.yaml"
    catalog_path.write_text(yaml.safe_dump(random_catalog(names)))
    c = client(settings)
    mv = champion(c, f"eta-{CITY}")
    assert mv is not None and mv.source is not None
    t0 = time.perf_counter()
    for city in names:
        for target in ("eta", "price"):
            name = f"{target}-{city}"
            c.create_registered_model(name)
            v = c.create_model_version(name, mv.source, run_id=mv.run_id, tags={**mv.tags, "city": city})
            c.set_registered_model_alias(name, "champion", v.version)
    register_s = time.perf_counter() - t0
    script = (
        "import json, resource, time\n"
        "from cityml.settings import Settings\n"
        "from serving.model_store import ModelStore\n"
        "from cityml.modeling import one_thread_per_call\n"
        "one_thread_per_call()  # as serving.app.build_state does\n"
        f"s = Settings(home={str(settings.home)!r}, catalog_path={str(catalog_path)!r})\n"
        "t = time.perf_counter(); store = ModelStore(s); changes = store.refresh()\n"
        "print(json.dumps({'seconds': time.perf_counter() - t, 'served': len(store.all()),"
        " 'stale': len(store.stale), 'rss_mb': resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))\n"
    )
    base = (
        "import json, resource\nfrom cityml.settings import Settings\nfrom serving.model_store import ModelStore\n"
        "print(json.dumps({'rss_mb': resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))\n"
    )
    loaded = json.loads(_run([sys.executable, "-c", script], env).strip().splitlines()[-1])
    empty = json.loads(_run([sys.executable, "-c", base], env).strip().splitlines()[-1])
    loaded["register_s"] = register_s
    loaded["models"] = 2 * n_cities
    loaded["baseline_rss_mb"] = empty["rss_mb"]
    loaded["mb_per_model"] = (loaded["rss_mb"] - empty["rss_mb"]) / max(1, loaded["served"])
    return loaded


def run(quick: bool) -> report.Section:
    if shutil.which("wrk") is None:
        subprocess.run(["apt-get", "install", "-y", "-q", "wrk"], check=True, capture_output=True)
    tmp = Path(tempfile.mkdtemp(prefix="cityml-bench-serve-"))
    home = tmp / "home"
    env = {
        **os.environ,
        "CITYML_HOME": str(home),
        "CITYML_API_KEYS": KEY,
        "CITYML_RELOAD_INTERVAL_S": "0",
        "CITYML_TRAIN_POOL": "false",  # mlflow serve must be able to serve the same booster alone
        "CITYML_GATE_PARITY_SAMPLE": "5",
        "MLFLOW_TRACKING_URI": f"sqlite:///{home}/mlflow.db",
        "PYTHONPATH": str(Path(__file__).resolve().parents[1]),
    }
    os.environ.update({k: env[k] for k in ("CITYML_HOME", "MLFLOW_TRACKING_URI")})
    from cityml.settings import Settings

    settings = Settings(home=home)
    built = _build(home, env, days=14 if quick else 21)
    uri, model = _mlflow_twin(settings, tmp)
    built["members"] = [s.kind for _, s, _ in model.members]
    instances = built["instances"]
    x, names = _features(model, home, instances)
    one = [json.dumps({"instances": [i]}) for i in instances]
    batch = [json.dumps({"instances": instances[:1000]})]
    # A missing value is NaN (Python's JSON): MLflow makes a column holding a null an object column,
    # which LightGBM refuses.
    vectors = [[float(v) for v in row] for row in x]
    mlflow_body = [json.dumps({"dataframe_split": {"columns": names, "data": [v]}}) for v in vectors]
    bare_body = [json.dumps({"x": v}) for v in vectors]
    bare_py = tmp / "bare_app.py"
    bare_py.write_text(BARE_APP)

    seconds = 5 if quick else 10
    rounds = 1 if quick else 3
    ports = {k: _port() for k in ("cityml", "cityml2", "mlflow", "bare", "bare_all")}
    uvicorn = str(BIN / "uvicorn")
    servers = {
        "cityml": ([str(BIN / "cityml"), "serve", "--port", str(ports["cityml"])], "/readyz"),
        "cityml2": ([str(BIN / "cityml"), "serve", "--port", str(ports["cityml2"]), "--workers", "2"], "/readyz"),
        "mlflow": (
            [str(BIN / "mlflow"), "models", "serve", "-m", uri, "-p", str(ports["mlflow"]), "--env-manager", "local"],
            "/ping",
        ),
        **{
            k: ([uvicorn, "bare_app:app", "--app-dir", str(tmp), "--port", str(ports[k]), "--no-access-log"], "/docs")
            for k in ("bare", "bare_all")
        },
    }
    # The floor: the first booster alone, as the issue states it; and this model's floor, every
    # member of the blend through ``booster.predict`` (the trees cityml's route walks too).
    member_cols = [None if cols is None else cols.tolist() for _, _, cols in model.members]
    bare_env = {**env, "BARE_MODELS": str(tmp / "member0.txt"), "BARE_COLS": json.dumps(member_cols[:1])}
    bare_all_env = {
        **env,
        "BARE_MODELS": ",".join(str(tmp / f"member{i}.txt") for i in range(len(member_cols))),
        "BARE_COLS": json.dumps(member_cols),
    }
    loads: dict[str, list[Load]] = {k: [] for k in ("cityml", "cityml2", "mlflow", "bare", "bare_all", "batch")}
    rss: dict[str, float] = {}
    with (
        _server(servers["cityml"][0], env, f"http://127.0.0.1:{ports['cityml']}", tmp / "cityml.log") as p1,
        _server(servers["cityml2"][0], env, f"http://127.0.0.1:{ports['cityml2']}", tmp / "cityml2.log") as p2,
        _server(servers["mlflow"][0], env, f"http://127.0.0.1:{ports['mlflow']}", tmp / "mlflow.log", "/ping") as p3,
        _server(servers["bare"][0], bare_env, f"http://127.0.0.1:{ports['bare']}", tmp / "bare.log", "/docs") as p4,
        _server(
            servers["bare_all"][0], bare_all_env, f"http://127.0.0.1:{ports['bare_all']}", tmp / "bare_all.log", "/docs"
        ) as p5,
    ):
        # Same answers: cityml's prediction and mlflow's on the same trip.
        r = httpx.post(
            f"http://127.0.0.1:{ports['cityml']}/v1/predict/eta",
            content=one[0].encode(),
            headers={"X-API-Key": KEY, "Content-Type": "application/json"},
        ).json()
        m = httpx.post(
            f"http://127.0.0.1:{ports['mlflow']}/invocations",
            content=mlflow_body[0].encode(),
            headers={"Content-Type": "application/json"},
        ).json()
        raw = float(m["predictions"][0])
        decoded = raw * model.scale.divisor(x[:1, names.index("distance_km")], None, 1)[0]
        check = {"cityml": r["predictions"][0]["value"], "mlflow_raw": raw, "mlflow_decoded": decoded}
        urls = {
            "cityml": (f"http://127.0.0.1:{ports['cityml']}/v1/predict/eta", one, 8),
            "cityml2": (f"http://127.0.0.1:{ports['cityml2']}/v1/predict/eta", one, 8),
            "mlflow": (f"http://127.0.0.1:{ports['mlflow']}/invocations", mlflow_body, 8),
            "bare": (f"http://127.0.0.1:{ports['bare']}/predict", bare_body, 8),
            "bare_all": (f"http://127.0.0.1:{ports['bare_all']}/predict", bare_body, 8),
            "batch": (f"http://127.0.0.1:{ports['cityml']}/v1/predict/eta", batch, 2),
        }
        # The one-worker server takes the batch load too (one worker's gauge is the server's).
        bases = {name: f"http://127.0.0.1:{ports['cityml']}" for name in ("cityml", "batch")}
        for url, body, conns in urls.values():  # warm-up
            _wrk(url, body, 2, conns, tmp)
        runs = [0.0, 0.0]  # model-stage runs and the requests they took, during the single-instance loads
        for _ in range(rounds):
            for name, (url, body, conns) in urls.items():
                if name in bases:
                    _drained(bases[name])
                before = _coalesced(bases["cityml"]) if name == "cityml" else (0.0, 0.0)
                loads[name].append(_wrk(url, body, seconds, conns, tmp))
                if name == "cityml":
                    after = _coalesced(bases["cityml"])
                    runs = [runs[0] + after[0] - before[0], runs[1] + after[1] - before[1]]
        built["requests_per_run"] = runs[1] / runs[0] if runs[0] else float("nan")
        rss = {
            "cityml": _rss_mb(p1),
            "cityml2": _rss_mb(p2),
            "mlflow": _rss_mb(p3),
            "bare": _rss_mb(p4),
            "bare_all": _rss_mb(p5),
        }
        with httpx.Client(base_url=f"http://127.0.0.1:{ports['cityml']}") as http:
            metrics = http.get("/metrics").text
    in_process = _in_process_rows_per_s(model, x[:1000])
    many = _load_many(settings, env, 100 if quick else 1000, tmp)
    return _section(loads, rss, in_process, many, check, metrics, seconds, rounds, built)


def _median(runs: list[Load], attr: str) -> float:
    return statistics.median(getattr(r, attr) for r in runs)


def _section(
    loads: dict[str, list[Load]],
    rss: dict[str, float],
    in_process: float,
    many: dict[str, Any],
    check: dict[str, float],
    metrics: str,
    seconds: int,
    rounds: int,
    built: dict[str, Any],
) -> report.Section:
    rps = {k: _median(v, "rps") for k, v in loads.items()}
    p99 = {k: _median(v, "p99_ms") for k, v in loads.items()}
    p50 = {k: _median(v, "p50_ms") for k, v in loads.items()}
    errors = {k: sum(r.errors for r in v) for k, v in loads.items()}
    batch_rows = rps["batch"] * 1000
    labels = {
        "cityml": "`cityml serve`, 1 worker: single-instance ETA, online features (SQLite), prediction log",
        "cityml2": "`cityml serve --workers 2`, same request",
        "mlflow": "`mlflow models serve` of the same booster (no feature lookup)",
        "bare": "bare FastAPI route: `booster.predict` of the first booster on a posted vector (the floor)",
        "bare_all": "bare FastAPI route: `booster.predict` of every booster of the blend, their mean "
        "(this model's floor)",
        "batch": "`cityml serve`, 1 worker: 1,000-instance batch (2 connections)",
    }
    lines = [
        f"wrk -t1 on loopback, {rounds} round(s) of {seconds} s per "
        "server, round-robin, medians shown; 8 connections unless said. A synthetic city "
        f"({CITY}, {built['trips']:,} trips) trained by `cityml train --force-promote`; its ETA champion is served "
        + (
            f"(a blend of {len(built['members'])} boosters: {', '.join(built['members'])}; `mlflow models serve` "
            "and the first bare route serve its first, the second bare route and the in-process batch floor run all)."
            if len(built["members"]) > 1
            else f"(one booster, {built['members'][0]})."
        ),
        "",
        "| Server | Requests/s | p50 ms | p99 ms | Non-2xx / socket errors | RSS MB |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for k in ("cityml", "cityml2", "mlflow", "bare", "bare_all", "batch"):
        lines.append(
            f"| {labels[k]} | {rps[k]:,.0f} | {p50[k]:.2f} | {p99[k]:.2f} | {errors[k]} | "
            f"{rss.get(k, rss.get('cityml', 0)) if k != 'batch' else rss['cityml']:,.0f} |"
        )
    ratio_mlflow = rps["cityml"] / rps["mlflow"]
    ratio_bare = rps["cityml"] / rps["bare"]
    ratio_model = rps["cityml"] / rps["bare_all"]
    ratio_batch = batch_rows / in_process
    lines += [
        "",
        f"- **cityml / `mlflow models serve` = {ratio_mlflow:.1f}×** requests/s (goal ≥ 10×; the bare floor "
        f"itself is {rps['bare'] / rps['mlflow']:.1f}× here); "
        f"**p99 {p99['cityml']:.2f} ms** at 8 connections (goal ≤ 10 ms); "
        f"**{ratio_bare:.0%} of the bare-route floor** (goal ≥ 60%), **{ratio_model:.0%} of this model's floor** "
        f"(the same route walking all {len(built['members'])} boosters of the blend, as cityml does).",
        f"- 1,000-row batch: {batch_rows:,.0f} rows/s served vs {in_process:,.0f} rows/s in-process "
        f"`booster.predict` on the same rows: **{ratio_batch:.0%}** (goal ≥ 50%).",
        f"- Same trip, same trees: cityml answered {check['cityml']:.4f} s; mlflow returned the booster's raw "
        f"{check['mlflow_raw']:.4f} (s per km: cityml's models learn per km), {check['mlflow_decoded']:.4f} s once "
        "multiplied back — `mlflow models serve` answers in the model's internal units.",
        f"- Loading: {many['models']:,} registered models (one artifact under {many['models']:,} names, registered in "
        f"{many['register_s']:.0f} s) loaded and self-tested by one `ModelStore` in **{many['seconds']:.1f} s** "
        f"(goal ≤ 60 s): {many['served']:,} served, {many['stale']} stale; peak RSS {many['rss_mb']:,.0f} MB "
        f"({many['mb_per_model']:.2f} MB per model above an empty store's {many['baseline_rss_mb']:,.0f} MB).",
    ]
    lines.append(
        f"- Requests that arrived together shared one pass through the models (`serving.batching`): "
        f"{built['requests_per_run']:.1f} requests per pass on average under the single-instance load."
    )
    degraded = re.findall(r"cityml_predictions_degraded_total\{[^}]*\} ([\d.e+]+)", metrics)
    lines.append(
        f"- Degraded answers during the run (online value missing or stale): {sum(float(d) for d in degraded):,.0f}."
    )
    return report.Section(
        key="serve",
        title="Serving: throughput and latency over HTTP",
        body="\n".join(lines),
        raw={
            "loads": {k: [r.__dict__ for r in v] for k, v in loads.items()},
            "rss_mb": rss,
            "in_process_rows_per_s": in_process,
            "load_many": many,
            "check": check,
        },
        failures=[],
    )
