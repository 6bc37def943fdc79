"""The prediction log's writer: requests never wait for it, a full batch is written early, close flushes."""

import time
from datetime import UTC, datetime
from pathlib import Path

from cityml.prediction_log import PredictionLog, PredictionRecord, read_predictions


def _record(i: int) -> PredictionRecord:
    return PredictionRecord(
        ts=datetime(2026, 1, 5, 8, tzinfo=UTC),
        request_id=f"r{i}",
        city="lisbon",
        target="eta",
        model="eta-lisbon",
        version="1",
        fallback=None,
        degraded=False,
        features={"distance_km": 2.5, "pickup_zone": "z01"},
        prediction=100.0 + i,
        trip_id=f"t{i}",
    )


def test_close_writes_what_is_buffered(tmp_path: Path) -> None:
    log = PredictionLog(tmp_path, flush_s=3600)  # the timer never fires in this test
    assert log.submit([_record(i) for i in range(5)]) == 0
    assert log.pending == 5
    log.close()
    assert log.pending == 0 and log.written == 5
    assert sorted(r["trip_id"] for r in read_predictions(tmp_path, "lisbon")) == [f"t{i}" for i in range(5)]


def test_a_full_batch_is_written_without_waiting_for_the_timer(tmp_path: Path) -> None:
    log = PredictionLog(tmp_path, batch=4, flush_s=3600)
    log.submit([_record(i) for i in range(3)])
    log.submit([_record(3)])  # the fourth record fills a batch: the writer wakes
    for _ in range(400):
        if log.written == 4:
            break
        time.sleep(0.05)
    assert log.written == 4 and log.pending == 0
    log.close()


def test_past_the_bound_records_are_dropped_and_counted(tmp_path: Path) -> None:
    log = PredictionLog(tmp_path, max_queue=3, flush_s=3600)
    assert log.submit([_record(i) for i in range(2)]) == 0
    assert log.submit([_record(i) for i in range(2, 5)]) == 2
    assert log.dropped == 2 and log.pending == 3
    log.close()
    assert len(read_predictions(tmp_path, "lisbon")) == 3
