"""The global unit of a retrain: the fleet model ``<target>-global``, always learned from every city of the
catalog (never from a run's subset), gated against its champion and registered."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from cityml.features.request_features import CITY_LOCAL_FEATURES
from cityml.modeling import CITY_FEATURE, LabelScale
from cityml.naming import CITY_MAE_METRIC, GLOBAL, model_name
from training.city import MIN_FIT_ROWS, Stopwatch, city_sets, window
from training.context import RunContext
from training.datasets import TrainingSet
from training.evaluate import Median, RatePerKm, mae, metrics, score_model
from training.fit import Split, fit_model, time_split
from training.gate import decide_global
from training.publish import publish, registration
from training.registry import feast_registry_version, git_sha
from training.results import TrainResult

log = logging.getLogger(__name__)


def _city_sets(
    ctx: RunContext, catalog: list[str], target: str, sets: dict[str, TrainingSet] | None
) -> Iterator[tuple[str, TrainingSet]]:
    """Every catalog city's training set of ``target``: the run's (when it built them all), else joined
    ``train_chunk_cities`` cities at a time, each chunk dropped once its rows are kept: the unit's memory is one
    chunk's trips plus the bounded rows it keeps of each city, whatever the size of the catalog."""
    if sets is not None and set(sets) == set(catalog):
        yield from ((city, sets[city]) for city in catalog)
        return
    size = ctx.settings.train_chunk_cities
    for i in range(0, len(catalog), size):
        chunk = catalog[i : i + size]
        built = city_sets(ctx, chunk, [target])
        for city in chunk:
            yield city, built.pop(city)[target]


def _bounded(split: Split, cap: int, test_cap: int | None = None) -> Split:
    """A city's split with at most ``cap`` training rows (and the validation window in proportion) and at most
    ``test_cap`` test rows (None: all of them), each sampled evenly over its window and kept in time order."""
    test_cap = len(split.test) if test_cap is None else test_cap
    if len(split.train) <= cap and len(split.test) <= test_cap:
        return split
    valid_cap = max(1, round(cap * len(split.valid) / len(split.train))) if len(split.train) > cap else len(split.valid)

    def sample(frame: pd.DataFrame, n: int) -> pd.DataFrame:
        # Copies: a slice would keep the city's whole joined frame alive as long as the run holds the split.
        return (frame if len(frame) <= n else frame.sample(n=n, random_state=0).sort_index()).copy()

    return Split(sample(split.train, cap), sample(split.valid, valid_cap), sample(split.test, test_cap))


@dataclass
class _Kept:
    """What the unit keeps of each city as the catalog streams past: bounded copies of its windows (stacked for
    the fit) and what the baselines need of them, computed while the city's split is at hand."""

    first: TrainingSet | None = None  # the first kept city's set, rows dropped: its features, label and service
    windows: dict[str, list[pd.DataFrame]] = field(default_factory=lambda: {"train": [], "valid": [], "test": []})
    rates: dict[str, float] = field(default_factory=dict)
    parts: list[tuple[str, int]] = field(default_factory=list)  # (city, test rows), in stacking order
    baseline: list[float] = field(default_factory=list)
    medians: list[np.ndarray] = field(default_factory=list)


def _collect(
    ctx: RunContext,
    name: str,
    catalog: list[str],
    target: str,
    sets: dict[str, TrainingSet] | None,
    cap: int,
    test_cap: int,
) -> _Kept:
    """Each catalog city's bounded windows and baselines. A function of its own so that no name outlives it: the
    last city's joined frame (a loop's variable) would otherwise stay alive through the fit."""
    kept = _Kept()
    for city, ts in _city_sets(ctx, catalog, target, sets):
        if ts.rows < MIN_FIT_ROWS:
            continue
        city_split = _bounded(time_split(ts.frame.drop(columns=["trip_id"], errors="ignore")), cap, test_cap)
        per_km = RatePerKm.fit(city_split.train, ts.label)
        rate = per_km.rate
        if not (np.isfinite(rate) and rate > 0):  # no distances: its label cannot be made unit-free
            log.warning("%s: %s has no positive %s per km; left out", name, city, ts.label)
            continue
        if kept.first is None:
            # A copy: ``iloc[:0]`` is a view that keeps the city's whole joined frame alive (a list of those kept
            # every city's: the whole catalog's trips, ~4 GB at 1,000 cities).
            kept.first = TrainingSet(ts.frame.iloc[:0].copy(), ts.features, ts.label, ts.feature_service)
        test_y = city_split.test[ts.label].to_numpy()
        kept.baseline.append(mae(test_y, per_km.predict(city_split.test)))
        kept.medians.append(Median.fit(city_split.train, ts.label).predict(city_split.test))
        for attr, frames in kept.windows.items():
            frames.append(getattr(city_split, attr).assign(**{CITY_FEATURE: city}))
        kept.parts.append((city, len(city_split.test)))
        kept.rates[city] = rate
    return kept


def train_global(ctx: RunContext, target: str, sets: dict[str, TrainingSet] | None = None) -> TrainResult:
    """The fleet model ``<target>-global``: every catalog city's rows, the city as a categorical feature.

    It learns a currency-free label (``per_km_city`` in ``cityml.modeling``: the label per km over
    the city's median label per km in its training window) and converts back per city, so a
    rupiah fare and a euro fare teach it the same thing. Zones are left out: their names are
    city-local. Each city contributes its own time windows, so every city's test window is held
    out. The new version is promoted when there is no champion or it is at least as good on the
    union of the test windows (of the cities the champion serves). ``sets``: the run's training sets
    of this target by city, when it built them for every catalog city already; otherwise they are joined
    ``train_chunk_cities`` cities at a time. Past ``global_max_train_rows`` training rows, each city gives an equal
    share of them (:func:`_bounded`): a thousand cities' trips teach a fleet prior little more than a million do,
    and neither memory nor the fit grows with the catalog beyond that; likewise its test windows past
    ``global_max_test_rows`` (each city's MAE is then measured on an even sample of its window).
    """
    started = time.perf_counter()
    name = model_name(target, GLOBAL)
    catalog = sorted(ctx.catalog.slugs)
    cities = max(len(catalog), 1)
    cap = max(MIN_FIT_ROWS, ctx.settings.global_max_train_rows // cities)
    test_cap = max(MIN_FIT_ROWS, ctx.settings.global_max_test_rows // cities)
    kept = _collect(ctx, name, catalog, target, sets, cap, test_cap)
    first = kept.first
    if first is None:
        return TrainResult(name, GLOBAL, target, "skipped", "no city has enough rows")

    def stack(frames: list[pd.DataFrame]) -> pd.DataFrame:
        out = pd.concat(frames, ignore_index=True)
        frames.clear()  # the cities' copies go as soon as they are stacked
        out[CITY_FEATURE] = pd.Categorical(out[CITY_FEATURE], categories=catalog)
        return out

    windows, parts, rates = kept.windows, kept.parts, kept.rates
    split = Split(stack(windows["train"]), stack(windows["valid"]), stack(windows["test"]))
    bounds = np.cumsum([0, *(n for _, n in parts)])
    features = [*(f for f in first.features if f not in CITY_LOCAL_FEATURES), CITY_FEATURE]
    label = first.label
    clock = Stopwatch()
    scale = LabelScale("per_km_city", rates)
    settings = ctx.settings
    fitted = fit_model(split, features, label, [scale], refit=settings.train_refit, threads=settings.train_threads)
    clock.lap("fit")
    y = split.test[label].to_numpy()
    # Each city's test window as the city unit will score it (same rows, the city as a plain value);
    # in stacking order, so the pieces make up the fleet's test predictions.
    test = split.test
    preds = [
        fitted.predict(test.iloc[a:b].assign(city=city))
        for (city, _), a, b in zip(parts, bounds[:-1], bounds[1:], strict=True)
    ]
    pred = np.concatenate(preds)
    m = metrics(y, pred)
    m["baseline_mae"] = float(np.mean(kept.baseline))
    m["median_mae"] = mae(y, np.concatenate(kept.medians))
    per_city = {city: mae(y[a:b], p) for (city, _), a, b, p in zip(parts, bounds[:-1], bounds[1:], preds, strict=True)}
    held = ctx.champion(name)
    # Compared on the cities both serve: a champion cannot be judged on a city it never learned.
    both = np.concatenate([np.full(n, held is None or held.serves(city)) for city, n in parts])
    champion_mae = score_model(held, split.test[both], label)
    decision = decide_global(mae(y[both], pred[both]), champion_mae, settings)
    if champion_mae is not None:
        m["champion_mae"] = champion_mae
    m.update(best_iteration=float(fitted.rounds), train_rows=float(len(split.train)))
    tags = {
        "city": GLOBAL,
        "target": target,
        "feature_service": first.feature_service,
        "git_sha": git_sha(),
        "feast_registry": feast_registry_version(settings),
        "train_rows": len(split.train),
        # How many; which ones are the rates of label_scale.json. A list outgrows a version tag (5,000 characters
        # in MLflow's registry) at about 450 cities.
        "cities": len(parts),
        "dag_run_id": ctx.run_label,
        **window(split),
    }
    # Each city's test MAE is logged too: realized accuracy compares a city served by the fallback with it.
    logged = {**m, **{f"{CITY_MAE_METRIC}{city}": v for city, v in per_city.items()}}
    reg = registration(name, fitted, split, features, logged, tags, decision, "", {}, label, pred)
    result = TrainResult(
        name,
        GLOBAL,
        target,
        "promoted" if decision.promote else "rejected",
        decision.summary,
        checks=decision.reasons,
        per_city_mae=per_city,
        metrics={k: round(v, 6) for k, v in m.items() if np.isfinite(v)},
        seconds=round(time.perf_counter() - started, 2),
        timings=clock.laps,
    )
    return publish(ctx, result, reg)
