"""The global unit's memory and fit stay bounded however many cities the catalog holds."""

from __future__ import annotations

import gc
import weakref
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pandas as pd
import pytest

from cityml.settings import Settings
from training.datasets import TrainingSet
from training.fit import Split, time_split
from training.global_model import _bounded


def _frame(n: int) -> pd.DataFrame:
    return pd.DataFrame({"event_timestamp": pd.date_range("2026-01-01", periods=n, freq="min", tz="UTC"), "y": n})


def test_a_city_past_its_share_gives_an_even_sample_in_time_order_and_its_whole_test_window() -> None:
    split = time_split(_frame(10_000))
    bounded = _bounded(split, 700)
    assert len(bounded.train) == 700 and len(bounded.valid) == 150  # the validation window in proportion
    assert bounded.train["event_timestamp"].is_monotonic_increasing
    # Spread over the window, not its first or last rows.
    assert bounded.train["event_timestamp"].min() < split.train["event_timestamp"].quantile(0.05)
    assert bounded.train["event_timestamp"].max() > split.train["event_timestamp"].quantile(0.95)
    pd.testing.assert_frame_equal(bounded.test, split.test)
    assert _bounded(split, 700).train.equals(bounded.train)  # the same rows every run


def test_a_city_within_its_share_is_left_as_it_is() -> None:
    split = time_split(_frame(1_000))
    assert _bounded(split, 700) is split


def test_a_test_window_past_its_share_is_sampled_evenly_and_the_training_rows_stay_whole() -> None:
    split = time_split(_frame(10_000))
    bounded = _bounded(split, 7_000, test_cap=300)
    assert bounded.train.equals(split.train) and bounded.valid.equals(split.valid)
    assert len(bounded.test) == 300 and bounded.test["event_timestamp"].is_monotonic_increasing
    assert bounded.test["event_timestamp"].min() < split.test["event_timestamp"].quantile(0.05)
    assert bounded.test["event_timestamp"].max() > split.test["event_timestamp"].quantile(0.95)
    both = _bounded(split, 700, test_cap=300)
    assert (len(both.train), len(both.valid), len(both.test)) == (700, 150, 300)


def test_no_citys_joined_frame_is_alive_when_the_global_fit_starts(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """The unit keeps its bounded copies of each city's rows, not the city's joined frame: a view of it (even an
    empty one) kept the whole catalog's trips alive through the fit (~4 GB at 1,000 cities)."""
    import training.global_model as unit

    cities = [f"c{i}" for i in range(6)]
    frames: list[weakref.ref[np.ndarray]] = []  # the memory of each city's joined rows

    def memory_of(frame: pd.DataFrame) -> weakref.ref[np.ndarray]:
        """The array that holds ``frame``'s numbers: alive as long as any view of them is (an empty slice too)."""
        values = frame["distance_km"].to_numpy()
        while values.base is not None:
            values = values.base
        return weakref.ref(values)

    def city_sets(ctx: Any, catalog: list[str], target: str, sets: Any) -> Iterator[tuple[str, TrainingSet]]:
        rng = np.random.default_rng(0)
        for city in catalog:
            n = 400
            frame = pd.DataFrame(
                {
                    "trip_id": [f"{city}-{i}" for i in range(n)],
                    "event_timestamp": pd.date_range("2026-01-01", periods=n, freq="h", tz="UTC"),
                    "distance_km": rng.uniform(1, 10, n),
                }
            ).assign(duration_s=lambda f: f.distance_km * 100)
            frames.append(memory_of(frame))
            yield city, TrainingSet(frame, ["distance_km"], "duration_s", "eta_v1")

    class FitStarted(Exception):
        pass

    alive: list[int] = []

    def fit_model(split: Split, *args: Any, **kwargs: Any) -> None:
        gc.collect()
        alive.append(sum(ref() is not None for ref in frames))
        assert len(split.train) == 6 * 280  # every city's training window, stacked
        raise FitStarted

    monkeypatch.setattr(unit, "_city_sets", city_sets)
    monkeypatch.setattr(unit, "fit_model", fit_model)
    ctx = SimpleNamespace(settings=Settings(home=tmp_path), catalog=SimpleNamespace(slugs=cities))
    with pytest.raises(FitStarted):
        unit.train_global(ctx, "eta")  # type: ignore[arg-type]
    assert alive == [0]
