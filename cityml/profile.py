"""Reference profiles: what a model's training data looked like, in a form drift checks can read.

A profile is saved with each model version. It holds, per feature, the quantile bin edges of the
training values and the share of rows in each bin (plus the missing share), the row count and the
distribution of the model's test predictions. Training builds it; monitoring compares live values
against it with the same binning, so neither needs the training data again.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

N_BINS = 10
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
    v = pd.to_numeric(values, errors="coerce").to_numpy(dtype="float64")
    edges = _edges(v)
    return {
        "edges": edges,
        "shares": bin_shares(v, edges),
        "missing_share": float(np.isnan(v).mean()) if v.size else 0.0,
        "mean": float(np.nanmean(v)) if np.isfinite(v).any() else None,
    }


def _section(features: pd.DataFrame, predictions: np.ndarray) -> dict[str, Any]:
    return {
        "rows": len(features),
        "features": {name: feature_profile(features[name]) for name in features.columns},
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
