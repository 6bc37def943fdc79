"""The prediction log's writer: requests never wait for it, a full batch is written early, close flushes."""

import time
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from cityml.prediction_log import PredictionBatch, PredictionLog, epoch_us, read_predictions


def _batch(*ids: int) -> PredictionBatch:
    n = len(ids)
    return PredictionBatch(
        ts_us=np.full(n, epoch_us(datetime(2026, 1, 5, 8, tzinfo=UTC))),
        request_ids=[f"r{ids[0]}"] * n,
        target="eta",
        model="eta-lisbon",
        version="1",
        cities=["lisbon"] * n,
        fallbacks=[None] * n,
        degraded=np.array([i % 2 == 1 for i in ids]),
        features={
            "distance_km": np.array([2.5 if i % 3 else np.nan for i in ids]),
            "pickup_zone": np.array(["z01" if i % 4 else None for i in ids], dtype=object),
        },
        predictions=np.array([100.0 + i for i in ids]),
        trip_ids=[f"t{i}" for i in ids],
        pickup_s=np.array([1_767_600_000 + 60 * i for i in ids]),
        pickup_zones=["z01"] * n,
        dropoff_zones=["z02" if i % 2 else None for i in ids],
    )


def test_a_batch_becomes_one_record_per_prediction_missing_values_as_none(tmp_path: Path) -> None:
    log = PredictionLog(tmp_path, flush_s=3600)
    log.submit([_batch(0, 1, 2, 3, 4)])
    log.close()
    rows = sorted(read_predictions(tmp_path, "lisbon"), key=lambda r: r["trip_id"])
    assert [r["prediction"] for r in rows] == [100.0, 101.0, 102.0, 103.0, 104.0]
    assert [r["degraded"] for r in rows] == [False, True, False, True, False]
    assert rows[0]["features"] == {"distance_km": None, "pickup_zone": None}
    assert rows[1]["features"] == {"distance_km": 2.5, "pickup_zone": "z01"}
    assert rows[1]["pickup_ts"] == "2026-01-05T08:01:00+00:00"
    assert (rows[0]["pickup_zone"], rows[0]["dropoff_zone"], rows[1]["dropoff_zone"]) == ("z01", None, "z02")


def test_a_log_written_before_the_pickup_columns_still_reads(tmp_path: Path) -> None:
    import pyarrow.parquet as pq

    from cityml.prediction_log import OPTIONAL, write_batches

    [path] = write_batches(tmp_path, [_batch(0, 1)])
    pq.write_table(pq.read_table(str(path)).drop_columns([c for c in OPTIONAL if c != "trip_id"]), str(path))
    rows = read_predictions(tmp_path, "lisbon")
    assert len(rows) == 2 and all(r["pickup_ts"] is None and r["pickup_zone"] is None for r in rows)


def test_close_writes_what_is_buffered(tmp_path: Path) -> None:
    log = PredictionLog(tmp_path, flush_s=3600)  # the timer never fires in this test
    assert log.submit([_batch(0, 1, 2), _batch(3, 4)]) == 0
    assert log.pending == 5
    log.close()
    assert log.pending == 0 and log.written == 5
    assert sorted(r["trip_id"] for r in read_predictions(tmp_path, "lisbon")) == [f"t{i}" for i in range(5)]


def test_a_full_batch_is_written_without_waiting_for_the_timer(tmp_path: Path) -> None:
    log = PredictionLog(tmp_path, batch=4, flush_s=3600)
    log.submit([_batch(0, 1, 2)])
    log.submit([_batch(3)])  # the fourth record fills a batch: the writer wakes
    for _ in range(400):
        if log.written == 4:
            break
        time.sleep(0.05)
    assert log.written == 4 and log.pending == 0
    log.close()


def test_past_the_bound_a_batch_is_dropped_whole_and_counted(tmp_path: Path) -> None:
    log = PredictionLog(tmp_path, max_queue=3, flush_s=3600)
    assert log.submit([_batch(0, 1)]) == 0
    assert log.submit([_batch(2, 3), _batch(4)]) == 2  # two do not fit, the third does
    assert log.dropped == 2 and log.pending == 3
    log.close()
    assert sorted(r["trip_id"] for r in read_predictions(tmp_path, "lisbon")) == ["t0", "t1", "t4"]


def test_rows_go_to_their_city_and_utc_day(tmp_path: Path) -> None:
    late = replace(_batch(0, 1), ts_us=np.full(2, epoch_us(datetime(2026, 1, 5, 23, 59, 59, tzinfo=UTC))))
    early = replace(
        _batch(2, 3), ts_us=np.full(2, epoch_us(datetime(2026, 1, 6, 0, 0, 1, tzinfo=UTC))), cities=["porto"] * 2
    )
    log = PredictionLog(tmp_path, flush_s=3600)
    log.submit([late, early])
    log.close()
    assert sorted(p.parent.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*.parquet")) == [
        "city=lisbon/date=2026-01-05",
        "city=porto/date=2026-01-06",
    ]
    assert [r["trip_id"] for r in read_predictions(tmp_path, "porto")] == ["t2", "t3"]


def test_features_read_back_as_the_values_served_whatever_they_hold(tmp_path: Path) -> None:
    """The writer builds each row's JSON from column texts: every kind of value reads back as what it was."""
    from cityml.prediction_log import write_batches

    rng = np.random.default_rng(4)
    floats = rng.normal(size=6) * 10.0 ** rng.integers(-12, 12, 6)
    floats[[1, 4]] = [np.nan, np.inf]
    columns = {
        "x": floats,
        "count": np.arange(6, dtype="int64"),
        "flag": np.array([True, False] * 3),
        "zone": np.array(['q"uote', "back\\slash", "é ü 東", None, np.nan, "\n"], dtype=object),
        "mixed": np.array([1.5, 2, None, "z", np.nan, float("-inf")], dtype=object),
        'we"ird key': np.zeros(6),
    }
    served = replace(_batch(0, 1, 2, 3, 4, 5), features=columns)
    write_batches(tmp_path, [served, replace(_batch(9), features={})])
    rows = sorted(read_predictions(tmp_path, "lisbon"), key=lambda r: r["trip_id"])
    # Exactly the served floats (repr round-trips); NaN and infinity as missing.
    assert [r["features"]["x"] for r in rows[:6]] == [floats[0], None, floats[2], floats[3], None, floats[5]]
    assert [r["features"]["count"] for r in rows[:6]] == [0, 1, 2, 3, 4, 5]
    assert [r["features"]["flag"] for r in rows[:6]] == [True, False] * 3
    assert [r["features"]["zone"] for r in rows[:6]] == ['q"uote', "back\\slash", "é ü 東", None, None, "\n"]
    assert [r["features"]["mixed"] for r in rows[:6]] == [1.5, 2, None, "z", None, None]
    assert all(r["features"]['we"ird key'] == 0.0 for r in rows[:6])
    assert rows[6]["features"] == {}


def test_every_float_reads_back_exactly_as_served(tmp_path: Path) -> None:
    """Numbers are written as text by Arrow: any float64 (tiny, huge, subnormal, float32) reads back as itself."""
    from cityml.prediction_log import write_batches

    rng = np.random.default_rng(11)
    n = 5_000
    wide = rng.normal(size=n) * 10.0 ** rng.integers(-300, 300, n)
    edges = np.array([0.0, -0.0, 5e-324, -2.2250738585072014e-308, 1.7976931348623157e308, 1.0, 1e16, 0.1, 1 / 3])
    wide[: len(edges)] = edges
    narrow = rng.normal(size=n).astype("float32")
    ids = list(range(n))
    served = replace(_batch(*ids), features={"wide": wide, "narrow": narrow})
    write_batches(tmp_path, [served])
    rows = sorted(read_predictions(tmp_path, "lisbon"), key=lambda r: int(r["trip_id"][1:]))
    assert np.array_equal([r["features"]["wide"] for r in rows], wide)
    assert np.array_equal([r["features"]["narrow"] for r in rows], narrow.astype("float64"))


def test_feature_sets_and_types_keep_apart_and_a_malformed_batch_fails_alone(tmp_path: Path) -> None:
    """Batches of other feature sets, or of one name with another type, are written side by side in one
    flush; a batch whose columns disagree in length is counted as failed, never raised to the request."""
    log = PredictionLog(tmp_path, flush_s=3600)
    # The same feature names as _batch's, one of another type: kept apart, not cast to the first one's.
    counts = replace(
        _batch(1, 2), features={"distance_km": np.array([3, 4]), "pickup_zone": np.array([None, "z02"], dtype=object)}
    )
    floats = replace(
        _batch(6), features={"distance_km": np.array([2.5]), "pickup_zone": np.array(["z03"], dtype=object)}
    )
    other = replace(_batch(3), features={"speed": np.array([7.5])})
    broken = replace(_batch(5, 6), trip_ids=["t5"])  # two predictions, one trip id
    text = replace(_batch(7, 8), request_ids="ab")  # a string of the right length is no column
    listed = replace(_batch(9), features={"distance_km": [1.0]})  # not an array: no dtype
    assert log.submit([counts, _batch(0), other, broken, text, listed, _batch(4), floats]) == 0
    log.close()
    assert log.failed == 5 and log.written == 6
    rows = sorted(read_predictions(tmp_path, "lisbon"), key=lambda r: r["trip_id"])
    assert [r["trip_id"] for r in rows] == ["t0", "t1", "t2", "t3", "t4", "t6"]
    assert [r["features"] for r in rows] == [
        {"distance_km": None, "pickup_zone": None},
        {"distance_km": 3, "pickup_zone": None},
        {"distance_km": 4, "pickup_zone": "z02"},
        {"speed": 7.5},
        {"distance_km": 2.5, "pickup_zone": None},
        {"distance_km": 2.5, "pickup_zone": "z03"},
    ]


def test_pending_columns_grow_past_their_first_capacity(tmp_path: Path) -> None:
    log = PredictionLog(tmp_path, flush_s=3600)
    for start in range(0, 1_000, 7):
        log.submit([_batch(*range(start, min(start + 7, 1_000)))])
    log.close()
    rows = read_predictions(tmp_path, "lisbon")
    assert sorted(int(r["trip_id"][1:]) for r in rows) == list(range(1_000))
    assert {r["trip_id"]: r["prediction"] for r in rows}["t999"] == 1099.0
