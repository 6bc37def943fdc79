"""Reference profiles: what a model's training data looked like, in a form drift checks can read.

A profile is saved with each model version. It holds, per numeric feature, a quantile sketch (the 0th to
100th percentiles of the training values), their 10-bin shares, missing share, mean, standard deviation and
count; per categorical feature (zones, the fleet model's city) the share of each category, the rarest beyond
``MAX_CATEGORIES`` pooled as ``__other__``; the same for the model's predictions; and the row count. Training
builds it; monitoring (``monitoring.stats``) compares live values against it, so neither needs the training
data again. Profiles saved before the sketches (10 bins only) still read: they allow PSI alone.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

N_BINS = 10
N_QUANTILES = 101  # the 0th..100th percentiles: the reference CDF to within 1%
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


def _edges(values: np.ndarray) -> list[float]:
    v = values[~np.isnan(values)]
    if v.size == 0:
        return []
    qs = np.quantile(v, np.linspace(0, 1, N_BINS + 1)[1:-1])
    return sorted(set(float(q) for q in qs))


def feature_profile(values: pd.Series) -> dict[str, Any]:
    """A numeric feature's reference: 10 bins, a 101-quantile sketch and its moments."""
    v = pd.to_numeric(values, errors="coerce").to_numpy(dtype="float64")
    v[np.isinf(v)] = np.nan
    edges = _edges(v)
    present = v[~np.isnan(v)]
    return {
        "edges": edges,
        "shares": bin_shares(v, edges),
        "missing_share": float(np.isnan(v).mean()) if v.size else 0.0,
        "mean": float(present.mean()) if present.size else None,
        "quantiles": np.quantile(present, np.linspace(0, 1, N_QUANTILES)).tolist() if present.size else [],
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
