"""How a model predicts: label scales, categorical zones, the clip at zero, one function for all callers."""

import lightgbm as lgb
import numpy as np
import pandas as pd
import pytest

from cityml.modeling import FAST_ROWS, MIN_KM, FeatureEncoder, LabelScale, RawPredictor, blend, model_frame, predict


def _trips(n: int = 400, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    zones = rng.choice(["a", "b"], n)
    km = rng.uniform(0.1, 20, n)
    pace = np.where(zones == "a", 100.0, 200.0)  # s per km
    return pd.DataFrame({"distance_km": km, "pickup_zone": zones, "duration_s": km * pace})


def test_per_km_learns_the_label_per_km_weighted_by_km_and_decodes_back() -> None:
    t = _trips()
    scale = LabelScale("per_km")
    target, weight = scale.encode(t["duration_s"], t)
    km = np.maximum(t["distance_km"].to_numpy(), MIN_KM)
    np.testing.assert_allclose(target, t["duration_s"] / km)
    np.testing.assert_allclose(weight, km)  # so the weighted L1 on the pace is the L1 on the duration
    np.testing.assert_allclose(scale.decode(target, t), t["duration_s"])


def test_per_sqrt_km_weighs_by_its_divisor_so_the_weighted_l1_is_the_labels_absolute_error() -> None:
    t = _trips()
    scale = LabelScale("per_sqrt_km")
    target, weight = scale.encode(t["duration_s"], t)
    root = np.sqrt(np.maximum(t["distance_km"].to_numpy(), MIN_KM))
    np.testing.assert_allclose(target, t["duration_s"] / root)
    np.testing.assert_allclose(scale.decode(target, t), t["duration_s"])
    guess = np.full(len(t), 120.0)  # any prediction in the scaled label
    assert weight is not None
    np.testing.assert_allclose(
        np.abs(target - guess) * weight, np.abs(t["duration_s"].to_numpy() - scale.decode(guess, t))
    )


def test_a_blend_answers_its_members_mean_and_nothing_where_one_has_no_answer() -> None:
    a, b, c = np.array([1.0, 2.0, np.nan]), np.array([3.0, 6.0, 1.0]), np.array([2.0, 1.0, 1.0])
    np.testing.assert_allclose(blend([a, b, c]), [2.0, 3.0, np.nan])
    np.testing.assert_allclose(blend([b]), b)


def test_a_fleet_scale_divides_by_the_city_rate_and_serves_only_cities_it_knows() -> None:
    scale = LabelScale("per_km_city", {"lisbon": 1.5, "jakarta": 6000.0})
    frame = pd.DataFrame({"city": ["lisbon", "jakarta", "nyc"], "distance_km": [2.0, 2.0, 2.0]})
    np.testing.assert_allclose(scale.decode(np.ones(3), frame)[:2], [3.0, 12000.0])
    assert np.isnan(scale.decode(np.ones(3), frame)[2])
    assert scale.covers("lisbon") and not scale.covers("nyc")
    assert LabelScale("per_km").covers("nyc")
    target, weight = scale.encode(np.array([3.0, 12000.0]), frame.iloc[:2])
    np.testing.assert_allclose(target, [1.0, 1.0])  # currency-free
    np.testing.assert_allclose(weight, [2.0, 2.0])  # every city counts alike
    assert LabelScale.from_json(scale.to_json()) == scale


def test_versions_without_the_tag_predict_the_label_as_is() -> None:
    assert LabelScale.from_tags({}) == LabelScale("none")
    assert LabelScale.from_tags({"label_scale": "per_km"}) == LabelScale("per_km")
    with pytest.raises(ValueError, match=r"label_scale\.json"):
        LabelScale.from_tags({"label_scale": "per_km_city"})
    with pytest.raises(ValueError, match="unknown label scale"):
        LabelScale("per_mile")  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def zone_model() -> lgb.Booster:
    t = _trips(2000)
    target, weight = LabelScale("per_km").encode(t["duration_s"], t)
    x = model_frame(t, ["distance_km", "pickup_zone"])
    params = {"objective": "l1", "verbosity": -1, "min_data_in_leaf": 5, "num_threads": 1}
    return lgb.train(params, lgb.Dataset(x, target, weight=weight), num_boost_round=60)


def test_zones_are_categories_and_an_unseen_zone_is_missing_not_another_zones_code(zone_model: lgb.Booster) -> None:
    scale = LabelScale("per_km")
    rows = pd.DataFrame({"distance_km": [10.0] * 4, "pickup_zone": ["a", "b", "zz-unseen", None]})
    # Served frames carry their own category lists: LightGBM maps them by name to the training ones.
    p = predict(zone_model, scale, rows)
    assert p[0] == pytest.approx(1000, rel=0.05) and p[1] == pytest.approx(2000, rel=0.05)
    assert p[2] == pytest.approx(p[3])  # unseen == missing
    only_b = predict(zone_model, scale, rows.iloc[[2, 1]].reset_index(drop=True))
    assert only_b[1] == pytest.approx(p[1])  # "b" alone in a request is still "b", not code 0 ("a")


def test_predict_clips_at_zero_and_names_missing_features(zone_model: lgb.Booster) -> None:
    rows = pd.DataFrame({"distance_km": [10.0], "pickup_zone": ["a"]})
    negative = LabelScale("per_km_city", {"x": -1.0})  # a booster's raw output decoded to below zero
    assert predict(zone_model, negative, rows.assign(city="x"))[0] == 0.0
    with pytest.raises(KeyError, match="pickup_zone"):
        predict(zone_model, LabelScale("per_km"), rows[["distance_km"]])


def test_a_pooled_model_adds_its_correction_to_the_base_in_the_scaled_label(zone_model: lgb.Booster) -> None:
    rows = pd.DataFrame({"distance_km": [10.0, 2.0], "pickup_zone": ["a", "a"]})
    scale = LabelScale("per_km")
    alone = predict(zone_model, scale, rows)
    base = np.array([500.0, 100.0])  # 50 s/km from the base, for both trips
    np.testing.assert_allclose(predict(zone_model, scale, rows, base), alone + base)


def test_the_matrix_encoder_gives_what_lightgbms_own_pandas_path_gives_on_many_rows() -> None:
    """Serving encodes rows without pandas; LightGBM's pandas mapping is the reference, to 1e-9."""
    rng = np.random.default_rng(7)
    n = 3000
    zones = [f"z{i}" for i in range(40)]
    t = pd.DataFrame(
        {
            "distance_km": rng.uniform(0.1, 30, n),
            "local_hour": rng.integers(0, 24, n),
            "pickup_zone": rng.choice(zones, n),
            "dropoff_zone": rng.choice(zones, n),
            "city": rng.choice(["lisbon", "porto"], n),
        }
    )
    t.loc[rng.random(n) < 0.05, "distance_km"] = np.nan
    y = t["distance_km"].fillna(5) * 90 + t["local_hour"] * 7 + t["pickup_zone"].str[1:].astype(int)
    names = ["distance_km", "local_hour", "pickup_zone", "city", "dropoff_zone"]  # categoricals not together
    params = {"objective": "huber", "verbosity": -1, "num_threads": 1, "min_data_in_leaf": 5}
    booster = lgb.train(params, lgb.Dataset(model_frame(t, names), y), num_boost_round=80)

    rows = t.sample(2000, random_state=1).reset_index(drop=True)
    rows.loc[::7, "pickup_zone"] = "never-seen"
    rows.loc[::11, "dropoff_zone"] = None
    rows.loc[::13, "city"] = "faro"
    expected = booster.predict(model_frame(rows, names, rows["city"]))
    encoded = FeatureEncoder(booster).matrix({c: rows[c].to_numpy() for c in rows.columns}, len(rows))
    np.testing.assert_allclose(booster.predict(encoded), expected, rtol=0, atol=1e-9)
    np.testing.assert_allclose(predict(booster, LabelScale(), rows), np.maximum(expected, 0), rtol=0, atol=1e-9)

    # Served models predict a few rows through LightGBM's single-row path: the same numbers.
    raw = RawPredictor(booster)
    one_by_one = np.concatenate([raw(encoded[i : i + 1]) for i in range(len(encoded))])
    np.testing.assert_allclose(one_by_one, expected, rtol=0, atol=1e-9)
    few = encoded[: FAST_ROWS - 1]
    np.testing.assert_allclose(raw(few), expected[: len(few)], rtol=0, atol=1e-9)
    np.testing.assert_allclose(raw(encoded[:40]), expected[:40], rtol=0, atol=1e-9)  # past FAST_ROWS: booster.predict
    stopped = lgb.train(params, lgb.Dataset(model_frame(t, names), y), num_boost_round=80)
    stopped.best_iteration = 30  # an early-stopped model predicts with its best iteration on both paths
    np.testing.assert_allclose(
        RawPredictor(stopped)(encoded[:5]), stopped.predict(encoded[:5], num_iteration=30), rtol=0, atol=1e-9
    )


def test_a_server_process_caps_lightgbm_at_one_thread_for_every_call() -> None:
    """``one_thread_per_call`` (serving's build_state) binds the whole process: a child runs it, not pytest."""
    import subprocess
    import sys

    code = (
        "import ctypes\n"
        "from lightgbm.basic import _LIB\n"
        "from cityml.modeling import one_thread_per_call\n"
        "n = ctypes.c_int(0); _LIB.LGBM_GetMaxThreads(ctypes.byref(n)); print(n.value)\n"
        "one_thread_per_call()\n"
        "_LIB.LGBM_GetMaxThreads(ctypes.byref(n)); print(n.value)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["-1", "1"]  # -1: no cap, OpenMP's default


@pytest.mark.parametrize("params", [{}, {"linear_tree": True}, {"objective": "l1", "max_cat_to_onehot": 1}])
def test_a_booster_without_its_training_statistics_predicts_exactly_what_it_did(params: dict[str, object]) -> None:
    """Blend members are stored as :func:`prediction_text`: every row's answer, NaNs and unseen zones included,
    bit for bit; the categories and the trees are all there, the per-node statistics are not."""
    from cityml.modeling import TRAINING_STATISTICS, prediction_text

    rng = np.random.default_rng(3)
    t = _trips(3000, seed=3).assign(hour=lambda f: rng.integers(0, 24, len(f)).astype(float))
    t.loc[rng.random(len(t)) < 0.1, "hour"] = np.nan
    features = ["distance_km", "pickup_zone", "hour"]
    data = lgb.Dataset(model_frame(t, features), t["duration_s"])
    booster = lgb.train({"verbosity": -1, "num_threads": 1, "num_leaves": 15, **params}, data, num_boost_round=60)
    text = prediction_text(booster)
    slim = lgb.Booster(model_str=text)

    assert len(text) < 0.8 * len(booster.model_to_string())
    assert not [line for line in text.split("\n") if line.startswith(tuple(f"{k}=" for k in TRAINING_STATISTICS))]
    assert slim.num_trees() == booster.num_trees() and slim.pandas_categorical == booster.pandas_categorical
    rows = t.sample(2000, random_state=1).assign(pickup_zone=lambda f: f.pickup_zone.where(f.index % 7 > 0, "zz"))
    x = model_frame(rows, features)
    np.testing.assert_array_equal(slim.predict(x, num_threads=1), booster.predict(x, num_threads=1))
