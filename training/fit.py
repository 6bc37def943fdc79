"""Fitting and scoring: time-based splits, LightGBM with early stopping, metrics and baselines."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import lightgbm as lgb
import pandas as pd

DEFAULT_PARAMS: dict[str, Any] = {
    "objective": "regression_l1",  # the gate compares MAE, so fit for it
    "metric": "l1",
    "learning_rate": 0.05,
    "num_leaves": 31,
    "min_data_in_leaf": 20,
    "feature_fraction": 0.9,
    "lambda_l2": 0.0,  # LightGBM's default, named because the tuner searches it
    "bagging_fraction": 0.9,
    "bagging_freq": 1,
    "verbosity": -1,
    "num_threads": 2,
    "seed": 7,
    "deterministic": True,
}
MAX_ROUNDS = 2000
EARLY_STOP = 50


@dataclass
class Split:
    train: pd.DataFrame
    valid: pd.DataFrame
    test: pd.DataFrame


def time_split(frame: pd.DataFrame, valid: float = 0.15, test: float = 0.15) -> Split:
    """Split rows sorted by time into train / validation / test windows, oldest first."""
    n = len(frame)
    a = int(n * (1 - valid - test))
    b = int(n * (1 - test))
    return Split(frame.iloc[:a], frame.iloc[a:b], frame.iloc[b:])


def fit_lgbm(
    split: Split, features: list[str], label: str, params: dict[str, Any] | None = None, threads: int | None = None
) -> lgb.Booster:
    """A LightGBM booster, early-stopped on the validation window."""
    p = {**DEFAULT_PARAMS, **(params or {})}
    if threads:
        p["num_threads"] = threads
    train = lgb.Dataset(split.train[features], split.train[label], free_raw_data=False)
    valid = lgb.Dataset(split.valid[features], split.valid[label], reference=train)
    return lgb.train(
        p,
        train,
        num_boost_round=MAX_ROUNDS,
        valid_sets=[valid],
        callbacks=[lgb.early_stopping(EARLY_STOP, verbose=False)],
    )
