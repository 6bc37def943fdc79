"""Scoring: the metrics every model version carries, and the baselines it must beat."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

if TYPE_CHECKING:
    from cityml.registry import LoadedModel


def metrics(y: np.ndarray, yhat: np.ndarray) -> dict[str, float]:
    """MAE, RMSE, MAPE (on labels > 0), and the median and 90th percentile absolute error."""
    y = np.asarray(y, dtype="float64")
    yhat = np.asarray(yhat, dtype="float64")
    err = np.abs(y - yhat)
    pos = y > 0
    return {
        "mae": float(err.mean()),
        "rmse": float(np.sqrt(np.mean((y - yhat) ** 2))),
        "mape": float(np.mean(err[pos] / y[pos])) if pos.any() else float("nan"),
        "p50_abs_error": float(np.quantile(err, 0.5)),
        "p90_abs_error": float(np.quantile(err, 0.9)),
    }


def mae(y: np.ndarray, yhat: np.ndarray) -> float:
    return float(np.mean(np.abs(np.asarray(y, dtype="float64") - np.asarray(yhat, dtype="float64"))))


@dataclass
class RatePerKm:
    """Baseline: the city's median label per km times the distance."""

    rate: float

    @classmethod
    def fit(cls, frame: pd.DataFrame, label: str) -> RatePerKm:
        dist = frame["distance_km"].to_numpy(dtype="float64")
        ok = dist > 0.1
        rate = float(np.median(frame[label].to_numpy(dtype="float64")[ok] / dist[ok])) if ok.any() else 0.0
        return cls(rate)

    def predict(self, frame: pd.DataFrame) -> np.ndarray:
        return self.rate * frame["distance_km"].to_numpy(dtype="float64")


@dataclass
class LinearOnDistance:
    """Baseline: least squares ``a + b × distance`` (a flag fall plus a rate)."""

    intercept: float
    slope: float

    @classmethod
    def fit(cls, frame: pd.DataFrame, label: str) -> LinearOnDistance:
        x = frame["distance_km"].to_numpy(dtype="float64")
        y = frame[label].to_numpy(dtype="float64")
        ok = np.isfinite(x) & np.isfinite(y)
        if ok.sum() < 2 or np.ptp(x[ok]) == 0:
            return cls(float(np.nanmedian(y)) if ok.any() else 0.0, 0.0)
        slope, intercept = np.polyfit(x[ok], y[ok], 1)
        return cls(float(intercept), float(slope))

    def predict(self, frame: pd.DataFrame) -> np.ndarray:
        return self.intercept + self.slope * frame["distance_km"].to_numpy(dtype="float64")


@dataclass
class Median:
    """The naive predictor: the training median. A model that cannot beat it learned nothing."""

    value: float

    @classmethod
    def fit(cls, frame: pd.DataFrame, label: str) -> Median:
        return cls(float(frame[label].median()))

    def predict(self, frame: pd.DataFrame) -> np.ndarray:
        return np.full(len(frame), self.value)


def score_model(model: LoadedModel | None, frame: pd.DataFrame, label: str) -> float | None:
    """MAE of a registered model on a frame, or None when it is absent, needs other features or cannot serve a
    city of the frame (a fleet model that never learned it)."""
    from cityml.modeling import CITY_FEATURE

    if model is None or frame.empty or not set(model.features) <= set(frame.columns):
        return None
    if CITY_FEATURE in frame.columns and not all(model.serves(c) for c in frame[CITY_FEATURE].astype(str).unique()):
        return None
    return mae(frame[label].to_numpy(), model.predict(frame))
