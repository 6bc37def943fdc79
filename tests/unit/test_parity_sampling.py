"""The gate's parity sample: few pickup hours (each costs a materialization), trips in time order."""

import pandas as pd

from training.parity import _pick


def _trips(hours: int, per_hour: int) -> pd.DataFrame:
    start = pd.Timestamp("2026-03-01", tz="UTC")
    stamps = [start + pd.Timedelta(hours=h, minutes=m) for h in range(hours) for m in range(per_hour)]
    return pd.DataFrame({"trip_id": range(len(stamps)), "pickup_ts": stamps})


def test_gate_sample_comes_from_at_most_the_given_hours() -> None:
    picked = _pick(_trips(48, 10), sample=20, hours=4, seed=0)
    assert len(picked) == 20
    assert picked["pickup_ts"].dt.floor("h").nunique() <= 4
    assert picked["pickup_ts"].is_monotonic_increasing


def test_cli_sample_is_drawn_from_any_hour() -> None:
    picked = _pick(_trips(48, 10), sample=40, hours=None, seed=0)
    assert picked["pickup_ts"].dt.floor("h").nunique() > 4


def test_sample_larger_than_the_chosen_hours_takes_all_their_trips() -> None:
    picked = _pick(_trips(48, 3), sample=20, hours=2, seed=1)
    assert len(picked) == 6 and picked["trip_id"].is_unique
