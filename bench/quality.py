"""Model quality: cityml's champions against the plain LightGBM a user would fit in a notebook.

Two worlds, each through cityml's real path (import or generate → feature tables → ``feast apply``
→ ``training.pipeline.train_fleet`` with its gate → the registry):

- **NYC**: the real TLC sample in ``shared/data`` (March 2019), imported by the NYC TLC importer.
- **Synthetic fleet**: ``cityml.data.synth.random_catalog`` cities at two sizes (trips a day).

Every number of a city and target is measured on the same test window: the last 15% of that
city's trips by pickup time (``training.fit.time_split``), the window the gate scores on.

*Reference*: a plain LightGBM — distance, local hour, weekday, pickup and dropoff zone as
categories, default parameters (``LGBMRegressor()``: squared error, 100 trees) — fitted on every
trip before the test window (train + validation windows, 85%), and, as the issue's notebook may
have done, on the training window alone (70%).

*Variants* re-fit on the same training set with one of cityml's modelling choices switched back,
so each choice is judged on the same split: no zone categories, no area pair (the catalog's
zone areas: NYC's boroughs), no trip-history features (the
``_v1`` FeatureService's columns only), no blend candidate with members reading the request's
features alone, one label scale instead of the blend's candidates (per km,
or the label as is), plain L1 instead of Huber, no refit on train + validation. ``as landed``
switches all of them back. The
variants are standalone city models; the served one may be *pooled* (a correction to the global
model, chosen by the validation window), which the fleet runs also count with pooling switched off.
"""

from __future__ import annotations

import contextlib
import io
import logging
import tempfile
from dataclasses import dataclass
from datetime import date, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import yaml

from bench import report

if TYPE_CHECKING:
    from training.results import TrainResult

NYC_SAMPLE = Path(__file__).resolve().parents[2] / "shared" / "data" / "nyc_tlc_sample_2019-03.csv"
REF_FEATURES = ["distance_km", "local_hour", "local_weekday", "pickup_zone", "dropoff_zone"]
TARGET_GAIN = 0.05  # the goal: the NYC champion at least 5% below the reference
VARIANTS = (
    "no zones",
    "no area pair",
    "no history",
    "no narrow members",
    "per km only",
    "label as is",
    "L1 loss",
    "no refit",
    "as landed",
)


@dataclass
class Row:
    world: str
    city: str
    target: str
    test_rows: int
    reference: float
    reference_70: float
    champion: float | None  # the city's own champion, if the gate promoted it
    fleet: float | None  # the global model's MAE on the city's test window
    served: str  # which model serves the city
    served_mae: float | None
    variants: dict[str, float]

    @property
    def gain(self) -> float | None:
        return None if self.served_mae is None else 1 - self.served_mae / self.reference


def _mae(y: np.ndarray, p: np.ndarray) -> float:
    return float(np.mean(np.abs(np.asarray(y, dtype="float64") - np.asarray(p, dtype="float64"))))


def _reference(split: Any, label: str) -> tuple[float, float]:
    import lightgbm as lgb

    from cityml.modeling import model_frame

    y = split.test[label].to_numpy()
    out = []
    for frame in (pd.concat([split.train, split.valid]), split.train):
        ref = lgb.LGBMRegressor(verbosity=-1).fit(model_frame(frame, REF_FEATURES), frame[label])
        out.append(_mae(y, np.asarray(ref.predict(model_frame(split.test, REF_FEATURES)))))
    return out[0], out[1]


def _variants(split: Any, features: list[str], label: str, settings: Any) -> dict[str, float]:
    from cityml.features.featurestore import is_history_feature
    from cityml.features.request_features import AREA_PAIR, REQUEST_FEATURES, ZONE_FEATURES
    from cityml.modeling import LabelScale
    from training.fit import fit_model

    history = [f for f in features if is_history_feature(f)]
    y = split.test[label].to_numpy()
    kinds = list(settings.train_label_scales)

    def score(feats: list[str], scales: list[str], objective: str, refit: bool, narrow: bool = True) -> float:
        fitted = fit_model(
            split,
            feats,
            label,
            [LabelScale(k) for k in scales],  # type: ignore[arg-type]
            refit=refit,
            params={"objective": objective},
            threads=settings.train_threads,
            blended=settings.train_blend,
            narrow=REQUEST_FEATURES if narrow and settings.train_narrow_members else (),
        )
        return _mae(y, fitted.predict(split.test))

    no_zones = [f for f in features if f not in ZONE_FEATURES]
    no_history = [f for f in features if f not in history]
    landed = [f for f in no_zones if f not in history and f not in (AREA_PAIR, "is_holiday")]
    return {
        "no zones": score(no_zones, kinds, "huber", True),
        "no area pair": score([f for f in features if f != AREA_PAIR], kinds, "huber", True),
        "no history": score(no_history, kinds, "huber", True),
        "no narrow members": score(features, kinds, "huber", True, narrow=False),
        "per km only": score(features, ["per_km"], "huber", True),
        "label as is": score(features, ["none"], "huber", True),
        "L1 loss": score(features, kinds, "regression_l1", True),
        "no refit": score(features, kinds, "huber", False),
        "as landed": score(landed, ["none"], "regression_l1", False, narrow=False),
    }


def _measure(
    world: str, settings: Any, cities: list[str], variants: bool
) -> tuple[list[Row], dict[str, dict[str, int]]]:
    """Train the fleet through the real pipeline, then score everything on each city's test window.

    Returns the rows and the city models' outcomes (status and whether pooled), first with pooling
    switched off (on a registry of its own) and then as configured.
    """
    from cityml.naming import GLOBAL, TARGETS, model_name
    from cityml.registry import client, load_champion
    from training.context import RunContext
    from training.datasets import build_training_sets
    from training.fit import time_split
    from training.fleet import train_fleet

    alone = settings.model_copy(
        update={
            "train_pool": False,
            "mlflow_tracking_uri": f"sqlite:///{settings.home / 'mlflow-no-pooling.db'}",
            "mlflow_artifact_root": (settings.home / "mlartifacts-no-pooling").as_uri(),
        }
    )
    outcomes = {}
    with contextlib.redirect_stdout(io.StringIO()):
        if len(cities) > 1:
            before = train_fleet(RunContext.open(alone, run_label="bench"), cities, list(TARGETS))
            outcomes["without pooling"] = _count(before)
        ctx = RunContext.open(settings, run_label="bench")
        results = train_fleet(ctx, cities, list(TARGETS), with_global=len(cities) > 1)
    outcomes["with pooling"] = _count(results)
    c = client(settings)
    rows = []
    for target in TARGETS:
        sets = build_training_sets(settings, cities, target)
        fleet = load_champion(c, model_name(target, GLOBAL))
        for city in cities:
            ts = sets[city]
            if ts.rows < 100:
                continue
            split = time_split(ts.frame)
            y = split.test[ts.label].to_numpy()
            own = load_champion(c, model_name(target, city))
            champion = _mae(y, own.predict(split.test)) if own is not None else None
            fleet_mae = (
                _mae(y, fleet.predict(split.test.assign(city=city)))
                if fleet is not None and fleet.serves(city)
                else None
            )
            served, served_mae = (
                ("city (pooled)" if own.base is not None else "city", champion)
                if own is not None
                else ("global", fleet_mae)
                if fleet_mae is not None
                else ("none", None)
            )
            ref85, ref70 = _reference(split, ts.label)
            rows.append(
                Row(
                    world,
                    city,
                    target,
                    len(split.test),
                    ref85,
                    ref70,
                    champion,
                    fleet_mae,
                    served,
                    served_mae,
                    _variants(split, ts.features, ts.label, settings) if variants else {},
                )
            )
    return rows, outcomes


def _count(results: list[TrainResult]) -> dict[str, int]:
    counts = {"city models": 0, "promoted": 0, "pooled": 0}
    for r in results:
        if r.city == "global":
            continue
        counts["city models"] += 1
        counts["promoted"] += r.status == "promoted"
        counts["pooled"] += r.status == "promoted" and r.pooled
    return counts


def _nyc(tmp: Path) -> tuple[list[Row], dict[str, dict[str, int]]]:
    from cityml.data.importers.batch import import_files
    from cityml.features.feature_tables import build_feature_tables
    from cityml.features.featurestore import apply
    from cityml.settings import Settings

    if not NYC_SAMPLE.exists():
        raise FileNotFoundError(f"the real NYC sample {NYC_SAMPLE} is missing (shared/data beside the repo)")
    settings = Settings(home=tmp / "nyc", gate_parity_sample=0)
    import_files(settings, "nyc-tlc", [NYC_SAMPLE], "nyc")
    build_feature_tables(settings.trips_dir, settings.features_dir)
    apply(settings)
    return _measure("NYC sample", settings, ["nyc"], variants=True)


def _fleet(tmp: Path, cities: int, trips_per_day: int, days: int) -> tuple[list[Row], dict[str, dict[str, int]]]:
    from cityml.catalog import load_catalog
    from cityml.data.synth import generate_city, random_catalog
    from cityml.data.trips import write_trips
    from cityml.features.feature_tables import build_feature_tables
    from cityml.features.featurestore import apply
    from cityml.settings import Settings

    home = tmp / f"fleet-{trips_per_day}"
    home.mkdir(parents=True)
    names = [f"q{trips_per_day}-{i:02d}" for i in range(cities)]
    catalog_path = home / "cities.yaml"
    catalog_path.write_text(yaml.safe_dump(random_catalog(names, seed=11, trips_per_day=trips_per_day)))
    settings = Settings(home=home / "var", catalog_path=catalog_path, gate_parity_sample=0)
    start = date.today() - timedelta(days=days)
    for city in load_catalog(catalog_path).cities:
        write_trips(settings.trips_dir, generate_city(city, start, days, seed=13))
    build_feature_tables(settings.trips_dir, settings.features_dir)
    apply(settings)
    # Variants refit every model six times: measured at the small size only, where it takes seconds.
    return _measure(f"synthetic, {trips_per_day:,} trips/day", settings, names, variants=trips_per_day <= 300)


def _fmt(value: float | None) -> str:
    if value is None:
        return "—"
    return f"{value:,.3f}" if abs(value) < 100 else f"{value:,.1f}"


def run(quick: bool, cities: int | None) -> report.Section:
    logging.getLogger().setLevel(logging.WARNING)
    n = cities or (3 if quick else 8)
    days = 14 if quick else 30
    sizes = [300] if quick else [300, 3000]
    rows: list[Row] = []
    outcomes: dict[str, dict[str, dict[str, int]]] = {}
    with tempfile.TemporaryDirectory(prefix="cityml-quality-") as tmp:
        nyc, _ = _nyc(Path(tmp))
        rows += nyc
        for size in sizes:
            fleet_rows, outcomes[f"{size:,}"] = _fleet(Path(tmp), n, size, days)
            rows += fleet_rows

    failures: list[str] = []
    lines = [
        "| data | city | target | test trips | reference (85%) | reference (70%) | cityml served | by "
        "| gain vs reference | city model | global model | " + " | ".join(VARIANTS) + " |",
        "|---|---|---|---:|---:|---:|---:|---|---:|---:|---:|" + "---:|" * len(VARIANTS),
    ]
    for r in rows:
        gain = "—" if r.gain is None else f"**{r.gain:+.1%}**"
        cells = " | ".join(_fmt(r.variants.get(v)) for v in VARIANTS)
        lines.append(
            f"| {r.world} | {r.city} | {r.target} | {r.test_rows:,} | {_fmt(r.reference)} | {_fmt(r.reference_70)} | "
            f"{_fmt(r.served_mae)} | {r.served} | {gain} | {_fmt(r.champion)} | {_fmt(r.fleet)} | {cells} |"
        )
        if r.world == "NYC sample" and (r.gain is None or r.gain < TARGET_GAIN):
            failures.append(
                f"quality: NYC {r.target} served MAE {_fmt(r.served_mae)} is not {TARGET_GAIN:.0%} below the "
                f"reference's {_fmt(r.reference)}"
            )
        worse = r.served != "global" and r.fleet is not None and r.champion is not None and r.champion > r.fleet
        if worse:
            failures.append(f"quality: {r.city} {r.target} served by a city model worse than the global one")
    own = "; ".join(
        f"{size} trips/day: "
        + ", ".join(
            f"{how} {c['promoted']} of {c['city models']} city models promoted"
            + (f" ({c['pooled']} of them pooled)" if c["pooled"] else "")
            for how, c in by.items()
        )
        for size, by in outcomes.items()
    )
    body = "\n".join(lines) + (
        f"\n\nMAE on each city's test window (seconds for ETA, the city's currency for price). *cityml served* is "
        "what `/v1/predict` would answer with: the city's champion, or the global model where the gate kept the "
        "city model out. Gain is against the 85% reference. Variant columns switch one of cityml's choices back "
        f"(see `bench/quality.py`). Synthetic fleet: {n} random cities per size, {days} days each. {own}."
    )
    if failures:
        body += "\n\nNot met in this run:\n" + "\n".join(f"- {f}" for f in failures)
    raw = {"rows": [r.__dict__ | {"gain": r.gain} for r in rows], "outcomes": outcomes}
    return report.Section(key="quality", title="Model quality", body=body, raw=raw, failures=failures)
