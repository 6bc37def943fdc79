from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from cityml.profile import bin_shares, build_profile, day_segments, pick_segment
from monitoring.drift import compare_files, feature_scores, verdict
from monitoring.stats import psi


def test_bin_shares_sum_to_one_and_cover_the_tails() -> None:
    shares = bin_shares(np.array([-5.0, 0.5, 1.5, 2.5, 99.0, np.nan]), [1.0, 2.0])
    assert shares == pytest.approx([2 / 5, 1 / 5, 2 / 5])


def test_same_distribution_is_stable_and_a_shift_is_drift() -> None:
    rng = np.random.default_rng(0)
    ref = pd.DataFrame({"x": rng.normal(0, 1, 20_000), "y": rng.uniform(0, 1, 20_000)})
    profile = build_profile(ref, np.zeros(len(ref)))
    same = feature_scores(profile, pd.DataFrame({"x": rng.normal(0, 1, 5_000), "y": rng.uniform(0, 1, 5_000)}))
    moved = feature_scores(profile, pd.DataFrame({"x": rng.normal(1.0, 1, 5_000), "y": rng.uniform(0, 1, 5_000)}))
    assert same["x"]["verdict"] == "stable" and same["y"]["verdict"] == "stable"
    assert moved["x"]["verdict"] == "drift" and moved["y"]["verdict"] == "stable"


def test_missing_values_count_as_drift() -> None:
    ref = pd.DataFrame({"x": np.arange(1000.0)})
    profile = build_profile(ref, np.zeros(1000))
    cur = pd.DataFrame({"x": np.where(np.arange(1000) % 2 == 0, np.nan, np.arange(1000.0))})
    assert feature_scores(profile, cur)["x"]["verdict"] == "drift"


def test_psi_and_verdicts() -> None:
    assert psi([0.5, 0.5], [0.5, 0.5]) == pytest.approx(0)
    assert verdict(0.05) == "stable" and verdict(0.15) == "watch" and verdict(0.3) == "drift"


def test_compare_files_and_its_errors(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    ref, cur = tmp_path / "ref.parquet", tmp_path / "cur.parquet"
    pd.DataFrame({"a": rng.normal(0, 1, 2000), "s": ["x"] * 2000}).to_parquet(ref)
    pd.DataFrame({"a": rng.normal(2, 1, 500)}).to_parquet(cur)
    doc = compare_files(ref, cur)
    assert doc["verdict"] == "drift" and doc["drifted"] == ["a"]
    with pytest.raises(FileNotFoundError, match=r"missing\.parquet"):
        compare_files(ref, tmp_path / "missing.parquet")
    bad = tmp_path / "bad.parquet"
    bad.write_text("not parquet")
    with pytest.raises(ValueError, match=r"bad\.parquet"):
        compare_files(ref, bad)


def test_a_weekend_window_is_compared_with_weekends() -> None:
    rng = np.random.default_rng(2)
    weekend = pd.Series(np.repeat([0, 1], [5000, 2000]))
    speed = np.where(weekend == 1, rng.normal(30, 3, 7000), rng.normal(20, 3, 7000))
    ref = pd.DataFrame({"speed": speed, "is_weekend": weekend})
    profile = build_profile(ref, np.zeros(7000), day_segments(weekend))
    saturday = pd.DataFrame({"speed": rng.normal(30, 3, 500), "is_weekend": 1})
    name, segment = pick_segment(profile, saturday["is_weekend"])
    assert name == "weekend"
    assert feature_scores(segment, saturday)["speed"]["verdict"] == "stable"
    assert feature_scores(profile, saturday)["speed"]["verdict"] == "drift"
    assert pick_segment(profile, pd.Series([0, 1]))[0] == "all"


def test_trip_history_medians_are_scored_but_not_judged() -> None:
    rng = np.random.default_rng(3)
    # A city's first weeks: medians of a few trips, spread wide; live: medians of a full window.
    name = "zone_pair_history__pair_median_speed_kmh"
    ref = pd.DataFrame({name: rng.normal(25, 8, 5000), "x": rng.normal(0, 1, 5000)})
    profile = build_profile(ref, np.zeros(5000))
    live = feature_scores(profile, pd.DataFrame({name: rng.normal(25, 1, 800), "x": rng.normal(0, 1, 800)}))
    assert live[name]["psi"] >= 0.25 and live[name]["verdict"] == "history"
    assert live["x"]["verdict"] == "stable"


def test_a_drift_run_reads_the_global_models_profile_once_for_every_city_it_serves(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Cities without a champion of their own are judged against the global model's profile, which holds a
    segment per city: a run over many cities reads it (and its scale, and its champion) once, not per city."""
    from types import SimpleNamespace

    import monitoring.drift as drift
    from cityml.settings import Settings

    cities = [f"town-{i}" for i in range(6)]
    fleet = SimpleNamespace(name="eta-global", version="3", run_id="r1", tags={})
    reads: list[str] = []

    def champion(c: object, name: str) -> object:
        reads.append(f"champion {name}")
        return fleet if name == "eta-global" else None

    def profile(c: object, mv: object) -> dict[str, object]:
        reads.append("profile")
        return {"segments": {f"city={c}": {"features": {}, "prediction": {}} for c in cities}}

    def scale(c: object, mv: object) -> object:
        reads.append("scale")
        return SimpleNamespace(covers=lambda city: city in cities)

    monkeypatch.setattr(drift, "champion", champion)
    monkeypatch.setattr(drift, "read_profile", profile)
    monkeypatch.setattr(drift, "version_scale", scale)
    monkeypatch.setattr(drift, "read_predictions", lambda *a, **k: [])
    settings = Settings(home=tmp_path)
    memo: dict[tuple[str, ...], object] = {}
    since = datetime(2026, 3, 1, tzinfo=UTC)
    results = [drift.drift_model(settings, city, "eta", since, c=object(), memo=memo) for city in cities]
    assert [r["model"] for r in results] == ["eta-global"] * len(cities)
    assert [r["reference"] for r in results] == [f"city={c}" for c in cities]  # each city its own segment
    assert reads.count("profile") == 1 and reads.count("scale") == 1 and reads.count("champion eta-global") == 1
    assert reads.count("champion eta-town-0") == 1  # a city's own champion is still asked for, once
    # A city model's profile serves its city alone: read, not kept for the rest of the run (2,000 of them).
    own = SimpleNamespace(name="eta-town-0", version="1", run_id="r2", tags={})
    monkeypatch.setattr(drift, "champion", lambda c, name: own if name == "eta-town-0" else fleet)
    drift.drift_model(settings, "town-0", "eta", since, c=object(), memo=memo)
    assert reads.count("profile") == 2 and not any(key[1] == "eta-town-0" for key in memo if key[0] == "profile")


def test_a_corrupt_retrain_request_file_starts_cooldowns_over_instead_of_stopping_drift(tmp_path: Path) -> None:
    from cityml.settings import Settings
    from monitoring.drift import REQUESTS_FILE, _record_requests, _requested

    settings = Settings(home=tmp_path)
    path = settings.reports_dir / "drift" / REQUESTS_FILE
    path.parent.mkdir(parents=True)
    for broken in ("{not json", '["alpha"]', '{"alpha": "yesterday"}', '{"alpha": 5}'):
        path.write_text(broken)
        assert _requested(settings) == {}
    now = datetime(2026, 12, 7, tzinfo=UTC)
    _record_requests(settings, ["alpha"], now)  # and the next run writes it whole again
    assert _requested(settings) == {"alpha": now}


def test_reports_made_in_the_same_second_keep_their_own_names_in_time_order() -> None:
    from cityml.reports import report_stem

    first = datetime(2026, 12, 7, 10, 15, 0, 1, tzinfo=UTC)
    second = datetime(2026, 12, 7, 10, 15, 0, 2, tzinfo=UTC)
    later = datetime(2026, 12, 7, 10, 15, 1, tzinfo=UTC)
    stems = [report_stem("drift", t) for t in (first, second, later)]
    assert len(set(stems)) == 3 and sorted(stems) == stems
