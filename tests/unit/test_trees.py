"""The flat trees and their compiled loop give LightGBM's raw scores bit for bit, refuse what they cannot
walk, and the check that guards them catches a tree that differs."""

from __future__ import annotations

import gc

import lightgbm as lgb
import numpy as np
import pandas as pd
import pytest

from cityml import trees
from cityml.modeling import LabelScale, model_frame
from cityml.registry import LoadedModel
from serving.hot_trees import HotTrees

ZONES = [f"z{i:02d}" for i in range(40)]  # more than 32: category bitsets of two words


def _frame(n: int, seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    f = pd.DataFrame(
        {
            "distance_km": rng.uniform(0.2, 20, n),
            "local_hour": rng.integers(0, 24, n).astype(float),
            "pickup_zone": rng.choice(ZONES, n),
            "dropoff_zone": rng.choice(ZONES, n),
            "signed": rng.normal(0, 1, n),
            "sparse": np.where(rng.random(n) < 0.5, 0.0, rng.uniform(1, 5, n)),
        }
    )
    f.loc[rng.random(n) < 0.15, "signed"] = np.nan  # NaN seen in training: a NaN missing type
    f.loc[rng.random(n) < 0.1, "pickup_zone"] = None
    return f


FEATURES = ["distance_km", "local_hour", "pickup_zone", "dropoff_zone", "signed", "sparse"]


def _label(f: pd.DataFrame) -> np.ndarray:
    zone = f["pickup_zone"].fillna("z00").str[1:].astype(int)
    return (f["distance_km"] * 100 + zone * 7 + f["signed"].fillna(2) * 30 + f["sparse"] * 11).to_numpy()


def _train(features: list[str], seed: int = 0, rounds: int = 40, **params: object) -> lgb.Booster:
    f = _frame(3000, seed)
    base = {"objective": "huber", "verbosity": -1, "num_threads": 1, "min_data_in_leaf": 5, "num_leaves": 31}
    data = lgb.Dataset(model_frame(f, features), _label(f))
    return lgb.train({**base, **params}, data, num_boost_round=rounds)


def _rows(booster: lgb.Booster, n: int, seed: int) -> np.ndarray:
    """Rows as served: categories as codes, with NaN, zeros, negatives, unseen codes and huge values."""
    f = model_frame(_frame(n, seed + 100), booster.feature_name())
    x = np.column_stack(
        [f[c].cat.codes.replace(-1, np.nan).to_numpy(float) if f[c].dtype == "category" else f[c] for c in f]
    )
    rng = np.random.default_rng(seed)
    odd = np.array([0.0, -0.0, -1.0, -0.5, 1e-40, np.nan, np.inf, -np.inf, 2.0**31, 1e300, 40.0, 63.0, 64.0])
    mask = rng.random(x.shape) < 0.1
    x[mask] = rng.choice(odd, int(mask.sum()))
    return x


@pytest.mark.parametrize(
    "params",
    [
        {},
        {"objective": "regression_l1", "zero_as_missing": True},  # a "zero" missing type
        {"objective": "regression", "use_missing": False},  # no missing type: NaN is 0
        {"objective": "quantile", "alpha": 0.7, "max_cat_to_onehot": 64},  # one-hot categorical splits
    ],
)
def test_the_loop_gives_lightgbms_raw_scores_bit_for_bit(params: dict[str, object]) -> None:
    booster = _train(FEATURES, **params)
    flat = trees.flatten([booster.model_to_string()], [None])
    x = _rows(booster, 3000, 1)
    want = booster.predict(x, num_threads=1)
    assert np.array_equal(flat.raw(x)[0], want)
    assert np.array_equal(flat.raw(x[:3])[0], want[:3])  # a few rows: the served case


def test_a_blends_members_on_their_own_columns_and_best_iterations() -> None:
    wide = _train(FEATURES, seed=1)
    narrow = _train(["pickup_zone", "signed", "distance_km"], seed=2, rounds=30)
    constant = lgb.train(  # every tree one leaf
        {"objective": "huber", "verbosity": -1, "num_threads": 1},
        lgb.Dataset(model_frame(_frame(200, 3), FEATURES), np.full(200, 42.0)),
        num_boost_round=5,
    )
    wide.best_iteration = 17  # early stopping kept 17 of 40 rounds: the rest do not predict
    model = LoadedModel(
        name="eta-x",
        version="1",
        booster=wide,
        tags={},
        run_id=None,
        scale=LabelScale("per_km"),
        others=[(narrow, LabelScale("none")), (constant, LabelScale("per_sqrt_km"))],
    )
    f = _frame(4000, 9)
    columns = {c: f[c].to_numpy() for c in FEATURES}
    before = model.predict_columns(columns, len(f))
    model.flat = model.flatten()
    assert model.flat.members == 3 and model.flat.nbytes > 0
    after = model.predict_columns(columns, len(f))
    assert np.array_equal(before, after, equal_nan=True)
    for n in (1, 2, 7):
        one = {c: v[:n] for c, v in columns.items()}
        assert np.array_equal(model.predict_columns(one, n), before[:n], equal_nan=True)


@pytest.mark.parametrize(
    ("params", "why"),
    [
        ({"objective": "poisson"}, "objective 'poisson'"),
        ({"objective": "regression", "reg_sqrt": True}, "objective 'regression sqrt'"),  # squares its output
        ({"objective": "multiclass", "num_class": 3}, "objective 'multiclass"),
        ({"linear_tree": True}, "linear trees"),
        ({"boosting": "rf", "bagging_freq": 1, "bagging_fraction": 0.5}, "averaged output"),
    ],
)
def test_what_the_loop_does_not_walk_is_refused_saying_why(params: dict[str, object], why: str) -> None:
    features = ["distance_km", "local_hour"]
    f = _frame(500, 4)
    y = np.abs(_label(f)) % 3 if params.get("objective") == "multiclass" else np.abs(_label(f))
    booster = lgb.train(
        {"verbosity": -1, "num_threads": 1, **params}, lgb.Dataset(model_frame(f, features), y), num_boost_round=3
    )
    with pytest.raises(trees.Unsupported, match=why):
        trees.flatten([booster.model_to_string()], [None])


def test_the_check_catches_a_tree_that_differs_from_lightgbm() -> None:
    booster = _train(FEATURES)
    flat = trees.flatten([booster.model_to_string()], [None])
    lightgbm = [lambda x: booster.predict(x, num_threads=1)]
    assert trees.mismatch(flat, lightgbm, len(FEATURES)) is None
    numeric = np.flatnonzero((flat.decision & 1) == 0)
    off = flat.threshold.copy()
    off[numeric[0]] = np.nextafter(off[numeric[0]], np.inf)  # one threshold, one step off
    wrong = trees.mismatch(trees.FlatTrees(**{**flat.__dict__, "threshold": off}), lightgbm, len(FEATURES))
    assert wrong is not None and "member 0" in wrong


def test_hot_trees_flatten_a_model_once_in_the_background_and_leave_the_rest_on_lightgbm() -> None:
    good = LoadedModel(name="eta-a", version="1", booster=_train(FEATURES), tags={}, run_id=None)
    f = _frame(300, 5)
    poisson = lgb.train(
        {"objective": "poisson", "verbosity": -1, "num_threads": 1},
        lgb.Dataset(model_frame(f, FEATURES), np.abs(_label(f))),
        num_boost_round=3,
    )
    other = LoadedModel(name="eta-b", version="1", booster=poisson, tags={}, run_id=None)
    hot = HotTrees()
    for _ in range(3):
        hot.want(good)
        hot.want(other)
    assert hot.wait()
    hot.close()
    assert good.flat is not None and other.flat is None
    assert (hot.flattened, hot.unsupported) == (1, 1)


def test_hot_trees_hold_at_most_their_limit_and_a_replaced_model_frees_its_place() -> None:
    booster = _train(FEATURES, rounds=5)
    models = [LoadedModel(name=f"eta-{i}", version="1", booster=booster, tags={}, run_id=None) for i in range(3)]
    hot = HotTrees(limit=2)
    for m in models:
        hot.want(m)
    assert hot.wait()
    assert [m.flat is not None for m in models] == [True, True, False]
    del models[0]  # its city moved to a new version: the old one is freed
    gc.collect()
    hot.want(models[-1])
    assert hot.wait()
    hot.close()
    assert models[-1].flat is not None and hot.flattened == 3


def test_probe_rows_reach_the_splits_where_missing_values_are_handled() -> None:
    """The check's rows are steered down to splits: a flipped default direction on a split that handles
    NaN is caught where random rows alone almost never reach it."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(4000, 8))
    x[rng.random(x.shape) < 0.1] = np.nan
    booster = lgb.train(
        {"objective": "l2", "verbosity": -1, "num_leaves": 31, "num_threads": 1},
        lgb.Dataset(x, np.nan_to_num(x).sum(axis=1)),
        num_boost_round=60,
    )
    flat = trees.flatten([booster.model_to_string()], [None])
    lightgbm = [lambda rows: booster.predict(rows, num_threads=1)]
    nan_splits = np.flatnonzero(((flat.decision & 1) == 0) & (((flat.decision >> 2) & 3) == 2))
    caught = 0
    for k in rng.choice(nan_splits, 10, replace=False):
        decision = flat.decision.copy()
        decision[k] ^= 2
        caught += trees.mismatch(trees.FlatTrees(**{**flat.__dict__, "decision": decision}), lightgbm, 8) is not None
    assert caught >= 5, caught
