"""Fitting: the label scale is chosen on the validation window, the refit adds it, the test window is never read."""

import numpy as np
import pandas as pd
import pytest

from cityml.modeling import LabelScale, predict
from training.fit import Split, fit_model, time_split


def _split(n: int = 3000, seed: int = 0) -> Split:
    rng = np.random.default_rng(seed)
    zone = rng.choice(["a", "b", "c"], n)
    km = rng.uniform(0.5, 25, n)
    pace = pd.Series(zone).map({"a": 90.0, "b": 150.0, "c": 240.0}).to_numpy()  # s per km
    frame = pd.DataFrame({"distance_km": km, "pickup_zone": zone, "duration_s": km * pace * rng.lognormal(0, 0.1, n)})
    split = time_split(frame)
    # fit_model must not look at the test window: its labels are poison.
    return Split(split.train, split.valid, split.test.assign(duration_s=np.nan))


def test_the_validation_window_picks_the_scale_and_the_refit_adds_its_rows() -> None:
    split = _split()
    scales = [LabelScale("none"), LabelScale("per_km")]
    early = fit_model(split, ["distance_km", "pickup_zone"], "duration_s", scales, refit=False, threads=1)
    assert set(early.valid_mae) == {"none", "per_km"}
    assert early.scale.kind == min(early.valid_mae, key=early.valid_mae.get)  # type: ignore[arg-type]
    assert early.scale.kind == "per_km"  # a pace per zone is what the data is made of
    assert not early.refit and early.rounds == early.booster.best_iteration

    refit = fit_model(split, ["distance_km", "pickup_zone"], "duration_s", scales, refit=True, threads=1)
    n_train, n_both = len(split.train), len(split.train) + len(split.valid)
    assert refit.refit and refit.rounds == max(1, round(early.rounds * n_both / n_train))
    assert refit.booster.current_iteration() == refit.rounds
    pred = refit.predict(split.test)
    assert np.isfinite(pred).all() and (pred >= 0).all()


def test_a_blend_is_one_more_candidate_and_predicts_its_members_mean() -> None:
    split = _split(seed=4)
    scales = [LabelScale("per_km"), LabelScale("per_sqrt_km"), LabelScale("none")]
    features = ["distance_km", "pickup_zone"]
    fitted = fit_model(split, features, "duration_s", scales, threads=1, blended=True)
    assert set(fitted.valid_mae) == {"per_km", "per_sqrt_km", "none", "blend"}
    kept = min(fitted.valid_mae, key=fitted.valid_mae.get)  # type: ignore[arg-type]
    assert [s.kind for _, s in fitted.members] == (["per_km", "per_sqrt_km", "none"] if kept == "blend" else [kept])
    # However it was chosen, a blend of these members answers their mean (the rule serving applies).
    many = fit_model(split, features, "duration_s", scales[:1], threads=1)
    many.others = [fit_model(split, features, "duration_s", [s], threads=1).members[0] for s in scales[1:]]
    each = [predict(b, s, split.test) for b, s in many.members]
    np.testing.assert_allclose(many.predict(split.test), np.mean(each, axis=0), rtol=1e-12)
    unblended = fit_model(split, features, "duration_s", scales, threads=1)
    assert "blend" not in unblended.valid_mae and len(unblended.members) == 1  # without ``blended``, never


def test_narrow_members_join_a_blend_that_reads_every_feature_first() -> None:
    # Thirty columns of noise stand for sparse stored features: trees on the request's own features
    # (distance, zone) cannot overfit them, so the wide and narrow members' mean errs less.
    split = _split(800, seed=5)
    rng = np.random.default_rng(9)
    noise = [f"noise_{i}" for i in range(30)]
    windows = (split.train, split.valid, split.test)
    split = Split(*(w.assign(**{n: rng.normal(size=len(w)) for n in noise}) for w in windows))
    scales = [LabelScale("per_km"), LabelScale("none")]
    features = ["distance_km", "pickup_zone", *noise]
    request = ["pickup_zone", "distance_km"]
    fitted = fit_model(split, features, "duration_s", scales, threads=1, blended=True, narrow=request)
    assert set(fitted.valid_mae) == {"per_km", "none", "blend", "blend_narrow"}
    assert min(fitted.valid_mae, key=fitted.valid_mae.get) == "blend_narrow"  # type: ignore[arg-type]
    reads = [b.feature_name() for b, _ in fitted.members]
    # Wide members first (the version's booster reads every feature), the narrow ones in the features' order.
    assert reads == [features, features, ["distance_km", "pickup_zone"], ["distance_km", "pickup_zone"]]
    assert [s.kind for _, s in fitted.members] == ["per_km", "none", "per_km", "none"]
    each = [predict(b, s, split.test) for b, s in fitted.members]
    np.testing.assert_allclose(fitted.predict(split.test), np.mean(each, axis=0), rtol=1e-12)
    # No narrow set without a blend, and none when it is every feature.
    alone = fit_model(split, features, "duration_s", scales, threads=1, narrow=request)
    assert "blend_narrow" not in alone.valid_mae
    same = fit_model(split, features, "duration_s", scales, threads=1, blended=True, narrow=features)
    assert "blend_narrow" not in same.valid_mae


def test_fit_model_needs_a_scale() -> None:
    with pytest.raises(ValueError, match="at least one label scale"):
        fit_model(_split(300), ["distance_km"], "duration_s", [])


def test_a_small_city_pools_on_the_fleet_model_when_the_validation_window_says_so() -> None:
    # 40 zones and 170 trips to train on: too few to learn every zone's pace alone.
    rng = np.random.default_rng(3)
    paces = {f"z{i:02d}": 60.0 + 8.0 * i for i in range(40)}
    zone = rng.choice(list(paces), 240)
    km = rng.uniform(0.5, 25, 240)
    truth = km * pd.Series(zone).map(paces).to_numpy()
    frame = pd.DataFrame({"distance_km": km, "pickup_zone": zone, "duration_s": truth * rng.lognormal(0, 0.1, 240)})
    split = time_split(frame)

    def fleet(rows: pd.DataFrame) -> np.ndarray:  # the fleet model knows the paces, 10% off for this city
        return 0.9 * rows["distance_km"].to_numpy() * rows["pickup_zone"].map(paces).to_numpy()

    features = ["distance_km", "pickup_zone"]
    asked: list[int] = []

    def counted(rows: pd.DataFrame) -> np.ndarray:
        asked.append(len(rows))
        return fleet(rows)

    fitted = fit_model(
        split, features, "duration_s", [LabelScale("per_km"), LabelScale("none")], threads=1, base=counted
    )
    # The fleet model is asked once per window (training, validation, both for the refit), not per scale.
    assert sorted(asked) == sorted([len(split.train), len(split.valid), len(split.train) + len(split.valid)])
    assert fitted.base is counted
    fitted = fit_model(split, features, "duration_s", [LabelScale("per_km")], threads=1, base=fleet)
    assert set(fitted.valid_mae) == {"per_km", "per_km_pooled"}
    assert fitted.pooled and fitted.valid_mae["per_km_pooled"] < fitted.valid_mae["per_km"]
    # The pooled booster is a correction: without the fleet's predictions it would be far off.
    test_truth = truth[len(split.train) + len(split.valid) :]
    with_base = np.mean(np.abs(fitted.predict(split.test) - test_truth))
    alone = np.mean(np.abs(predict(fitted.booster, fitted.scale, split.test) - test_truth))
    assert with_base < 0.3 * alone
