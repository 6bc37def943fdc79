"""Fitting: time-based splits, LightGBM early-stopped on the validation window, the label scale chosen there."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import lightgbm as lgb
import numpy as np
import pandas as pd

from cityml.modeling import LabelScale, blend, model_frame, predict

DEFAULT_PARAMS: dict[str, Any] = {
    # The gate compares MAE. Huber is L1 for large errors (robust to the odd 3-hour trip) and L2
    # near the answer, which trees fit more smoothly; its ``alpha`` is set per fit (see _params).
    # On the NYC sample's validation and test windows it beat plain L1 for both targets
    # (bench/RESULTS.md, quality).
    "objective": "huber",
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


#: A base model's predictions, in label units, for the rows of a frame (pooled fits start from them).
Base = Callable[[pd.DataFrame], np.ndarray]


def _dataset(
    frame: pd.DataFrame,
    features: list[str],
    label: str,
    scale: LabelScale,
    reference: lgb.Dataset | None = None,
    base: Base | None = None,
) -> tuple[lgb.Dataset, np.ndarray]:
    """The LightGBM dataset of ``frame``'s rows, and what the booster has left to learn on them
    (the target less the base's initial score, for a pooled fit)."""
    y, weight = scale.encode(frame[label], frame)
    init = scale.init_score(base(frame), frame) if base is not None else None
    known = np.isfinite(y)
    for extra in (weight, init):
        if extra is not None:
            known &= np.isfinite(extra)
    x = model_frame(frame, features)
    if not known.all():  # e.g. a trip without a distance under a per-km scale: nothing to learn from
        x, y = x[known], y[known]
        weight = None if weight is None else weight[known]
        init = None if init is None else init[known]
    data = lgb.Dataset(x, y, weight=weight, init_score=init, reference=reference, free_raw_data=False)
    return data, y if init is None else y - init


def _params(params: dict[str, Any] | None, threads: int | None, target: np.ndarray) -> dict[str, Any]:
    """LightGBM parameters; Huber's ``alpha`` (where L2 turns into L1) defaults to the median absolute
    deviation of the learned target, so it follows the label's scale (seconds, s/km, rupiah...)."""
    p = {**DEFAULT_PARAMS, **(params or {})}
    if threads:
        p["num_threads"] = threads
    if p["objective"] == "huber" and "alpha" not in (params or {}):
        finite = target[np.isfinite(target)]
        mad = float(np.median(np.abs(finite - np.median(finite)))) if finite.size else 0.0
        p["alpha"] = mad if mad > 0 else 1.0
    return p


def fit_lgbm(
    split: Split,
    features: list[str],
    label: str,
    params: dict[str, Any] | None = None,
    threads: int | None = None,
    scale: LabelScale | None = None,
    base: Base | None = None,
) -> lgb.Booster:
    """A LightGBM booster learning ``label`` under ``scale``, early-stopped on the validation window.

    With ``base``, the booster starts from the base model's predictions (``init_score``) and learns
    a correction to them.
    """
    scale = scale or LabelScale()
    train, residual = _dataset(split.train, features, label, scale, base=base)
    valid, _ = _dataset(split.valid, features, label, scale, reference=train, base=base)
    return lgb.train(
        _params(params, threads, residual),
        train,
        num_boost_round=MAX_ROUNDS,
        valid_sets=[valid],
        callbacks=[lgb.early_stopping(EARLY_STOP, verbose=False)],
    )


@dataclass
class Fitted:
    """The booster(s) to register, how they learned, and what the choice was based on.

    A blend (``others`` not empty) answers the mean of its members' predictions
    (``cityml.modeling.blend``); ``booster`` and ``scale`` are its first member.
    """

    booster: lgb.Booster
    scale: LabelScale
    rounds: int
    refit: bool
    valid_mae: dict[str, float] = field(default_factory=dict)  # per candidate tried, in label units
    base: Base | None = None  # set when the kept candidate is pooled: it learned on the base's predictions
    others: list[tuple[lgb.Booster, LabelScale]] = field(default_factory=list)  # a blend's other members

    @property
    def pooled(self) -> bool:
        return self.base is not None

    @property
    def members(self) -> list[tuple[lgb.Booster, LabelScale]]:
        return [(self.booster, self.scale), *self.others]

    def predict(self, frame: pd.DataFrame) -> np.ndarray:
        start = self.base(frame) if self.base is not None else None
        return blend([predict(b, s, frame, start) for b, s in self.members])


def _once_per_frame(base: Base) -> Base:
    """``base``, asked once per window: every scale and feature set of a pooled fit starts from the same
    predictions of the training and validation windows, and a fleet model's predictions of a big city's
    rows take seconds. The fit's windows live as long as the call, so their ids stay theirs."""
    seen: dict[int, tuple[pd.DataFrame, np.ndarray]] = {}

    def cached(frame: pd.DataFrame) -> np.ndarray:
        hit = seen.get(id(frame))
        if hit is None or hit[0] is not frame:
            hit = seen[id(frame)] = (frame, base(frame))
        return hit[1]

    return cached


@dataclass
class _Candidate:
    valid_mae: float
    valid_pred: np.ndarray
    members: list[tuple[lgb.Booster, dict[str, Any], LabelScale, list[str]]]  # booster, parameters, scale, features
    start: Base | None


def fit_model(
    split: Split,
    features: list[str],
    label: str,
    scales: Sequence[LabelScale],
    *,
    refit: bool = True,
    params: dict[str, Any] | None = None,
    threads: int | None = None,
    base: Base | None = None,
    blended: bool = False,
    narrow: Sequence[str] = (),
) -> Fitted:
    """Fit one early-stopped booster per candidate, keep the one with the lowest validation MAE.

    The candidates are the label scales, each alone and, given a ``base`` (the fleet model's
    predictions), each *pooled*: starting from the base and learning the city's correction to it,
    which is what a small city's few trips can afford. With ``blended`` and several scales, the
    mean of every scale's booster (alone, and pooled) is one more candidate. Given ``narrow``, a
    subset of ``features`` (the request's own, without Feast's), every scale is also fitted on it
    and the mean of all of them, wide and narrow, is one more candidate (``blend_narrow``): trees
    on fewer, less noisy features err differently, and their mean errs less than either where the
    stored features are sparse. The wide members come first, so the version's first booster reads
    every feature. Their validation MAE picks one.

    With ``refit``, the kept configuration is fitted again on the training *and* validation windows
    for as many rounds as early stopping chose, scaled by the extra rows: the validation window is
    the most recent data before the test window, and a city with a month of trips cannot spare it.
    The test window is never looked at, so the gate's comparison on it stays fair.
    """
    if not scales:
        raise ValueError("fit_model needs at least one label scale")
    given = base  # what the registered model starts from: the caller's, not this fit's cache of it
    if base is not None:
        base = _once_per_frame(base)
    y = split.valid[label].to_numpy(dtype="float64")

    def valid_mae(pred: np.ndarray) -> float:
        ok = np.isfinite(pred)
        return float(np.mean(np.abs(y[ok] - pred[ok]))) if ok.any() else float("inf")

    narrow = [f for f in features if f in set(narrow)] if blended else []
    if len(narrow) == len(features):
        narrow = []
    tried: dict[str, _Candidate] = {}
    for start in (None, base) if base is not None else (None,):
        suffix = "" if start is None else "_pooled"

        def fit_each(feats: list[str], start: Base | None = start) -> list[_Candidate]:
            out = []
            for scale in scales:
                # Parameters fixed from the training window, so the refit below learns exactly the same way.
                p = _params(params, threads, _dataset(split.train, feats, label, scale, base=start)[1])
                booster = fit_lgbm(split, feats, label, p, threads, scale, start)
                pred = predict(booster, scale, split.valid, start(split.valid) if start is not None else None)
                out.append(_Candidate(valid_mae(pred), pred, [(booster, p, scale, feats)], start))
            return out

        singles = fit_each(list(features))
        for scale, single in zip(scales, singles, strict=True):
            tried[scale.kind + suffix] = single
        if blended and len(singles) > 1:
            pred = blend([c.valid_pred for c in singles])
            tried["blend" + suffix] = _Candidate(valid_mae(pred), pred, [m for c in singles for m in c.members], start)
        if narrow:
            mixed = singles + fit_each(narrow)
            pred = blend([c.valid_pred for c in mixed])
            parts = [m for c in mixed for m in c.members]
            tried["blend_narrow" + suffix] = _Candidate(valid_mae(pred), pred, parts, start)
    key = min(tried, key=lambda k: tried[k].valid_mae)
    kept = tried[key]
    scores = {k: v.valid_mae for k, v in tried.items()}
    refitted = refit and not split.valid.empty
    both = pd.concat([split.train, split.valid]) if refitted else split.train
    members = []
    rounds = 0
    for booster, p, scale, feats in kept.members:
        n = max(1, booster.best_iteration or booster.current_iteration())
        if refitted:
            n = max(1, round(n * len(both) / max(len(split.train), 1)))
            booster = lgb.train(p, _dataset(both, feats, label, scale, base=kept.start)[0], num_boost_round=n)
        members.append((booster, scale))
        rounds = rounds or n
    (first, scale), others = members[0], members[1:]
    return Fitted(first, scale, rounds, refitted, scores, given if kept.start is not None else None, others)
