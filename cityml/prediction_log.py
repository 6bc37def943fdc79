"""The prediction log: every served prediction with its model inputs. The format lives here.

Serving hands the predictions of each run of its model stage to :class:`PredictionLog`, a
:class:`PredictionBatch` per model (columns, as the run computed them); the log copies them into
columns that grow, and a background writer turns those into :class:`PredictionRecord` rows and
files, off the request path. The drift job reads them through
:func:`read_predictions`.

Files: ``<predictions_dir>/city=<slug>/date=<YYYY-MM-DD>/part-<time>-<id>.parquet``, one per
flushed batch, each written to a temporary name and renamed, so a reader never sees half a file.
Columns: those of :class:`PredictionRecord`, ``features`` as a JSON object (models differ in
their inputs). ``trip_id``, ``pickup_ts`` and the zones are what realized accuracy joins the trip's outcome on
(``monitoring.accuracy``). Logs of older versions (``date=<day>.jsonl``, or parquet without the pickup columns)
are still read, those columns as None.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

log = logging.getLogger(__name__)

FeatureValue = float | str | None


@dataclass(frozen=True)
class PredictionRecord:
    """One served prediction. ``trip_id`` (the client's), pickup time and zones join the trip's outcome later."""

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
    pickup_ts: datetime | None = None
    pickup_zone: str | None = None
    dropoff_zone: str | None = None


@dataclass(frozen=True)
class PredictionBatch:
    """Predictions of one model version, as the request path computed them: columns, one row per prediction.

    A batch may hold several requests (the rows one model answered in one run of serving's model
    stage): request id and time are per row. ``features`` holds the model's input columns by name
    (numbers with NaN where missing, zones as text or None); the writer turns the batch into
    :class:`PredictionRecord` rows in its own thread.
    """

    ts_us: np.ndarray  # request time, epoch microseconds (UTC)
    request_ids: Sequence[str]
    target: str
    model: str
    version: str
    cities: np.ndarray | Sequence[str]
    fallbacks: Sequence[str | None]
    degraded: np.ndarray
    features: Mapping[str, np.ndarray]
    predictions: np.ndarray
    trip_ids: Sequence[str | None]
    pickup_s: np.ndarray  # epoch seconds
    pickup_zones: np.ndarray | Sequence[str | None]  # as the request's rows hold them: no copy on the request path
    dropoff_zones: np.ndarray | Sequence[str | None]

    def __len__(self) -> int:
        return len(self.predictions)


def epoch_us(ts: datetime) -> int:
    """An aware datetime as epoch microseconds, as :attr:`PredictionBatch.ts_us` holds times."""
    return round(ts.timestamp() * 1e6)


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
        ("pickup_ts", pa.timestamp("s", tz="UTC")),
        ("pickup_zone", pa.string()),
        ("dropoff_zone", pa.string()),
    ]
)
assert [f.name for f in fields(PredictionRecord)] == SCHEMA.names  # one format, one place
OPTIONAL = ("trip_id", "pickup_ts", "pickup_zone", "dropoff_zone")  # absent from older logs


def write_batches(folder: Path, batches: Sequence[PredictionBatch]) -> list[Path]:
    """Write batches as :class:`PredictionRecord` rows, one parquet file per (city, day); returns the files."""
    pending = _Pending()
    for batch in batches:
        pending.add(batch)
    return _write(folder, pending)


class _Columns:
    """Records of one feature set, column by column, in arrays that grow as batches come.

    A batch is usually one request's row or a few: had the writer gathered them piece by piece
    (a concatenation per column over a second's thousand batches), it held the GIL ~35 ms per
    second, and requests waited for it (serving's p99). Here each batch is copied into place when
    it is submitted, a few microseconds of slice assignments, and the writer gets whole columns.
    Values stay plain numbers and strings, never record objects: thousands of objects alive at
    once made the garbage collector run full passes, holding the GIL.
    """

    FIXED: ClassVar[dict[str, str]] = {
        "ts": "int64",
        "request_id": "O",
        "city": "O",
        "target": "O",
        "model": "O",
        "version": "O",
        "fallback": "O",
        "degraded": "bool",
        "prediction": "float64",
        "trip_id": "O",
        "pickup_ts": "int64",
        "pickup_zone": "O",
        "dropoff_zone": "O",
    }

    def __init__(self, features: Mapping[str, np.ndarray], capacity: int = 256) -> None:
        self.names = tuple(features)
        self.size = 0
        self.dtypes = {**self.FIXED, **{f"f:{name}": column.dtype for name, column in features.items()}}
        self.arrays = {name: np.empty(capacity, dtype) for name, dtype in self.dtypes.items()}

    def add(self, b: PredictionBatch) -> None:
        start, n = self.size, len(b)
        values = {
            "ts": b.ts_us,
            "request_id": b.request_ids,
            "city": b.cities,
            "fallback": b.fallbacks,
            "degraded": b.degraded,
            "prediction": b.predictions,
            "trip_id": b.trip_ids,
            "pickup_ts": b.pickup_s,
            "pickup_zone": b.pickup_zones,
            "dropoff_zone": b.dropoff_zones,
            **{f"f:{name}": b.features[name] for name in self.names},
        }
        if any(isinstance(v, str) or len(v) != n for v in values.values()):  # numpy would broadcast either
            raise ValueError(f"a batch of {n} predictions has a column of another length, or text for a column")
        if start + n > len(self.arrays["ts"]):
            self._grow(start + n)
        at = slice(start, start + n)
        for name, value in {**values, "target": b.target, "model": b.model, "version": b.version}.items():
            self.arrays[name][at] = value
        self.size += n

    def _grow(self, needed: int) -> None:
        capacity = max(needed, 2 * len(self.arrays["ts"]))
        for name, old in self.arrays.items():
            new = np.empty(capacity, old.dtype)
            new[: self.size] = old[: self.size]
            self.arrays[name] = new

    def table(self) -> pa.Table:
        """The records as a table of :data:`SCHEMA`."""
        a = {name: array[: self.size] for name, array in self.arrays.items()}
        text = {name: pa.array(a[name], type=pa.string()) for name, dtype in self.FIXED.items() if dtype == "O"}
        fragments = [_json_values(a[f"f:{name}"]) for name in self.names]
        columns = {
            **text,
            "ts": pa.array(a["ts"]).cast(SCHEMA.field("ts").type),
            "degraded": a["degraded"],
            "features": _json_objects(self.names, fragments, self.size),
            "prediction": a["prediction"],
            "pickup_ts": pa.array(a["pickup_ts"]).cast(SCHEMA.field("pickup_ts").type),
        }
        return pa.table({name: columns[name] for name in SCHEMA.names}, schema=SCHEMA)


class _Pending:
    """Submitted records not yet written: one :class:`_Columns` per feature set (names and their types)."""

    def __init__(self) -> None:
        self.by_features: dict[tuple[tuple[str, str], ...], _Columns] = {}
        self.size = 0

    def add(self, b: PredictionBatch) -> None:
        key = tuple((name, column.dtype.str) for name, column in b.features.items())
        columns = self.by_features.get(key)
        if columns is None:
            columns = self.by_features[key] = _Columns(b.features)
        columns.add(b)
        self.size += len(b)


def _write(folder: Path, pending: _Pending) -> list[Path]:
    parts = [columns.table() for columns in pending.by_features.values() if columns.size]
    if not parts:
        return []
    table = pa.concat_tables(parts)
    keys: dict[tuple[str, int], list[int]] = {}
    days = (table.column("ts").cast(pa.int64()).to_numpy() // 86_400_000_000).tolist()  # UTC days
    for i, key in enumerate(zip(table.column("city").to_pylist(), days, strict=True)):
        keys.setdefault(key, []).append(i)
    written = []
    for (city, epoch_day), rows in keys.items():
        day = date.fromordinal(EPOCH_ORDINAL + epoch_day).isoformat()
        part = table if len(keys) == 1 else table.take(pa.array(rows, type=pa.int64()))
        path = folder / f"city={city}" / f"date={day}" / f"part-{time.time_ns()}-{uuid.uuid4().hex[:8]}.parquet"
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        pq.write_table(part, tmp)
        os.replace(tmp, path)
        written.append(path)
    return written


EPOCH_ORDINAL = date(1970, 1, 1).toordinal()
_encode = json.JSONEncoder(allow_nan=False, separators=(",", ":")).encode


_quote = json.encoder.encode_basestring_ascii  # what JSONEncoder uses for a str (C, ASCII-only output)


def _json_value(v: Any) -> str:
    """One feature value as JSON text: a number, a string, or null where missing (NaN, None, infinite)."""
    if v is None:
        return "null"
    if isinstance(v, str):
        return _quote(v)
    if isinstance(v, bool | np.bool_):
        return "true" if v else "false"
    if isinstance(v, float | np.floating):
        return repr(float(v)) if np.isfinite(v) else "null"
    if isinstance(v, int | np.integer):
        return str(int(v))
    return _encode(v)


def _json_values(column: np.ndarray) -> pa.Array:
    """A feature column as JSON texts, one per row (:func:`_json_value`), numbers written by Arrow.

    The log's writer thread holds the GIL while it builds a flush, and every millisecond it holds
    it a request waits (serving's p99). Numbers become text in Arrow's C++ (shortest text that reads
    back as the same float; non-finite values null), which lets go of the GIL: a 1,000-row flush of
    a 28-feature model went from ~16 ms of Python to ~3 ms. Arrow writes the shortest text that
    reads back as the same float, so a whole number has no ``.0`` (``1.0`` reads back as ``1``,
    ``-0.0`` as ``0``): equal values, possibly Python ints. Other values (text, mixed) go one by
    one through :func:`_json_value`.
    """
    if column.dtype.kind == "f":
        finite = np.isfinite(column)
        numbers = pa.array(column.astype("float64", copy=False), mask=~finite)
        return pc.fill_null(pc.cast(numbers, pa.string()), "null")
    if column.dtype.kind in "iub":
        return pc.cast(pa.array(column), pa.string())
    return pa.array([_json_value(v) for v in column.tolist()], type=pa.string())


def _json_objects(names: Sequence[str], fragments: list[pa.Array], n: int) -> pa.Array:
    """The ``n`` rows' features as JSON objects, from the per-column texts of :func:`_json_values`."""
    if not names:
        return pa.array(["{}"] * n, type=pa.string())
    parts: list[Any] = ["{"]
    for i, (name, texts) in enumerate(zip(names, fragments, strict=True)):
        parts += [("," if i else "") + _quote(name) + ":", texts]
    parts.append("}")
    return pc.binary_join_element_wise(*parts, "")


class PredictionLog:
    """A bounded buffer of prediction batches and a thread that writes them.

    :meth:`submit` never blocks and never wakes the writer: it copies the batch into the pending
    columns (:class:`_Columns`) under a lock held for a few microseconds. The writer wakes every
    ``flush_s`` seconds, or as soon as ``batch`` records wait, takes the columns and writes them.
    (A queue woke the writer on every request; the two threads then traded the GIL on every
    predict, which cost more than the predict.) A batch that does not fit under ``max_queue``
    waiting records is dropped whole and its records counted (``dropped``). :meth:`close` flushes
    what is buffered.
    """

    def __init__(self, folder: Path, max_queue: int = 100_000, batch: int = 5_000, flush_s: float = 1.0) -> None:
        self.folder = folder
        self.max_queue = max_queue
        self.batch = batch
        self.flush_s = flush_s
        self.dropped = 0
        self.written = 0
        self.failed = 0
        self._buffer = _Pending()
        self._pending = 0  # buffered or being written
        self._lock = threading.Lock()
        self._wake = threading.Event()  # a full batch waits, or closing
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="prediction-log", daemon=True)
        self._thread.start()

    def submit(self, batches: Sequence[PredictionBatch]) -> int:
        """Buffer a request's batches; returns how many records were dropped for lack of room."""
        dropped = 0
        with self._lock:
            for b in batches:
                n = len(b)
                if self._pending + n > self.max_queue:
                    dropped += n
                    continue
                try:
                    self._buffer.add(b)
                except Exception:  # a malformed batch is a bug, never the request's failure
                    self.failed += n
                    log.exception("prediction log: a batch of %d records could not be buffered", n)
                    continue
                self._pending += n
            self.dropped += dropped
            full = self._buffer.size >= self.batch
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
        # Parquet's first write in a process spends a second or more setting up, much of it
        # holding the GIL: pay it now, not in the middle of serving.
        pq.write_table(pa.table({name: [] for name in SCHEMA.names}, schema=SCHEMA), pa.BufferOutputStream())
        while True:
            stopping = self._stop.is_set()
            if not stopping:
                self._wake.wait(self.flush_s)
                self._wake.clear()
            with self._lock:
                pending, self._buffer = self._buffer, _Pending()
            count = pending.size
            if count:
                try:
                    _write(self.folder, pending)
                    self.written += count
                except (OSError, pa.ArrowException, ValueError):
                    with self._lock:  # submit counts its failures under it too
                        self.failed += count
                    log.exception("prediction log: %d records could not be written to %s", count, self.folder)
                with self._lock:
                    self._pending -= count
            if stopping:
                return


def read_predictions(
    folder: Path, city: str, target: str | None = None, since: datetime | None = None
) -> list[dict[str, Any]]:
    """Logged predictions of a city (optionally one target, optionally since a time), oldest first.

    Each is a dict with the keys of :class:`PredictionRecord`, ``ts`` and ``pickup_ts`` as ISO text, ``features``
    as a dict; keys older logs lack are None.
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
            for r in pq.read_table(str(f)).to_pylist():
                r["ts"] = r["ts"].isoformat()
                r["features"] = json.loads(r["features"])
                r["pickup_ts"] = r["pickup_ts"].isoformat() if r.get("pickup_ts") is not None else None
                out.append(r)
    for r in out:
        for name in OPTIONAL:
            r.setdefault(name, None)
    if target is not None:
        out = [r for r in out if r.get("target") == target]
    if since is not None:
        out = [r for r in out if datetime.fromisoformat(r["ts"]) >= since]
    return sorted(out, key=lambda r: r["ts"])
