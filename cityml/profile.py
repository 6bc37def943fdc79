"""Reference profiles: what a model's training data looked like, in a form drift checks can read.

A profile is saved with each model version. It holds, per numeric feature, a quantile sketch (every percentile
of the training values, finer in the tails), their 10-bin shares, missing share, mean, standard deviation and
count; per categorical feature (zones, the fleet model's city) the share of each category, the rarest beyond
``MAX_CATEGORIES`` pooled as ``__other__``; the same for the model's predictions; the row count; and (training adds
it) ``test_error``, the sketch of the model's absolute errors on its test window, whose mean is its test MAE. Training
builds it; monitoring (``monitoring.stats``) compares live values against it, so neither needs the training
data again. Profiles saved before the sketches (10 bins only) still read: they allow PSI alone.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

N_BINS = 10
# The sketch's probabilities: every percentile, and finer in both tails, where skewed features (durations, fares)
# stretch out and a coarse sketch would misplace the mass of the last percent.
QUANTILE_PROBS: list[float] = sorted(
    {0.0, 0.001, 0.002, 0.005, *(i / 100 for i in range(1, 100)), 0.995, 0.998, 0.999, 1.0}
)
MAX_CATEGORIES = 100
OTHER = "__other__"
MIN_SEGMENT_ROWS = 200
PROFILE_FILE = "reference_profile.json"


def bin_shares(values: np.ndarray, edges: list[float]) -> list[float]:
    """Share of the non-missing values in each bin: (-inf, e1], (e1, e2], ..., (e_last, inf)."""
    v = np.asarray(values, dtype="float64")
    v = v[~np.isnan(v)]
    counts = np.bincount(np.searchsorted(np.asarray(edges), v, side="left"), minlength=len(edges) + 1)
    total = counts.sum()
    return (counts / total).tolist() if total else [0.0] * (len(edges) + 1)


def sorted_quantiles(present: np.ndarray, probs: np.ndarray | list[float]) -> np.ndarray:
    """Quantiles of an already sorted array, as ``np.quantile`` (linear) gives them, without sorting again."""
    position = np.asarray(probs, dtype="float64") * (len(present) - 1)
    below = np.floor(position).astype(int)
    above = np.minimum(below + 1, len(present) - 1)
    return present[below] + (present[above] - present[below]) * (position - below)


def feature_profile(values: pd.Series) -> dict[str, Any]:
    """A numeric feature's reference: 10 bins, a quantile sketch (``QUANTILE_PROBS``) and its moments."""
    v = pd.to_numeric(values, errors="coerce").to_numpy(dtype="float64")
    present = np.sort(v[np.isfinite(v)])  # one sort serves the bins, the sketch and the moments
    if present.size == 0:
        edges: list[float] = []
        shares = [0.0]
    else:
        edges = sorted({float(q) for q in sorted_quantiles(present, np.linspace(0, 1, N_BINS + 1)[1:-1])})
        below = np.searchsorted(present, edges, side="right")
        shares = (np.diff(np.concatenate([[0], below, [present.size]])) / present.size).tolist()
    return {
        "edges": edges,
        "shares": shares,
        "missing_share": float(1 - present.size / v.size) if v.size else 0.0,
        "mean": float(present.mean()) if present.size else None,
        "quantiles": sorted_quantiles(present, QUANTILE_PROBS).tolist() if present.size else [],
        "quantile_probs": QUANTILE_PROBS,
        "std": float(present.std()) if present.size else 0.0,
        "count": int(present.size),
    }


def category_profile(values: pd.Series) -> dict[str, Any]:
    """A categorical feature's reference: the share of each category among the non-missing values."""
    present = values.dropna().astype(str)
    counts = present.value_counts()
    top = counts.iloc[:MAX_CATEGORIES]
    shares = {str(k): float(n / max(len(present), 1)) for k, n in top.items()}
    shares[OTHER] = float(counts.iloc[MAX_CATEGORIES:].sum() / max(len(present), 1))
    return {
        "kind": "categorical",
        "shares": shares,
        "missing_share": float(values.isna().mean()) if len(values) else 0.0,
        "count": len(present),
    }


def is_numeric(values: pd.Series) -> bool:
    return pd.api.types.is_numeric_dtype(values) and not pd.api.types.is_bool_dtype(values)


def column_profile(values: pd.Series) -> dict[str, Any]:
    return feature_profile(values) if is_numeric(values) else category_profile(values)


def _section(features: pd.DataFrame, predictions: np.ndarray) -> dict[str, Any]:
    return {
        "rows": len(features),
        "features": {name: column_profile(features[name]) for name in features.columns},
        "prediction": feature_profile(pd.Series(predictions)),
    }


def build_profile(
    features: pd.DataFrame, predictions: np.ndarray, segments: dict[str, np.ndarray] | None = None
) -> dict[str, Any]:
    """The reference profile of a training matrix and the model's predictions on it.

    ``segments`` (name → row mask) adds the same profile for slices of the rows, e.g. weekdays
    and weekends, so that a drift check of a Saturday can compare with Saturdays.
    """
    profile = _section(features, predictions)
    profile["segments"] = {
        name: _section(features[mask], predictions[mask])
        for name, mask in (segments or {}).items()
        if int(np.sum(mask)) >= MIN_SEGMENT_ROWS
    }
    return profile


def day_segments(is_weekend: pd.Series) -> dict[str, np.ndarray]:
    """Weekday and weekend row masks: traffic differs enough between them to need two references."""
    weekend = is_weekend.to_numpy() == 1
    return {"weekday": ~weekend, "weekend": weekend}


def pick_segment(profile: dict[str, Any], is_weekend: pd.Series) -> tuple[str, dict[str, Any]]:
    """The reference slice matching a live window: all-weekend, all-weekday, or everything."""
    values = set(pd.to_numeric(is_weekend, errors="coerce").dropna().astype(int))
    segments = profile.get("segments", {})
    name = "weekend" if values == {1} else "weekday" if values == {0} else "all"
    if name in segments:
        return name, segments[name]
    return "all", profile
