"""A retrain's training sets over many cities: held all at once, or a chunk of cities at a time.

``cityml train --cities all`` used to join every city's trips for both targets and hold the result
until the last city was fitted, so its memory grew with the catalog. ``train_fleet`` now joins and
fits ``train_chunk_cities`` cities at a time (``training/fleet.py``). Measured here on synthetic
small cities (30 days × 300 trips a day, the fleet issue's size) through the same function the run
calls (``training.city.city_sets``, both targets): the whole catalog in one join, then chunk by
chunk with each chunk dropped before the next, each in a fresh process so that its peak RSS is its
own. The rows built must be the same.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from bench import report

DAYS = 30
TRIPS_PER_DAY = 300

MEASURE = """
import json, resource, sys, time
from cityml.settings import Settings
from training.city import city_sets
from training.context import RunContext

home, catalog, chunk = sys.argv[1], sys.argv[2], int(sys.argv[3])
ctx = RunContext.open(Settings(home=home, catalog_path=catalog), run_label="bench")
cities = sorted(ctx.catalog.slugs)
started = time.perf_counter()
rows = 0
for i in range(0, len(cities), chunk):
    sets = city_sets(ctx, cities[i : i + chunk], ["eta", "price"])
    rows += sum(ts.rows for by_target in sets.values() for ts in by_target.values())
    del sets
print(json.dumps({"seconds": time.perf_counter() - started, "rows": rows,
                  "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def _prepare(root: Path, cities: int) -> tuple[Path, Path]:
    from bench.throughput import synthetic_home

    settings = synthetic_home(root, [f"s{i:04d}" for i in range(cities)], DAYS, TRIPS_PER_DAY)
    return settings.home, settings.catalog_path


def _measure(home: Path, catalog: Path, chunk: int) -> dict[str, float]:
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    out = subprocess.run(
        [sys.executable, "-c", MEASURE, str(home), str(catalog), str(chunk)],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    return dict(json.loads(out.stdout.strip().splitlines()[-1]))


def run(quick: bool) -> report.Section:
    from cityml.settings import Settings

    cities = 20 if quick else 200
    chunk = min(Settings().train_chunk_cities, cities)
    with tempfile.TemporaryDirectory(prefix="cityml-bench-sets-") as tmp:
        home, catalog = _prepare(Path(tmp), cities)
        whole = _measure(home, catalog, cities)
        chunked = _measure(home, catalog, chunk)
    failures = []
    if whole["rows"] != chunked["rows"]:
        failures.append(f"train_sets: {chunked['rows']:,} rows built in chunks, {whole['rows']:,} at once")
    lines = [
        f"{cities} synthetic cities × {DAYS} days × {TRIPS_PER_DAY} trips a day; training sets of both targets "
        "built by `training.city.city_sets`, each way in a fresh process.",
        "",
        "| how | joins | rows built | wall s | peak RSS MB |",
        "|---|---:|---:|---:|---:|",
        f"| all cities at once (how `cityml train` held them before) | 1 per target | {whole['rows']:,} | "
        f"{whole['seconds']:.1f} | {whole['peak_rss_mb']:,.0f} |",
        f"| {chunk} cities at a time (`CITYML_TRAIN_CHUNK_CITIES`, what it does now) | {-(-cities // chunk)} per "
        f"target | {chunked['rows']:,} | {chunked['seconds']:.1f} | {chunked['peak_rss_mb']:,.0f} |",
        "",
        f"- Peak RSS **{whole['peak_rss_mb'] / chunked['peak_rss_mb']:.1f}× lower** in chunks "
        f"({whole['peak_rss_mb'] / cities:.0f} MB per city held at once); wall time "
        f"{chunked['seconds'] / whole['seconds']:.2f}× the single join.",
    ]
    return report.Section(
        key="train_sets",
        title="Retrain memory: training sets in chunks of cities",
        body="\n".join(lines),
        raw={"cities": cities, "chunk": chunk, "whole": whole, "chunked": chunked},
        failures=failures,
    )
