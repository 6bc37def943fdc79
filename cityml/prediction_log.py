"""The prediction log: every served prediction with its model inputs. The format lives here.

Serving writes it through :class:`PredictionLog` (a bounded queue and a background writer, never
on the request path); the drift job reads it through :func:`read_predictions`.

Files: ``<predictions_dir>/city=<slug>/date=<YYYY-MM-DD>/part-<time>-<id>.parquet``, one per
flushed batch, each written to a temporary name and renamed, so a reader never sees half a file.
Columns: those of :class:`PredictionRecord`, ``features`` as a JSON object (models differ in
their inputs). Logs of older versions (``date=<day>.jsonl``) are still read.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
import uuid
from dataclasses import dataclass, fields
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

log = logging.getLogger(__name__)

FeatureValue = float | str | None


@dataclass(frozen=True)
class PredictionRecord:
    """One served prediction. ``trip_id`` is the client's, to join the trip's outcome later."""

    ts: datetime
    request_id: str
    city: str
    target: str
    model: str
    version: str
    fallback: str | None
    degraded: bool
    features: dict[str, FeatureValue]
    prediction: float
    trip_id: str | None = None


SCHEMA = pa.schema(
    [
        ("ts", pa.timestamp("us", tz="UTC")),
        ("request_id", pa.string()),
        ("city", pa.string()),
        ("target", pa.string()),
        ("model", pa.string()),
        ("version", pa.string()),
        ("fallback", pa.string()),
        ("degraded", pa.bool_()),
        ("features", pa.string()),
        ("prediction", pa.float64()),
        ("trip_id", pa.string()),
    ]
)
assert [f.name for f in fields(PredictionRecord)] == SCHEMA.names  # one format, one place


def write_batch(folder: Path, records: list[PredictionRecord]) -> list[Path]:
    """Write records as one parquet file per (city, day); returns the files written."""
    groups: dict[tuple[str, str], list[PredictionRecord]] = {}
    for r in records:
        groups.setdefault((r.city, r.ts.astimezone(UTC).date().isoformat()), []).append(r)
    encode = json.JSONEncoder(allow_nan=False, separators=(",", ":")).encode
    written = []
    for (city, day), rows in groups.items():
        columns = {name: [getattr(r, name) for r in rows] for name in SCHEMA.names}
        columns["features"] = [encode(f) for f in columns["features"]]
        path = folder / f"city={city}" / f"date={day}" / f"part-{time.time_ns()}-{uuid.uuid4().hex[:8]}.parquet"
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        pq.write_table(pa.table(columns, schema=SCHEMA), tmp)
        os.replace(tmp, path)
        written.append(path)
    return written


class PredictionLog:
    """A bounded buffer of records and a thread that flushes it in batches.

    :meth:`submit` never blocks and never wakes the writer: it appends to a list under a lock held
    for a few instructions. The writer wakes every ``flush_s`` seconds, or as soon as ``batch``
    records wait, and writes what it finds. (A queue woke the writer on every request; the two
    threads then traded the GIL on every predict, which cost more than the predict.) Past
    ``max_queue`` records waiting, the records that do not fit are dropped and counted
    (``dropped``). :meth:`close` flushes what is buffered.
    """

    def __init__(self, folder: Path, max_queue: int = 100_000, batch: int = 5_000, flush_s: float = 1.0) -> None:
        self.folder = folder
        self.max_queue = max_queue
        self.batch = batch
        self.flush_s = flush_s
        self.dropped = 0
        self.written = 0
        self.failed = 0
        self._buffer: list[PredictionRecord] = []
        self._pending = 0  # buffered or being written
        self._lock = threading.Lock()
        self._wake = threading.Event()  # a full batch waits, or closing
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="prediction-log", daemon=True)
        self._thread.start()

    def submit(self, records: list[PredictionRecord]) -> int:
        """Buffer a request's records; returns how many were dropped for lack of room."""
        with self._lock:
            room = max(0, self.max_queue - self._pending)
            kept = records if len(records) <= room else records[:room]
            dropped = len(records) - len(kept)
            self._pending += len(kept)
            self.dropped += dropped
            self._buffer.extend(kept)
            full = len(self._buffer) >= self.batch
        if full:
            self._wake.set()
        return dropped

    @property
    def pending(self) -> int:
        """Records submitted and not yet written (or given up on)."""
        return self._pending

    def close(self, timeout_s: float = 30.0) -> None:
        self._stop.set()
        self._wake.set()
        self._thread.join(timeout_s)

    def _run(self) -> None:
        while True:
            stopping = self._stop.is_set()
            if not stopping:
                self._wake.wait(self.flush_s)
                self._wake.clear()
            with self._lock:
                batch, self._buffer = self._buffer, []
            if batch:
                try:
                    write_batch(self.folder, batch)
                    self.written += len(batch)
                except (OSError, pa.ArrowException, ValueError):
                    self.failed += len(batch)
                    log.exception("prediction log: %d records could not be written to %s", len(batch), self.folder)
                with self._lock:
                    self._pending -= len(batch)
            if stopping:
                return


def read_predictions(
    folder: Path, city: str, target: str | None = None, since: datetime | None = None
) -> list[dict[str, Any]]:
    """Logged predictions of a city (optionally one target, optionally since a time), oldest first.

    Each is a dict with the keys of :class:`PredictionRecord`, ``ts`` as ISO text, ``features`` as a dict.
    """
    base = folder / f"city={city}"
    day0 = since.astimezone(UTC).date().isoformat() if since is not None else ""
    out: list[dict[str, Any]] = []
    for f in sorted(base.glob("date=*.jsonl")):  # older versions' format
        if f.stem[5:] >= day0:
            out.extend(json.loads(line) for line in f.read_text().splitlines() if line.strip())
    for day in sorted(base.glob("date=*/")):
        if day.name[5:] < day0:
            continue
        for f in sorted(day.glob("part-*.parquet")):
            for r in pq.read_table(f).to_pylist():
                r["ts"] = r["ts"].isoformat()
                r["features"] = json.loads(r["features"])
                out.append(r)
    if target is not None:
        out = [r for r in out if r.get("target") == target]
    if since is not None:
        out = [r for r in out if datetime.fromisoformat(r["ts"]) >= since]
    return sorted(out, key=lambda r: r["ts"])
