"""Point-in-time join for training sets: cityml's and Feast's offline stores against a hand-written ASOF join.

The entity frame is what `training.datasets` sends Feast (city, zone keys, pickup time in µs UTC),
drawn from the fixture's trips. Measuring happens in worker processes (``python -m bench.pit``):
one runs every full-size variant round-robin, so that load from other processes on a shared
machine falls on all variants alike; the file (dask) store gets workers of its own. The parent
watches each worker's memory and time and stops it past a limit, so a store that would exhaust
the machine is recorded as such instead of taking the machine down.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
import threading
import time
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from statistics import median
from typing import Any

import numpy as np
import pandas as pd

from bench.fixture import Fixture, entity_frame
from bench.report import Section, busy_cpu_s, own_cpu_s, table

log = logging.getLogger(__name__)

SERVICE = "eta_v1"
CITYML = "cityml_asof"  # what training uses: feature_store.yaml's offline store, cityml.features.feast_asof
BASELINE = "feast_duckdb"  # Feast's stock DuckDB store: the reference every variant's values are checked against
FLOOR = "asof"
FILE_STORE = "feast_file"
HEADLINE = (CITYML, FLOOR, BASELINE, FILE_STORE)
GOAL_RATIO = 2.0
MEMORY_VARIANTS = (CITYML, BASELINE, FLOOR, "feast_duckdb_wide")
MB = 2**20


@dataclass(frozen=True)
class Variant:
    """One way of getting the training features; what is timed is ``entity frame in → result out``."""

    key: str
    label: str
    store: str = "duckdb"  # duckdb | file | cityml (feature_store.yaml's: the ASOF store) | none (the raw floor)
    prepare: str = ""  # a change to the entity frame made inside the timed call (see _prepare)
    output: str = "df"  # df (pandas, via Arrow as Feast's to_df) | arrow | duckdb-df (DuckDB's own .df())
    duckdb: dict[str, str] = field(default_factory=dict)  # settings of the DuckDB connection Feast uses
    entity_sql: bool = False  # pass the entity frame as an SQL string instead of a DataFrame


VARIANTS = [
    Variant(
        CITYML,
        "cityml's offline store (`cityml.features.feast_asof`: Feast API, ASOF joins), DataFrame in, `to_df()`",
        store="cityml",
    ),
    Variant(BASELINE, "Feast's stock DuckDB store, DataFrame in, `to_df()`"),
    Variant(FLOOR, "Raw DuckDB ASOF LEFT JOIN ×3, TTLs as CASE, Arrow → pandas — the floor", store="none"),
    Variant(FILE_STORE, "Feast file (dask) store, `to_df()`", store="file"),
    Variant(
        "feast_duckdb_wide",
        "Feast DuckDB, entity frame as `training.datasets` sends it today (+ trip_id, 5 request features, label)",
        prepare="wide",
    ),
    Variant("feast_duckdb_arrow", "Feast DuckDB, `to_arrow()` instead of `to_df()`", output="arrow"),
    Variant("feast_duckdb_sorted", "Feast DuckDB, entity frame sorted by event_timestamp", prepare="sort"),
    Variant("feast_duckdb_strings", "Feast DuckDB, key columns as `string[pyarrow]`", prepare="strings"),
    Variant("feast_duckdb_ns", "Feast DuckDB, event_timestamp as `datetime64[ns, UTC]`", prepare="ns"),
    Variant("feast_duckdb_threads1", "Feast DuckDB, DuckDB `threads=1`", duckdb={"threads": "1"}),
    Variant(
        "feast_duckdb_unordered",
        "Feast DuckDB, DuckDB `preserve_insertion_order=false`",
        duckdb={"preserve_insertion_order": "false"},
    ),
    Variant(
        "feast_duckdb_range_join",
        "Feast DuckDB, DuckDB `prefer_range_joins=true`",
        duckdb={"prefer_range_joins": "true"},
    ),
    Variant(
        "feast_duckdb_range_ns",
        "Feast DuckDB, `prefer_range_joins=true` + event_timestamp in ns",
        prepare="ns",
        duckdb={"prefer_range_joins": "true"},
    ),
    Variant(
        "feast_duckdb_best",
        "Feast DuckDB, `prefer_range_joins=true` + ns + `preserve_insertion_order=false`",
        prepare="ns",
        duckdb={"prefer_range_joins": "true", "preserve_insertion_order": "false"},
    ),
    Variant("feast_duckdb_sql_entity", "Feast DuckDB, entity frame as an SQL string over parquet", entity_sql=True),
    Variant("asof_arrow", "Raw DuckDB ASOF, Arrow out (no pandas)", store="none", output="arrow"),
    Variant("asof_duckdb_df", "Raw DuckDB ASOF, DuckDB's `.df()`", store="none", output="duckdb-df"),
]
BY_KEY = {v.key: v for v in VARIANTS}


# --------------------------------------------------------------------------------------------
# Worker: runs variants over a saved entity frame and writes what it measured as JSON.
# --------------------------------------------------------------------------------------------
def _widen(entity: pd.DataFrame) -> pd.DataFrame:
    """The entity frame with the other columns `training.datasets` puts in it: trip id, request features, label."""
    rng = np.random.default_rng(0)
    n = len(entity)
    hour = rng.integers(0, 24, n)
    weekday = rng.integers(0, 7, n)
    return entity.assign(
        trip_id=[f"{c}-{i:09d}" for c, i in zip(entity["city"], entity["row_id"], strict=True)],
        distance_km=rng.gamma(2.0, 3.0, n),
        bearing_deg=rng.uniform(0.0, 360.0, n),
        local_hour=hour,
        local_weekday=weekday,
        is_weekend=(weekday >= 5).astype("int64"),
        duration_s=rng.gamma(3.0, 300.0, n),
    )


def _prepare(entity: pd.DataFrame, how: str) -> pd.DataFrame:
    if how == "sort":
        return entity.sort_values("event_timestamp", kind="stable")
    if how == "strings":
        keys = ["city", "pickup_zone_key", "dropoff_zone_key"]
        return entity.astype(dict.fromkeys(keys, "string[pyarrow]"))
    if how == "ns":
        return entity.assign(event_timestamp=entity["event_timestamp"].astype("datetime64[ns, UTC]"))
    # Feast's DuckDB store writes the UTC-normalised timestamp back into the frame it is given.
    return entity.copy(deep=False)


def _feast_store(home: Path, offline_type: str, work: Path) -> Any:
    import yaml
    from feast import FeatureStore

    from cityml.features.featurestore import get_store
    from cityml.settings import Settings

    settings = Settings(home=home, online_store="sqlite")
    if offline_type == "cityml":
        return get_store(settings)
    # Same definitions and registry; only the offline store differs.
    os.environ.update(settings.feast_env())
    config = yaml.safe_load(settings.feast_yaml.read_text())
    config["offline_store"] = {"type": offline_type}
    path = work / f"feature_store.{offline_type}.yaml"
    path.write_text(yaml.safe_dump(config))
    return FeatureStore(repo_path=str(settings.feast_repo_path), fs_yaml_file=path)


@dataclass
class Runner:
    """One variant ready to run: ``call`` is what is timed, ``enter``/``leave`` wrap it untimed."""

    call: Callable[[], Any]
    enter: Callable[[], Any] = lambda: None
    leave: Callable[[], Any] = lambda: None


def _runner(variant: Variant, args: argparse.Namespace, entity: pd.DataFrame, stores: dict[str, Any]) -> Runner:
    """Everything a variant needs, set up beforehand; ``stores`` caches FeatureStores by offline store type."""

    def store_for(offline: str) -> Any:
        if offline not in stores:
            stores[offline] = _feast_store(args.home, offline, args.entities.parent)
        return stores[offline]

    if variant.store == "none":
        import duckdb

        from cityml.features.feast_asof import asof_sql, specs_from_service

        store = store_for("cityml")
        sql = asof_sql(specs_from_service(store, store.get_feature_service(SERVICE)), "entity_df", "event_timestamp")
        con = duckdb.connect()

        def floor() -> Any:
            con.register("entity_df", entity)
            try:
                result = con.sql(sql)
                if variant.output == "duckdb-df":
                    return result.df()
                table: Any = result.to_arrow_table()
                return table if variant.output == "arrow" else table.to_pandas()
            finally:
                con.unregister("entity_df")

        return Runner(floor)

    offline = variant.store
    store = store_for(offline)
    service = store.get_feature_service(SERVICE)
    if variant.prepare == "wide":  # built once, untimed: only what Feast does with the extra columns counts
        entity = _widen(entity)

    def feast() -> Any:
        if variant.entity_sql:
            frame: Any = f"SELECT * FROM read_parquet('{args.entities}') LIMIT {len(entity)}"
        else:
            frame = _prepare(entity, variant.prepare)
        job = store.get_historical_features(entity_df=frame, features=service, full_feature_names=True)
        return job.to_arrow() if variant.output == "arrow" else job.to_df()

    if not variant.duckdb:
        return Runner(feast)
    import ibis

    backend = ibis.get_backend()  # the connection Feast's DuckDB store runs its queries on

    def enter() -> None:
        for name, value in variant.duckdb.items():
            backend.raw_sql(f"SET {name} = {value}")

    def leave() -> None:
        for name in variant.duckdb:
            backend.raw_sql(f"RESET {name}")

    return Runner(feast, enter, leave)


class PeakRss:
    """Highest RSS of this process while the ``with`` block runs, sampled every 20 ms."""

    def __init__(self) -> None:
        self.peak_mb = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while True:
            self.peak_mb = max(self.peak_mb, _rss_mb())
            if self._stop.wait(0.02):
                return

    def __enter__(self) -> PeakRss:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak_mb = max(self.peak_mb, _rss_mb())


def _rss_mb() -> float:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / MB


def _error(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {(str(exc).strip().splitlines() or [''])[0][:300]}"


def measure(variants: list[Variant], args: argparse.Namespace, entity: pd.DataFrame) -> list[dict[str, Any]]:
    """Warm-up rounds, then timed rounds; each round runs every variant once, in turn.

    Interleaving spreads whatever else the machine is doing over all variants alike, so their
    ratios hold even when the absolute times drift. A variant that raises is reported and dropped.
    """
    stores: dict[str, Any] = {}
    out = {v.key: {"key": v.key, "rows": len(entity), "runs": args.runs, "warmup": args.warmup} for v in variants}
    runners: dict[str, Runner] = {}
    for v in variants:
        try:
            runners[v.key] = _runner(v, args, entity, stores)
        except Exception as exc:  # noqa: BLE001 - a variant that fails is a result to report
            out[v.key]["error"] = _error(exc)
    out_list = list(out.values())
    for r in out_list:
        r["rss_start_mb"] = round(_rss_mb())  # entity frame and stores loaded, nothing run yet
    for rnd in range(args.warmup + args.runs):
        last = rnd == args.warmup + args.runs - 1
        for key, runner in list(runners.items()):
            r = out[key]
            try:
                runner.enter()
                with PeakRss() as rss:
                    t0 = time.perf_counter()
                    result = runner.call()
                    elapsed = time.perf_counter() - t0
                if rnd >= args.warmup:
                    r.setdefault("times_s", []).append(round(elapsed, 4))
                    r["peak_rss_mb"] = round(max(r.get("peak_rss_mb", 0), rss.peak_mb))
                print(f"round {rnd + 1}: {key} {elapsed:.2f} s, {rss.peak_mb:.0f} MB", file=sys.stderr, flush=True)
                if last:
                    frame = result.to_pandas() if hasattr(result, "to_pandas") else result
                    r["result_rows"] = len(frame)
                    if args.save_dir:
                        path = args.save_dir / f"{key}.parquet"
                        frame.to_parquet(path, index=False)
                        r["saved"] = str(path)
                del result
            except Exception as exc:  # noqa: BLE001 - a variant that fails is a result to report
                r["error"] = _error(exc)
                del runners[key]
            finally:
                runner.leave()
        for r in out_list:
            if r.get("times_s"):
                r["median_s"] = round(median(r["times_s"]), 4)
        args.result.write_text(json.dumps(out_list, indent=2))  # what is done survives a kill
    return out_list


def worker(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.pit")
    parser.add_argument("--home", type=Path, required=True)
    parser.add_argument("--entities", type=Path, required=True)
    parser.add_argument("--rows", type=int, required=True)
    parser.add_argument("--variants", required=True, help="comma-separated keys, run round-robin")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--save-dir", type=Path)
    parser.add_argument("--result", type=Path, required=True)
    args = parser.parse_args(argv)
    warnings.filterwarnings("ignore")
    logging.basicConfig(level=logging.WARNING)
    entity = pd.read_parquet(args.entities).head(args.rows)
    results = measure([BY_KEY[k] for k in args.variants.split(",")], args, entity)
    args.result.write_text(json.dumps(results, indent=2))


# --------------------------------------------------------------------------------------------
# Parent: plans the workers, watches them, compares results, writes the section.
# --------------------------------------------------------------------------------------------
@dataclass
class Job:
    variants: list[str]
    rows: int
    runs: int
    warmup: int
    timeout_s: float
    note: str = ""
    purpose: str = "time"  # time | rss (one run alone in a fresh process, for its memory)


def _spawn(job: Job, home: Path, entities: Path, work: Path, mem_limit_mb: float) -> list[dict[str, Any]]:
    """Run a worker, stopping it past ``mem_limit_mb`` of RSS or ``timeout_s``; its results, one per variant."""
    import psutil

    name = f"{job.purpose}-{job.variants[0]}-{job.rows}"
    result = work / f"{name}.json"
    save = work / "frames" / name
    save.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "bench.pit", "--home", str(home), "--entities", str(entities)]
    cmd += ["--rows", str(job.rows), "--variants", ",".join(job.variants), "--runs", str(job.runs)]
    cmd += ["--warmup", str(job.warmup), "--result", str(result)]
    cmd += ["--save-dir", str(save)] if job.purpose == "time" else []
    log.info("pit: %s at %d rows (%d+%d runs)", ",".join(job.variants), job.rows, job.warmup, job.runs)
    stderr = work / f"{name}.stderr"
    t0 = time.perf_counter()
    busy0, mine0 = busy_cpu_s(), own_cpu_s()
    peak = 0.0
    stopped = ""
    with stderr.open("w") as err:
        proc = subprocess.Popen(cmd, cwd=Path(__file__).resolve().parent.parent, stdout=err, stderr=err)
        watched = psutil.Process(proc.pid)
        while proc.poll() is None:
            try:
                rss = sum(p.memory_info().rss for p in [watched, *watched.children(recursive=True)]) / MB
            except psutil.Error:
                rss = 0.0
            peak = max(peak, rss)
            elapsed = time.perf_counter() - t0
            if rss > mem_limit_mb or elapsed > job.timeout_s:
                stopped = (
                    f"stopped by the bench at {rss / 1024:.1f} GB RSS (limit {mem_limit_mb / 1024:.0f} GB) "
                    f"after {elapsed:.0f} s"
                    if rss > mem_limit_mb
                    else f"stopped by the bench after {elapsed:.0f} s (time limit)"
                )
                proc.kill()
                proc.wait()
                break
            time.sleep(0.2)
    wall = time.perf_counter() - t0
    # CPU the rest of the machine used meanwhile, in cores: another job on a 2-core box shows up here.
    others = max(0.0, (busy_cpu_s() - busy0) - (own_cpu_s() - mine0)) / wall
    done = json.loads(result.read_text()) if result.exists() else []
    seen = {r["key"] for r in done}
    for key in job.variants:
        if key not in seen:
            tail = stderr.read_text().strip().splitlines()[-3:]
            reason = stopped or f"worker exited {proc.returncode}: {' / '.join(tail)[-300:]}"
            done.append({"key": key, "rows": job.rows, "error": reason, "peak_rss_mb": round(peak)})
            stopped = stopped and "not reached (worker stopped earlier)"
    for r in done:
        if stopped and not r.get("median_s") and not r.get("error"):
            r["error"] = stopped
        r["sampled_peak_rss_mb"] = round(peak)
        r["wall_s"] = round(wall, 1)
        r["other_cpu_cores"] = round(others, 2)
        r["note"] = job.note
        r["purpose"] = job.purpose
    return done


def compare(
    base: pd.DataFrame, other: pd.DataFrame, columns: list[str], rows: int, matched: list[str]
) -> dict[str, Any]:
    """Row-by-row equality on ``row_id`` of the first ``rows`` entity rows, within float tolerance.

    Rows ``other`` lacks are counted, and split by why they might be missing: the base found no
    feature row within the TTL for some view (``matched`` columns, one per view, are NULL only
    then), or the row repeats another's keys and timestamp.
    """
    b = base[base["row_id"] < rows].set_index("row_id").sort_index()
    o = other.set_index("row_id").sort_index()
    o = o[~o.index.duplicated()]
    common = b.index.intersection(o.index)
    x = b.loc[common, columns].to_numpy(dtype="float64")
    y = o.loc[common, columns].to_numpy(dtype="float64")
    same = np.isclose(x, y, rtol=1e-9, atol=1e-9, equal_nan=True)
    missing = b.loc[b.index.difference(common)]
    repeated = b.drop(columns=columns).duplicated(keep=False)
    return {
        "rows_expected": len(b),
        "rows_returned": len(other),
        "rows_missing": len(missing),
        "missing_without_a_ttl_match": int(missing[matched].isna().any(axis=1).sum()),
        "missing_repeating_keys_and_time": int(repeated.loc[missing.index].sum()),
        "rows_compared": len(common),
        "rows_mismatched": int((~same.all(axis=1)).sum()),
        "values_mismatched": {c: int((~same[:, i]).sum()) for i, c in enumerate(columns) if (~same[:, i]).any()},
    }


def plan(rows: int, quick: bool, only: list[str] | None) -> list[Job]:
    """Workers to run: every DataFrame-sized variant round-robin in one, the file store apart."""
    keys = [v.key for v in VARIANTS if v.store != "file"]
    if only:
        keys = [k for k in keys if k in only or k == BASELINE]  # the baseline is what values are checked against
    # 1M rows: a round of all variants takes a few minutes; this bounds a stuck worker, not a slow one.
    jobs = [Job(keys, rows, 3, 1, 900 + rows / 1000 * len(keys))] if len(keys) > 1 or not only else []
    # Peak RSS in the shared worker is not any one variant's: the ones that matter run once more alone.
    jobs += [Job([k], rows, 1, 0, 600 + rows / 1000, purpose="rss") for k in MEMORY_VARIANTS if k in keys]
    if not only or FILE_STORE in only:
        file_rows = min(rows, 1_000 if quick else 10_000)
        jobs.append(Job([FILE_STORE], file_rows, 3, 1, 1800, "the largest size measured, 1 warm-up + 3 runs"))
        if not quick and rows > 100_000:
            jobs.append(Job([FILE_STORE], 100_000, 1, 0, 1800, "one attempt, to see whether it fits"))
    return jobs


def run(fixture: Fixture, rows: int, quick: bool, mem_limit_gb: float, variants: list[str] | None = None) -> Section:
    """Measure every variant and build the RESULTS.md section."""
    from cityml.features.featurestore import get_store, service_feature_names

    service = get_store(fixture.settings).get_feature_service(SERVICE)
    columns = service_feature_names(service)
    # A view's count feature (its first) is NULL only when no feature row is within the TTL.
    matched = [f"{p.name_to_use()}__{p.features[0].name}" for p in service.feature_view_projections]
    work = fixture.settings.home.parent / "pit"  # removed with the fixture
    work.mkdir(parents=True, exist_ok=True)
    entities = work / "entities.parquet"
    frame = entity_frame(fixture.settings, rows)
    frame.to_parquet(entities, index=False)
    duplicates = int(frame.drop(columns="row_id").duplicated().sum())
    del frame

    results: list[dict[str, Any]] = []
    for job in plan(rows, quick, variants):
        results += _spawn(job, fixture.settings.home, entities, work, mem_limit_gb * 1024)

    base = next((r for r in results if r["key"] == BASELINE and "saved" in r and r["purpose"] == "time"), None)
    if base is not None:
        base_frame = pd.read_parquet(base["saved"])
        for r in results:
            if "saved" in r and r is not base:
                r["check"] = compare(base_frame, pd.read_parquet(r["saved"]), columns, r["rows"], matched)
    raw = {
        "fixture": fixture.describe(),
        "entity_rows": rows,
        "duplicate_entity_rows": duplicates,
        "feature_columns": columns,
        "variants": {v.key: asdict(v) for v in VARIANTS},
        "results": results,
    }
    section = Section("pit", "Point-in-time join for training sets", _markdown(raw, fixture, rows, quick), raw)
    floor = next((r for r in results if r["key"] == FLOOR and r["purpose"] == "time"), {})
    check = floor.get("check")
    if check is None:
        section.failures.append(f"pit: the ASOF floor could not be checked against Feast DuckDB ({floor.get('error')})")
    elif check["rows_mismatched"] or check["rows_missing"]:
        section.failures.append(f"pit: the ASOF floor differs from Feast DuckDB: {check}")
    ours = next((r for r in results if r["key"] == CITYML and r["purpose"] == "time"), {})
    if ours.get("check") and (ours["check"]["rows_mismatched"] or ours["check"]["rows_missing"]):
        section.failures.append(f"pit: cityml's offline store differs from Feast DuckDB: {ours['check']}")
    return section


def _rss(r: dict[str, Any], alone: dict[str, int]) -> int | None:
    """Peak RSS that belongs to the variant: its own worker's, else its run alone; None if shared only."""
    if r["key"] == FILE_STORE:
        stopped = "stopped by the bench" in r.get("error", "")
        return r.get("peak_rss_mb") or (r.get("sampled_peak_rss_mb") if stopped else None)
    return alone.get(r["key"])


def _duration(seconds: float) -> str:
    return f"{seconds:,.0f} s" if seconds < 120 else f"{seconds / 60:,.0f} min"


def _verdict(r: dict[str, Any]) -> str:
    check = r.get("check")
    if r["key"] == BASELINE:
        return "reference"
    if check is None:
        return "—"
    text = f"{check['rows_mismatched']:,} differ of {check['rows_compared']:,}"
    if check["rows_missing"]:
        text += (
            f"; **{check['rows_missing']:,} rows missing** ({check['missing_without_a_ttl_match']:,} lack a match "
            f"within a TTL, {check['missing_repeating_keys_and_time']:,} repeat another row's keys and time)"
        )
    return text


def _markdown(raw: dict[str, Any], fixture: Fixture, rows: int, quick: bool) -> str:
    results = [r for r in raw["results"] if r["purpose"] == "time"]
    alone = {r["key"]: r["peak_rss_mb"] for r in raw["results"] if r["purpose"] == "rss" and "peak_rss_mb" in r}
    by_key = {r["key"]: r for r in results if r["rows"] == rows}
    floor_times = by_key.get(FLOOR, {}).get("times_s", [])

    def to_floor(r: dict[str, Any]) -> float | None:
        """Median over rounds of (this variant's time / the floor's time in the same round)."""
        times = r.get("times_s", [])
        if r["rows"] != rows or not times or len(times) != len(floor_times):
            return None
        return round(median(t / f for t, f in zip(times, floor_times, strict=True)), 2)

    ratio_value = to_floor(by_key[CITYML]) if CITYML in by_key else None
    stock_value = to_floor(by_key[BASELINE]) if BASELINE in by_key else None

    def line(r: dict[str, Any]) -> list[Any]:
        med = r.get("median_s")
        return [
            BY_KEY[r["key"]].label,
            r["rows"],
            med if med is not None else r.get("error", "failed"),
            " / ".join(f"{t:.3g}" for t in r.get("times_s", [])) or None,
            round(r["rows"] / med) if med else None,
            _rss(r, alone),
            to_floor(r),
            _verdict(r),
        ]

    headers = ["Variant", "Entity rows", "Median s", "Runs s", "Rows/s", "Peak RSS MB", "× floor (paired)", "Values"]
    headline = [r for r in results if r["key"] in HEADLINE]
    headline.sort(key=lambda r: (HEADLINE.index(r["key"]), r["rows"]))
    tries = [r for r in results if r["key"] not in HEADLINE]
    f = raw["fixture"]
    ratio = f"{ratio_value:.2f}×" if ratio_value else "n/a"
    stock = f"{stock_value:.1f}×" if stock_value else "n/a"
    goal = "meets" if ratio_value and ratio_value <= GOAL_RATIO else "misses"
    others = sorted({(r["key"] == FILE_STORE, r["other_cpu_cores"]) for r in results if "other_cpu_cores" in r})
    parts = [
        f"Entity frame: {rows:,} rows drawn with replacement from the trips of {f['cities']} synthetic cities × "
        f"{f['days']} days ({f['trips']:,} trips; {raw['duplicate_entity_rows']:,} rows repeat another's keys and "
        f"time). Feature tables: zone_hour {f['table_rows']['zone_hour.parquet']:,} rows, city_hour "
        f"{f['table_rows']['city_hour.parquet']:,} rows. Service `{SERVICE}`, `full_feature_names=True`: "
        f"{len(raw['feature_columns'])} features from 3 joins (pickup zone, dropoff zone, city; TTL 3 h, 3 h, 2 h).",
        "",
        "Timed: entity DataFrame in → result out. All variants at the full size run in one worker process, "
        "round-robin: 1 warm-up round, then 3 timed rounds, each running every variant once, so that load from "
        "other processes falls on all of them alike; the median is shown, and × floor is the median of the "
        "per-round ratios to the floor. Peak RSS: the variant run once more, "
        "alone in a fresh process, sampled during the call (entity frame and libraries included; shown for the "
        "headline and the variants that matter for the choice). The file store runs in workers of its own, "
        "watched by the parent: past the memory or time limit it is stopped and recorded. "
        "Values: every row compared with Feast's stock DuckDB store's on `row_id`, tolerance 1e-9.",
        "",
        "### Headline",
        "",
        table(headers, [line(r) for r in headline]),
        "",
        f"**cityml's offline store / raw ASOF = {ratio}** (median of the per-round ratios) — {goal} the "
        f"≤ {GOAL_RATIO:g}× goal. Feast's stock DuckDB store: {stock}.",
        "",
        "### Tried first: settings and inputs of Feast's stock DuckDB store, and the floor's output formats",
        "",
        table(headers, [line(r) for r in tries]),
        "",
        "Other processes on the machine used on average "
        + ", ".join(f"{c} cores ({'file-store worker' if fs else 'round-robin worker'})" for fs, c in others)
        + " while the workers ran.",
    ]
    notes = []
    for r in results:
        text = "; ".join(x for x in (r.get("note", ""), r.get("error", "")) if x)
        if text:
            notes.append(f"- `{r['key']}` at {r['rows']:,} rows: {text}.")
    file_runs = [r for r in results if r["key"] == FILE_STORE and r.get("median_s")]
    if file_runs and rows > file_runs[-1]["rows"]:
        r = max(file_runs, key=lambda x: x["rows"])
        scale = rows / r["rows"]
        grown = (r.get("peak_rss_mb", 0) - r.get("rss_start_mb", 0)) * scale / 1024
        notes.append(
            f"- `{FILE_STORE}` at {rows:,} rows, linear extrapolation from {r['rows']:,} (not run): "
            f"≈ {_duration(r['median_s'] * scale)} and ≈ {grown:,.0f} GB above the process baseline."
        )
    if notes:
        parts += ["", "Notes:", "", *notes]
    parts += ["", *_READING]
    if quick:
        parts += ["", "_`--quick` run: small sizes, for smoke-testing; not a measurement._"]
    return "\n".join(parts)


# What the numbers come from, read in Feast 0.67's code (feast/infra/offline_stores/ibis.py, dask.py).
_READING = [
    "How each path works:",
    "",
    "- **Feast DuckDB** (`ibis.point_in_time_join`): per view, an inner join of the entity rows with every "
    "feature row of the same key whose timestamp is in [t − TTL, t], `ROW_NUMBER()` over a string "
    "`entity_row_id` (keys and the timestamp cast to text) to keep the latest, then a left join back on that "
    "string. Three views, three rounds of this.",
    "- **Raw ASOF**: one sort-merge `ASOF LEFT JOIN` per view; the TTL is a `CASE` on the matched timestamp.",
    "- **Feast file (dask)**: per view, a merge of the entity rows with *all* feature rows of their key, "
    "filtered afterwards — memory grows with rows × history per key. Entity rows with no feature row within a "
    "TTL are dropped (not returned with NULLs), and so are rows repeating another's keys and timestamp.",
    "- **cityml's offline store** (`cityml.features.feast_asof.AsofDuckDBOfflineStore`, chosen in "
    "`feature_store.yaml`): "
    "a subclass of Feast's DuckDB store whose `get_historical_features` runs the floor's SQL, generated from "
    "the feature views, so training keeps calling `store.get_historical_features(features=service, ...)`. "
    "What it adds to the floor: Feast's checks and plumbing, the UTC conversion of the entity timestamps, and "
    "the de-duplication of feature rows by created timestamp that Feast's semantics require.",
]


if __name__ == "__main__":
    worker(sys.argv[1:])
