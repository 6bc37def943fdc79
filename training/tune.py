"""Per-city hyperparameter search: Optuna's TPE sampler under a time budget per model.

Off by default; on with ``cityml train --tune-budget 60`` (or ``CITYML_TUNE_BUDGET_S``, or the
``tune_budget_s`` param of the ``retrain_city_models`` DAG). Each trial fits LightGBM with early
stopping on the **validation** window and is scored by its validation MAE; the test window is
never looked at, so the promotion gate's comparison on it stays fair. cityml's default parameters
are fitted first and kept unless a trial does better on validation. The winning booster is kept
(no refit); its parameters are logged with the version's run and a summary of the search
(trials, seconds, validation MAE against the defaults') is the version's ``tuned`` tag.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from cityml.modeling import LabelScale
from training.fit import DEFAULT_PARAMS, Split, fit_lgbm

if TYPE_CHECKING:
    import lightgbm as lgb
    import optuna

log = logging.getLogger(__name__)

#: Parameters searched, with the ranges a small tabular regression problem needs.
SEARCHED = ("num_leaves", "min_data_in_leaf", "learning_rate", "feature_fraction", "lambda_l2")


@dataclass
class Tuned:
    booster: lgb.Booster
    params: dict[str, Any]
    trials: int
    seconds: float
    valid_mae: float
    default_valid_mae: float

    def summary(self) -> dict[str, Any]:
        """JSON-safe: what was searched, how long, and what it gained on validation."""
        return {
            "trials": self.trials,
            "seconds": round(self.seconds, 2),
            "valid_mae": round(self.valid_mae, 6),
            "default_valid_mae": round(self.default_valid_mae, 6),
            "params": {k: self.params.get(k) for k in SEARCHED},
        }


def _suggest(trial: optuna.Trial) -> dict[str, Any]:
    return {
        "num_leaves": trial.suggest_int("num_leaves", 7, 127, log=True),
        "min_data_in_leaf": trial.suggest_int("min_data_in_leaf", 5, 200, log=True),
        "learning_rate": trial.suggest_float("learning_rate", 0.01, 0.2, log=True),
        "feature_fraction": trial.suggest_float("feature_fraction", 0.5, 1.0),
        "lambda_l2": trial.suggest_float("lambda_l2", 1e-3, 10.0, log=True),
    }


def _valid_mae(booster: lgb.Booster) -> float:
    return float(booster.best_score["valid_0"]["l1"])


def tune(
    split: Split,
    features: list[str],
    label: str,
    budget_s: float,
    *,
    threads: int | None = None,
    max_trials: int = 100,
    seed: int = 7,
    scale: LabelScale | None = None,
) -> Tuned:
    """Search LightGBM parameters for ``budget_s`` seconds (or ``max_trials``); the best booster.

    At least one trial runs, and a trial started before the budget ends runs to its end, so the
    search can overrun the budget by one fit. Every trial learns the label under the same
    ``scale``, so their validation scores compare.
    """
    import optuna

    if budget_s <= 0:
        raise ValueError(f"tune budget must be positive, got {budget_s!r} seconds")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    started = time.perf_counter()
    default = fit_lgbm(split, features, label, threads=threads, scale=scale)
    best: dict[str, Any] = {"booster": default, "mae": _valid_mae(default), "params": dict(DEFAULT_PARAMS)}

    def objective(trial: optuna.Trial) -> float:
        params = _suggest(trial)
        booster = fit_lgbm(split, features, label, params, threads=threads, scale=scale)
        mae = _valid_mae(booster)
        if mae < best["mae"]:  # only the best booster stays in memory
            best.update(booster=booster, mae=mae, params={**DEFAULT_PARAMS, **params})
        return mae

    study = optuna.create_study(direction="minimize", sampler=optuna.samplers.TPESampler(seed=seed))
    # One trial whatever the clock says: on a busy machine the defaults alone can eat the budget,
    # and a "search" of zero trials compares nothing.
    study.optimize(objective, n_trials=1, gc_after_trial=False)
    remaining = budget_s - (time.perf_counter() - started)
    if remaining > 0 and max_trials > 1:
        study.optimize(objective, n_trials=max_trials - 1, timeout=remaining, gc_after_trial=False)
    done = [t for t in study.trials if t.value is not None]
    default_mae = _valid_mae(default)
    log.info("tuned %s in %d trials: valid MAE %.4g (defaults %.4g)", label, len(done), best["mae"], default_mae)
    return Tuned(
        booster=best["booster"],
        params=best["params"],
        trials=len(done),
        seconds=time.perf_counter() - started,
        valid_mae=float(best["mae"]),
        default_valid_mae=default_mae,
    )
