"""Training throughput: N synthetic cities × 2 targets end to end (features → registered, gated
versions) against the sum of the bare LightGBM fits inside that run.

Each configuration gets a fresh home: trips are generated, feature tables built and the Feast
repo applied (setup, reported apart), then ``training.pipeline.train_fleet`` builds the training
sets, trains the two global models and every (city, target) with the default gate. The run's
phases and every model's per-stage seconds say where the time beyond the fits goes.
"""

from __future__ import annotations

import contextlib
import io
import logging
import tempfile
import time
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from bench import report

STAGES = ("dataset", "fit", "evaluate", "gate_models", "parity", "register")


def synthetic_home(home: Path, names: list[str], days: int, trips_per_day: int) -> Any:
    """A cityml home of ``names`` (random synthetic cities): trips generated, feature tables built, Feast applied."""
    from cityml.catalog import load_catalog
    from cityml.data.synth import generate_city, random_catalog
    from cityml.data.trips import write_trips
    from cityml.features.feature_tables import build_feature_tables
    from cityml.features.featurestore import apply
    from cityml.settings import Settings

    catalog_path = home / "cities.yaml"
    catalog_path.write_text(yaml.safe_dump(random_catalog(names, seed=3, trips_per_day=trips_per_day)))
    settings = Settings(home=home / "var", catalog_path=catalog_path)
    start = date.today() - timedelta(days=days)
    for city in load_catalog(catalog_path).cities:
        write_trips(settings.trips_dir, generate_city(city, start, days, seed=5))
    build_feature_tables(settings.trips_dir, settings.features_dir)
    apply(settings)
    return settings


def measure(cities: int, days: int, trips_per_day: int, workers: int) -> dict[str, Any]:
    from training.context import RunContext
    from training.fleet import train_fleet

    names = [f"bench-{i:03d}" for i in range(cities)]
    with tempfile.TemporaryDirectory(prefix="cityml-bench-") as tmp:
        t0 = time.perf_counter()
        settings = synthetic_home(Path(tmp), names, days, trips_per_day)
        setup_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        phases: dict[str, float] = {}
        with contextlib.redirect_stdout(io.StringIO()):
            ctx = RunContext.open(settings, run_label="bench")
            results = train_fleet(ctx, names, ["eta", "price"], workers=workers, phases=phases)
        wall = time.perf_counter() - t0
        trips = sum(len(pd.read_parquet(f, columns=["trip_id"])) for f in settings.trips_dir.rglob("*.parquet"))
    stages = {s: sum(r.timings.get(s, 0.0) for r in results) for s in STAGES}
    statuses: dict[str, int] = {}
    for r in results:
        statuses[r.status] = statuses.get(r.status, 0) + 1
    return {
        "cities": cities,
        "days": days,
        "trips_per_day": trips_per_day,
        "workers": workers,
        "models": len(results),
        "setup_s": round(setup_s, 1),
        "trips": trips,
        "phases_s": {k: round(v, 1) for k, v in phases.items()},
        "global_fit_s": round(sum(r.timings.get("fit", 0.0) for r in results if r.city == "global"), 1),
        "wall_s": round(wall, 1),
        "fit_sum_s": round(stages["fit"], 1),
        "ratio": round(wall / stages["fit"], 2) if stages["fit"] else None,
        "stages_s": {k: round(v, 1) for k, v in stages.items()},
        "statuses": statuses,
    }


def run(cities: int, days: int, trips_per_day: list[int], workers: list[int]) -> report.Section:
    logging.getLogger().setLevel(logging.WARNING)
    rows = [measure(cities, days, size, w) for size in trips_per_day for w in workers]
    lines = [
        "| cities × targets | trips a day per city | trips | workers | end to end (s) | sum of bare fits (s) | ratio | "
        "setup (s) | outcomes |",
        "|---|---:|---:|---|---:|---:|---:|---:|---|",
    ]
    for r in rows:
        outcomes = ", ".join(f"{k} {v}" for k, v in sorted(r["statuses"].items()))
        lines.append(
            f"| {r['cities']} × 2 (+2 global) | {r['trips_per_day']:,} | {r['trips']:,} | {r['workers']} | "
            f"{r['wall_s']} | {r['fit_sum_s']} | **{r['ratio']}×** | {r['setup_s']} | {outcomes} |"
        )
    lines += [
        "",
        "Where the end-to-end time goes: the run's phases (wall seconds), then the city phase's stages "
        "(seconds summed over the city models; with workers > 1 they overlap, so they add up to about "
        "workers × the phase).",
        "",
        "| trips a day | workers | training sets, all cities, one join per target | global models (their fits) "
        "| city models |",
        "|---:|---|---:|---:|---:|",
    ]
    for r in rows:
        ph = r["phases_s"]
        lines.append(
            f"| {r['trips_per_day']:,} | {r['workers']} | {ph.get('datasets')} | {ph.get('global')} "
            f"({r['global_fit_s']}) | {ph.get('cities')} |"
        )
    lines += [
        "",
        "| trips a day | workers | " + " | ".join(STAGES[1:]) + " |",
        "|---:|---|" + "---:|" * (len(STAGES) - 1),
    ]
    for r in rows:
        city = {s: round(r["stages_s"][s] - (r["global_fit_s"] if s == "fit" else 0.0), 1) for s in STAGES[1:]}
        cells = " | ".join(str(city[s]) for s in STAGES[1:])
        lines.append(f"| {r['trips_per_day']:,} | {r['workers']} | {cells} |")
    body = "\n".join(lines) + (
        f"\n\n{days} days of trips per city, at each size. At 300 trips a day a city's fit takes well under a "
        "second, so the fixed costs of a model (registering it, its parity check) weigh heavily; the default "
        "gate: parity on 20 trips from 4 pickup "
        "hours, once per city (ETA and price share their features). *End to end* is `train_fleet` from stored "
        "features to registered, gated versions; the ratio divides it by the summed wall time of the "
        "`lightgbm.train` calls inside it. LightGBM threads per fit: 2 ÷ workers (2 for the global models, "
        "fitted in the parent before the city models)."
    )
    return report.Section(key="throughput", title="Training throughput", body=body, raw={"runs": rows})
