"""Online feature latency: ``get_online_features`` with the ``eta_v1`` service, SQLite and Redis online stores.

The call is the one serving makes (`cityml.features.online`): the service object fetched once, entity rows
as dicts, ``full_feature_names=True``, ``to_dict(include_event_timestamps=True)``. Each call asks
for different rows, drawn from the fixture's trips of the last day whose zones the store holds.
"""

from __future__ import annotations

import logging
import time
from datetime import timedelta
from typing import Any

import numpy as np
import pandas as pd

from bench.fixture import Fixture
from bench.report import Section, busy_cpu_s, own_cpu_s, table

log = logging.getLogger(__name__)

SERVICE = "eta_v1"
BATCHES = (1, 100)
REDIS_DB = 11  # the benchmark's own database on the shared server; flushed before use


def _settings(fixture: Fixture, store: str, redis_host: str) -> Any:
    """Settings for one online store; Redis gets a home of its own (registry, materialization state)."""
    if store == "sqlite":
        return fixture.settings
    home = fixture.settings.home.parent / f"{fixture.settings.home.name}-redis"
    home.mkdir(exist_ok=True)
    data = home / "data"
    if not data.exists():
        data.symlink_to(fixture.settings.home / "data", target_is_directory=True)
    return fixture.settings.model_copy(
        update={"home": home, "online_store": "redis", "redis_url": f"{redis_host},db={REDIS_DB}"}
    )


def _requests(fixture: Fixture, present: set[str], batch: int, calls: int, seed: int) -> list[list[dict[str, str]]]:
    """Entity rows of trips of the last day whose two zones have a value in the online store."""
    from cityml.data.trips import read_trips
    from cityml.features.featurestore import entity_columns

    trips = read_trips(fixture.settings.trips_dir).dropna(subset=["pickup_zone", "dropoff_zone"])
    recent = trips[trips["pickup_ts"] >= trips["pickup_ts"].max() - pd.Timedelta(days=1)]
    keys = entity_columns(recent).reset_index(drop=True)
    keys = keys[keys["pickup_zone_key"].isin(present) & keys["dropoff_zone_key"].isin(present)]
    rng = np.random.default_rng(seed)
    return [keys.iloc[rng.integers(0, len(keys), batch)].to_dict("records") for _ in range(calls)]


def _percentiles(samples: list[float]) -> dict[str, float]:
    ms = np.asarray(samples) * 1000
    return {
        "p50_ms": round(float(np.percentile(ms, 50)), 3),
        "p90_ms": round(float(np.percentile(ms, 90)), 3),
        "p99_ms": round(float(np.percentile(ms, 99)), 3),
        "mean_ms": round(float(ms.mean()), 3),
        "max_ms": round(float(ms.max()), 3),
    }


def measure_store(fixture: Fixture, store_name: str, calls: int, warmup: int, redis_host: str) -> dict[str, Any]:
    from cityml.features.featurestore import apply, get_store, materialize

    settings = _settings(fixture, store_name, redis_host)
    if store_name == "redis":
        import redis

        host, port = redis_host.split(":")
        redis.Redis(host=host, port=int(port), db=REDIS_DB).flushdb()
        apply(settings)
    zones = pd.read_parquet(fixture.zone_table, columns=["zone_key", "event_timestamp"])
    end = zones["event_timestamp"].max().to_pydatetime()
    # materialize() loads the last TTL (3 h) of zone rows: the zones active then are the ones served.
    present = set(zones.loc[zones["event_timestamp"] > end - timedelta(hours=3), "zone_key"])
    t0 = time.perf_counter()
    views = materialize(settings, end=end)
    out: dict[str, Any] = {"materialize_s": round(time.perf_counter() - t0, 2), "materialized": views}
    store = get_store(settings)
    service = store.get_feature_service(SERVICE)
    for batch in BATCHES:
        requests = _requests(fixture, present, batch, warmup + calls, seed=batch)
        samples = []
        found = 0
        busy0, mine0, t_start = busy_cpu_s(), own_cpu_s(), time.perf_counter()
        for i, rows in enumerate(requests):
            t = time.perf_counter()
            values = store.get_online_features(features=service, entity_rows=rows, full_feature_names=True).to_dict(
                include_event_timestamps=True
            )
            elapsed = time.perf_counter() - t
            if i >= warmup:
                samples.append(elapsed)
                found += sum(v is not None for v in values["pickup__zone_trips_1h"])
        others = (busy_cpu_s() - busy0 - (own_cpu_s() - mine0)) / (time.perf_counter() - t_start)
        out[f"rows_{batch}"] = {
            "other_cpu_cores": round(max(0.0, others), 2),
            "calls": calls,
            "warmup": warmup,
            **_percentiles(samples),
            "pickup_zone_found": round(found / (calls * batch), 3),
        }
        log.info("online %s, %d rows: %s", store_name, batch, out[f"rows_{batch}"])
    return out


def run(fixture: Fixture, quick: bool, redis_host: str = "127.0.0.1:6379") -> Section:
    calls, warmup = (50, 5) if quick else (500, 20)
    raw: dict[str, Any] = {"calls": calls, "warmup": warmup, "stores": {}}
    for name in ("sqlite", "redis"):
        try:
            raw["stores"][name] = measure_store(fixture, name, calls, warmup, redis_host)
        except Exception as exc:
            log.exception("online %s failed", name)
            raw["stores"][name] = {"error": f"{type(exc).__name__}: {str(exc).splitlines()[0][:300]}"}
    return Section("online", "Online feature latency", _markdown(raw, quick), raw)


def _markdown(raw: dict[str, Any], quick: bool) -> str:
    rows = []
    for name, res in raw["stores"].items():
        label = {
            "sqlite": "SQLite (`feature_store.yaml`)",
            "redis": f"Redis db {REDIS_DB} (`feature_store.redis.yaml`)",
        }
        for batch in BATCHES:
            r = res.get(f"rows_{batch}")
            if r is None:
                rows.append([label[name], batch, res.get("error", "failed"), None, None, None, None])
                continue
            per_row = r["p50_ms"] / batch
            rows.append([label[name], batch, r["p50_ms"], r["p99_ms"], r["mean_ms"], per_row, r["other_cpu_cores"]])
    headers = [
        "Online store",
        "Entity rows / call",
        "p50 ms",
        "p99 ms",
        "mean ms",
        "p50 ms per row",
        "Other processes' CPU, cores",
    ]
    mat = ", ".join(f"{k} {v.get('materialize_s')} s" for k, v in raw["stores"].items() if "materialize_s" in v)
    parts = [
        f"`store.get_online_features(features=eta_v1, entity_rows=..., full_feature_names=True)"
        f".to_dict(include_event_timestamps=True)`, as serving called it before `cityml.features.online.OnlineReader` "
        "(serving now reads through Feast's provider directly; see the serving section), "
        "in one process, one call at a time: "
        f"{raw['calls']} calls per line after {raw['warmup']} warm-up calls, each with different rows: trips of the "
        f"fixture's last day whose zones have values in the store. Redis on 127.0.0.1, database {REDIS_DB}. "
        "Materialized first with "
        f"`cityml.features.featurestore.materialize(settings, end=<last feature hour>)` ({mat}).",
        "",
        table(headers, rows),
        "",
        "The last column is the CPU that other processes used during the calls, on average (for Redis, the "
        "server's own work included): the machine has 2 cores and is shared with other jobs, which p99 shows first.",
    ]
    if quick:
        parts += ["", "_`--quick` run: few calls, for smoke-testing; not a measurement._"]
    return "\n".join(parts)
