"""Train one city's model for one target, end to end: features → fit → evaluate → register → gate."""

from __future__ import annotations

import logging
import time
from datetime import datetime
from typing import Any

import numpy as np

from cityml.catalog import load_catalog
from cityml.naming import model_name
from cityml.profile import PROFILE_FILE, build_profile, day_segments
from cityml.registry import client, load_champion
from cityml.settings import Settings
from training.datasets import build_training_set
from training.fit import DEFAULT_PARAMS, RatePerKm, fit_lgbm, mae, predict, time_split
from training.registry import experiment_id, git_sha, set_champion, tag_version

log = logging.getLogger(__name__)

MIN_TRAIN_ROWS = 500


def _decide(challenger_mae: float, champion_mae: float | None) -> tuple[bool, str]:
    """The skeleton gate: promote when there is no champion or the challenger is at least as good."""
    if champion_mae is None:
        return True, "no champion yet"
    if challenger_mae <= champion_mae:
        return True, f"challenger MAE {challenger_mae:.4g} <= champion MAE {champion_mae:.4g} on the same test window"
    return False, f"challenger MAE {challenger_mae:.4g} > champion MAE {champion_mae:.4g} on the same test window"


def train_city(
    settings: Settings,
    city: str,
    target: str,
    *,
    until: datetime | None = None,
    run_label: str = "cli",
) -> dict[str, Any]:
    """Fit, evaluate, register and gate ``<target>-<city>``. Returns a JSON-safe summary."""
    import mlflow
    import mlflow.lightgbm
    from mlflow.models import infer_signature

    started = time.perf_counter()
    load_catalog(settings.catalog_path).get(city)  # unknown city: a clear error before any work
    name = model_name(target, city)
    ts = build_training_set(settings, city, target, until=until)
    if ts.rows < MIN_TRAIN_ROWS:
        return {
            "model": name,
            "city": city,
            "target": target,
            "status": "skipped",
            "reason": f"{ts.rows} trips with labels, fewer than {MIN_TRAIN_ROWS}",
        }

    split = time_split(ts.frame)
    booster = fit_lgbm(split, ts.features, ts.label)
    y = split.test[ts.label].to_numpy()
    pred = predict(booster, split.test)
    baseline = RatePerKm.fit(split.train, ts.label)
    metrics: dict[str, float] = {
        "mae": mae(y, pred),
        "baseline_mae": mae(y, baseline.predict(split.test)),
        "best_iteration": float(booster.best_iteration),
        "train_rows": float(len(split.train)),
        "test_rows": float(len(split.test)),
    }

    c = client(settings)
    current = load_champion(c, name)
    champion_mae = None
    if current is not None and set(current.features) <= set(split.test.columns):
        champion_mae = mae(y, predict(current.booster, split.test))
        metrics["champion_mae"] = champion_mae
    promote, reason = _decide(metrics["mae"], champion_mae)

    stamps = ts.frame["event_timestamp"]
    tags = {
        "city": city,
        "target": target,
        "feature_service": ts.feature_service,
        "git_sha": git_sha(),
        "data_start": stamps.min().isoformat(),
        "data_end": stamps.max().isoformat(),
        "test_start": split.test["event_timestamp"].min().isoformat(),
        "train_rows": len(split.train),
        "dag_run_id": run_label,
    }
    with mlflow.start_run(experiment_id=experiment_id(c, settings), run_name=name) as run:
        mlflow.set_tags(tags)
        mlflow.log_params({**DEFAULT_PARAMS, "features": ",".join(ts.features), "baseline_rate_per_km": baseline.rate})
        mlflow.log_metrics(metrics)
        train_pred = predict(booster, split.train)
        segments = day_segments(split.train["is_weekend"])
        mlflow.log_dict(build_profile(split.train[ts.features], train_pred, segments), PROFILE_FILE)
        example = split.test[ts.features].head(5)
        info = mlflow.lightgbm.log_model(
            booster,
            name="model",
            signature=infer_signature(example, predict(booster, example)),
            input_example=example,
            registered_model_name=name,
        )
    version = str(info.registered_model_version)
    tag_version(c, name, version, {**tags, "mae": metrics["mae"], "baseline_mae": metrics["baseline_mae"]})
    if promote:
        set_champion(c, name, version, reason)
    else:
        c.set_model_version_tag(name, version, "promotion", f"rejected: {reason}")
    log.info("%s v%s: mae %.4g baseline %.4g -> %s", name, version, metrics["mae"], metrics["baseline_mae"], reason)
    return {
        "model": name,
        "city": city,
        "target": target,
        "status": "promoted" if promote else "rejected",
        "version": version,
        "reason": reason,
        "run_id": run.info.run_id,
        "metrics": {k: round(v, 6) for k, v in metrics.items() if np.isfinite(v)},
        "seconds": round(time.perf_counter() - started, 2),
    }


def train_many(
    settings: Settings,
    cities: list[str],
    targets: list[str],
    *,
    until: datetime | None = None,
    run_label: str = "cli",
) -> list[dict[str, Any]]:
    """Train every (city, target); one failing city is reported and does not stop the others."""
    results = []
    for city in cities:
        for target in targets:
            try:
                results.append(train_city(settings, city, target, until=until, run_label=run_label))
            except Exception as exc:
                log.exception("training %s-%s failed", target, city)
                results.append(
                    {
                        "model": model_name(target, city),
                        "city": city,
                        "target": target,
                        "status": "failed",
                        "reason": f"{type(exc).__name__}: {exc}",
                    }
                )
    return results
