"""Drift statistics from a reference sketch agree with scipy on the raw samples, and judge what Evidently judges."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import stats as sp
from scipy.spatial.distance import jensenshannon

from cityml.profile import category_profile, feature_profile
from monitoring.drift import compare_files, feature_scores
from monitoring.stats import chi2, js_distance, ks, numeric_score, sketch_shares, wasserstein

RNG = np.random.default_rng(11)
SAMPLES = {
    "normal": (RNG.normal(10, 2, 50_000), RNG.normal(10.6, 2.4, 8_000)),
    "lognormal": (RNG.lognormal(3, 0.6, 50_000), RNG.lognormal(3.1, 0.6, 8_000)),
    "uniform, same": (RNG.uniform(0, 1, 50_000), RNG.uniform(0, 1, 8_000)),
    "bimodal": (
        np.concatenate([RNG.normal(0, 1, 25_000), RNG.normal(6, 1, 25_000)]),
        np.concatenate([RNG.normal(0, 1, 6_000), RNG.normal(6, 1, 2_000)]),
    ),
}


@pytest.mark.parametrize("name", list(SAMPLES))
def test_sketch_statistics_agree_with_scipy_on_the_raw_samples(name: str) -> None:
    """Tolerances: KS within 0.011 (the sketch resolves the CDF to 1%); Wasserstein within 1% of the reference's
    standard deviation (the sketch interpolates between its quantiles);
    Jensen-Shannon exactly scipy's on the same shares, and within 0.02 of the one over the raw reference."""
    ref, cur = SAMPLES[name]
    profile = feature_profile(pd.Series(ref))
    q, probs = np.asarray(profile["quantiles"]), np.asarray(profile["quantile_probs"])
    current = np.sort(cur)

    statistic, p = ks(q, probs, len(ref), current)
    exact = sp.ks_2samp(ref, cur)
    assert statistic == pytest.approx(exact.statistic, abs=0.011)
    if exact.pvalue > 1e-6:  # both tiny otherwise; compare where they say something
        assert p == pytest.approx(exact.pvalue, rel=0.5, abs=0.02)

    std = float(np.std(ref))
    assert wasserstein(q, probs, std, current) * std == pytest.approx(sp.wasserstein_distance(ref, cur), abs=0.01 * std)

    ref_shares, cur_shares = sketch_shares(q, probs, current)
    assert js_distance(ref_shares, cur_shares) == pytest.approx(jensenshannon(ref_shares, cur_shares), abs=1e-9)
    edges = np.unique(q)
    raw_ref = np.bincount(np.searchsorted(edges, ref, side="left"), minlength=len(edges) + 1) / len(ref)
    assert js_distance(ref_shares, cur_shares) == pytest.approx(jensenshannon(raw_ref, cur_shares), abs=0.02)


def test_chi_square_agrees_with_scipy() -> None:
    shares = {"a": 0.5, "b": 0.3, "c": 0.2}
    counts = {"a": 430, "b": 370, "c": 200}
    statistic, p = chi2(shares, counts)
    exact = sp.chisquare([430, 370, 200], [500, 300, 200])
    assert (statistic, p) == pytest.approx((exact.statistic, exact.pvalue), rel=1e-9)


def test_the_evidently_scenario_flags_the_moved_columns_only() -> None:
    """Ten numeric columns (three shifted by 0.5 sd) and two categorical (one re-weighted), 20k rows."""
    n = 20_000
    rng = np.random.default_rng(5)

    def table(shifted: bool) -> pd.DataFrame:
        cols = {f"x{i}": rng.normal(0, 1, n) + (0.5 if shifted and i < 3 else 0.0) for i in range(10)}
        weights = [0.2, 0.5, 0.3] if shifted else [0.5, 0.3, 0.2]
        cols["zone"] = rng.choice(["a", "b", "c"], n, p=weights)
        cols["city"] = rng.choice(["p", "q"], n, p=[0.6, 0.4])
        return pd.DataFrame(cols)

    ref, cur = table(False), table(True)
    profile = {"features": {c: (category_profile if ref[c].dtype == object else feature_profile)(ref[c]) for c in ref}}
    scores = feature_scores(profile, cur)
    assert sorted(c for c, s in scores.items() if s["verdict"] == "drift") == ["x0", "x1", "x2", "zone"]
    assert scores["x0"]["method"] == "wasserstein" and scores["x0"]["score"] == pytest.approx(0.5, abs=0.05)
    assert scores["zone"]["method"] == "js"
    # A small live window is tested instead (KS / chi-square, p < 0.05); the same columns move.
    small = feature_scores(profile, cur.sample(800, random_state=0))
    assert small["x0"]["method"] == "ks" and small["zone"]["method"] == "chi2"
    assert {c for c, s in small.items() if s["verdict"] == "drift"} >= {"x0", "x1", "x2", "zone"}
    assert {c for c, s in small.items() if s["verdict"] == "drift"} <= {"x0", "x1", "x2", "zone", "x5", "city"}
    # PSI alone calls a 0.5 sd shift "watch": why it is no longer the default.
    assert feature_scores(profile, cur, "psi")["x0"]["verdict"] in ("watch", "drift")


def test_an_old_profile_of_ten_bins_still_reads_with_psi() -> None:
    ref = pd.Series(np.random.default_rng(1).normal(0, 1, 5000))
    old = {k: v for k, v in feature_profile(ref).items() if k in ("edges", "shares", "missing_share", "mean")}
    score = numeric_score(old, np.random.default_rng(2).normal(1, 1, 2000), "auto")
    assert score.method == "psi" and score.verdict == "drift" and "ks" not in score.stats


def test_unseen_categories_count_as_other_and_drift() -> None:
    ref = category_profile(pd.Series(["a"] * 500 + ["b"] * 500))
    scores = feature_scores({"features": {"zone": ref}}, pd.DataFrame({"zone": ["z9"] * 900 + ["a"] * 100}))
    assert scores["zone"]["verdict"] == "drift" and scores["zone"]["n_current"] == 1000


def test_compare_files_reads_categorical_columns(tmp_path: Path) -> None:
    rng = np.random.default_rng(4)
    ref, cur = tmp_path / "ref.parquet", tmp_path / "cur.parquet"
    pd.DataFrame({"a": rng.normal(0, 1, 3000), "zone": pd.Categorical(rng.choice(["x", "y"], 3000))}).to_parquet(ref)
    pd.DataFrame(
        {"a": rng.normal(0, 1, 3000), "zone": pd.Categorical(rng.choice(["x", "y"], 3000, p=[0.9, 0.1]))}
    ).to_parquet(cur)
    doc = compare_files(ref, cur)
    assert doc["drifted"] == ["zone"] and doc["features"]["a"]["verdict"] == "stable"
    assert doc["features"]["zone"]["method"] == "js"


def test_a_city_asked_for_within_its_cooldown_waits() -> None:
    from datetime import UTC, datetime, timedelta

    from monitoring.drift import cooldown

    now = datetime(2026, 11, 26, 12, tzinfo=UTC)
    asked = {"lisbon": now - timedelta(hours=3), "porto": now - timedelta(hours=30)}
    retrain, waiting = cooldown(["faro", "lisbon", "porto"], asked, now, hours=24)
    assert retrain == ["faro", "porto"]  # faro never asked for, porto's cooldown is over
    assert waiting == {"lisbon": {"requested_at": "2026-11-26T09:00:00+00:00", "until": "2026-11-27T09:00:00+00:00"}}
    assert cooldown(["lisbon"], asked, now, hours=0)[0] == ["lisbon"]  # 0: no brake


def test_the_drift_job_records_its_requests_and_waits_for_the_cooldown(
    small_settings: object, monkeypatch: pytest.MonkeyPatch
) -> None:
    import monitoring.drift as drift

    settings = small_settings

    def drifting(
        s: object, city: str, target: str, since: object, c: object = None, memo: object = None
    ) -> dict[str, object]:
        return {"city": city, "target": target, "model": f"{target}-{city}", "verdict": "drift", "features": {}}

    monkeypatch.setattr(drift, "drift_model", drifting)
    monkeypatch.setattr(drift, "client", lambda s: None)
    monkeypatch.setattr(drift, "last_retrain", lambda c, city, targets: None)
    first = drift.run_drift(settings, ["alpha", "beta-city"], ["eta"], request=True)  # type: ignore[arg-type]
    assert first["retrain"] == ["alpha", "beta-city"] and first["cooling_down"] == {}
    assert first["reasons"] == {"alpha": "eta drift", "beta-city": "eta drift"}
    looked = drift.run_drift(settings, ["alpha"], ["eta"])  # type: ignore[arg-type]  # a person's `cityml drift`
    assert looked["retrain"] == [] and set(looked["cooling_down"]) == {"alpha"}
    assert Path(looked["html_path"]).read_text().count('<div class="plot">') == 2  # heatmap and history


@pytest.mark.parametrize("backend", ["sqlite", pytest.param("postgres", marks=pytest.mark.integration)])
def test_drift_history_is_a_table_of_the_metadata_database(backend: str, tmp_path: Path) -> None:
    import contextlib

    from monitoring import history
    from tests.conftest import postgres_schema

    database = postgres_schema() if backend == "postgres" else contextlib.nullcontext(f"sqlite:///{tmp_path / 'c.db'}")
    feature = {"method": "wasserstein", "score": 0.31, "verdict": "drift"}
    report = {
        "generated_at": "2026-11-26T12:00:00+00:00",
        "models": [
            {
                "city": "porto",
                "target": "eta",
                "model": "eta-porto",
                "version": "3",
                "rows": 900,
                "features": {"distance_km": feature, "hour": {**feature, "verdict": "calendar"}},
            },
            {"city": "faro", "target": "eta", "model": "eta-faro", "features": {}},
        ],
    }
    with database as url:
        assert history.record(url, report) == 2
        assert history.record(url, {**report, "generated_at": "2026-11-27T12:00:00+00:00"}) == 2
        rows = history.read(url, "porto")
        assert [(r["feature"], r["verdict"], r["score"]) for r in rows[:2]] == [
            ("distance_km", "drift", 0.31),
            ("hour", "calendar", 0.31),
        ]
        assert len(rows) == 4 and rows[-1]["run_at"].day == 27


def test_categories_judged_by_a_distance_drift_only_when_the_change_is_significant() -> None:
    """150 draws over 16 equally likely zones sit ~0.11 (JS) from their own distribution: no drift without chi-square
    agreeing; the same sample size with half the trips moved to one zone is drift."""
    from cityml.profile import category_profile
    from monitoring.stats import categorical_score

    rng = np.random.default_rng(3)
    zones = [f"z{i:02d}" for i in range(16)]
    reference = category_profile(pd.Series(rng.choice(zones, 20_000)))
    noise = [categorical_score(reference, rng.choice(zones, 150), "wasserstein") for _ in range(40)]
    assert np.mean([s.stats["js"] for s in noise]) > 0.1  # the distance alone would call most of them drift
    assert sum(s.verdict == "drift" for s in noise) <= 6  # chi-square's 5% false alarms, not ~100%
    moved = np.where(rng.uniform(size=150) < 0.5, "z00", rng.choice(zones, 150))
    assert categorical_score(reference, moved, "wasserstein").verdict == "drift"
