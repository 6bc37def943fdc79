"""The global unit's memory and fit stay bounded however many cities the catalog holds."""

from __future__ import annotations

import pandas as pd

from training.fit import time_split
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
