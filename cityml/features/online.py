"""The model input at request time: online Feast features plus request-time features.

Serving builds one :class:`OnlineReader` per FeatureService when a model loads and calls it for
every predict request; the parity check (``cityml features parity``) calls the same reader through
:func:`model_input`, so what it proves is what serving does.

The reader resolves the service once (its projections, their views, join keys and TTLs) and reads
the online store through Feast's provider, one ``online_read`` per feature view. Feast's own
``get_online_features`` rebuilds every FeatureView from the registry proto on every call; that was
nearly all of a request's time.

Feast's online store returns the latest value it holds, however old. Training (Feast's
historical retrieval) sees a value only while it is younger than its view's TTL. To serve what
training saw, a value older than the TTL at the request's pickup time is dropped here.

A store that fails (Redis down, a locked SQLite file) does not fail the request: its values are
missing, as they are in training when a view has no row, and the rows say so (``missing``). After
a failure the store is left alone for ``retry_s`` seconds, so that requests do not each wait for a
dead server.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
from redis.exceptions import RedisError

from cityml.features.featurestore import entity_keys
from cityml.features.request_features import CityContexts, TripRows, request_columns

if TYPE_CHECKING:
    from feast import FeatureService, FeatureStore, FeatureView

log = logging.getLogger(__name__)

#: What a failing online store raises: Redis down or timing out, a locked or missing SQLite file.
STORE_ERRORS: tuple[type[Exception], ...] = (RedisError, sqlite3.Error, OSError)

TS_SUFFIX = "__ts"  # Feast's suffix for a feature's event timestamp (epoch seconds)


@dataclass(frozen=True)
class Projection:
    """One projection of a service: which view, keyed by which request column, giving which columns."""

    view: str
    entity: str  # the request's key column (after the projection's join-key map), e.g. pickup_zone_key
    join_key: str  # the view's own join key, e.g. zone_key
    features: tuple[str, ...]
    columns: tuple[str, ...]  # output names, ``<projection>__<feature>``
    ttl_s: float | None
    positions: tuple[int, ...]  # where each feature sits in a row of the view (all its features, in order)


@dataclass
class OnlineRows:
    """Online values for ``n`` rows: one float column per service feature (NaN where missing)."""

    columns: dict[str, np.ndarray]
    missing: np.ndarray  # per row: a view had no value within its TTL, or the store failed
    error: str | None = None  # why the store could not be read, when it could not


@dataclass
class Breaker:
    """Shared by the readers of one store: after a failure, skip it for ``retry_s`` seconds."""

    retry_s: float = 5.0
    _until: float = 0.0
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def open(self) -> bool:
        return time.monotonic() < self._until

    def trip(self) -> None:
        with self._lock:
            self._until = time.monotonic() + self.retry_s


class RowCache:
    """The online store's latest row per (view, key), kept at most ``seconds`` after it was read.

    A row's event timestamp comes with it, so the TTL rule is applied to a cached row exactly as to
    a fresh one; what the cache can delay is only a newer row materialized meanwhile, by at most
    ``seconds`` (materialization runs hourly). Bounded to ``max_rows``: past it, it starts over.
    """

    def __init__(self, seconds: float, max_rows: int = 200_000) -> None:
        self.seconds = seconds
        self.max_rows = max_rows
        self._rows: dict[tuple[str, str], tuple[float, tuple[float, tuple[float, ...]] | None]] = {}

    def get(self, view: str, key: str) -> tuple[bool, tuple[float, tuple[float, ...]] | None]:
        hit = self._rows.get((view, key))
        if hit is None or time.monotonic() - hit[0] > self.seconds:
            return False, None
        return True, hit[1]

    def put(self, view: str, key: str, row: tuple[float, tuple[float, ...]] | None) -> None:
        if len(self._rows) >= self.max_rows:
            self._rows = {}
        self._rows[(view, key)] = (time.monotonic(), row)


class OnlineReader:
    """A FeatureService's online values, read from the online store with the training TTLs.

    ``cache``: rows read recently (serving passes one; the parity check reads fresh, no cache).
    """

    def __init__(
        self,
        store: FeatureStore,
        service: FeatureService,
        breaker: Breaker | None = None,
        cache: RowCache | None = None,
    ) -> None:
        self._store = store
        self._cache = cache
        self._provider = store._get_provider()  # Feast's own online path, minus the per-call registry work
        self._breaker = breaker or Breaker()
        self.service = service.name
        self.projections: list[Projection] = []
        self._views: dict[str, FeatureView] = {}
        # A view's row, read and cached, holds all its features in the view's order, so that
        # readers of different services share cached rows and pick their columns by position.
        self._row_features: dict[str, tuple[str, ...]] = {}
        for p in service.feature_view_projections:
            view = self._views.setdefault(p.name, store.get_feature_view(p.name))
            (join_key,) = view.join_keys  # every cityml view has one entity
            ttl = view_ttl_s(view)
            names = tuple(f.name for f in p.features)
            row = self._row_features.setdefault(p.name, tuple(f.name for f in view.features))
            alias = p.name_to_use()
            self.projections.append(
                Projection(
                    view=p.name,
                    entity=p.join_key_map.get(join_key, join_key),
                    join_key=join_key,
                    features=names,
                    columns=tuple(f"{alias}__{n}" for n in names),
                    ttl_s=ttl,
                    positions=tuple(row.index(n) for n in names),
                )
            )
        self.names = [c for p in self.projections for c in p.columns]
        self._by_view: dict[str, list[Projection]] = {}
        for projection in self.projections:
            self._by_view.setdefault(projection.view, []).append(projection)

    def read(self, keys: Mapping[str, Any], at_s: np.ndarray) -> OnlineRows:
        """Values for rows with entity keys ``keys`` (``city``, ``pickup_zone_key``...) at pickup times ``at_s``."""
        n = len(at_s)
        block = np.full((len(self.names), n), np.nan)  # one allocation; a column is a row of it
        columns = dict(zip(self.names, block, strict=True))
        missing = np.zeros(n, dtype=bool)
        if n == 0:
            return OnlineRows(columns, missing)
        if self._breaker.open():
            return OnlineRows(columns, np.ones(n, dtype=bool), "online store skipped after a recent failure")
        try:
            for view, projections in self._by_view.items():
                self._read_view(view, projections, keys, np.asarray(at_s, dtype="float64"), columns, missing)
        except STORE_ERRORS as exc:
            self._breaker.trip()
            log.warning("online store read failed (%s: %s); serving without online features", type(exc).__name__, exc)
            return OnlineRows({k: np.full(n, np.nan) for k in columns}, np.ones(n, dtype=bool), str(exc) or repr(exc))
        return OnlineRows(columns, missing)

    def _read_view(
        self,
        view: str,
        projections: list[Projection],
        keys: Mapping[str, Any],
        at_s: np.ndarray,
        columns: dict[str, np.ndarray],
        missing: np.ndarray,
    ) -> None:
        from feast.protos.feast.types.EntityKey_pb2 import EntityKey
        from feast.protos.feast.types.Value_pb2 import Value

        # The view once, for the keys of all its projections (pickup and dropoff read one zone view).
        wanted = list(dict.fromkeys(k for p in projections for k in keys[p.entity]))
        found: dict[str, Row] = {}
        if self._cache is not None:
            for key in wanted:
                cached, row = self._cache.get(view, key)
                if cached:
                    found[key] = row
            wanted = [k for k in wanted if k not in found]
        if wanted:
            features = list(self._row_features[view])
            join_key = projections[0].join_key
            entity_keys = [EntityKey(join_keys=[join_key], entity_values=[Value(string_val=k)]) for k in wanted]
            rows = self._provider.online_read(
                config=self._store.config, table=self._views[view], entity_keys=entity_keys, requested_features=features
            )
            for key, (ts, values) in zip(wanted, rows, strict=True):
                row = None
                if ts is not None and values is not None:
                    stamp = (ts if ts.tzinfo is not None else ts.replace(tzinfo=UTC)).timestamp()
                    row = (float(int(stamp)), tuple(_number(values.get(name)) for name in features))
                found[key] = row
                if self._cache is not None:
                    self._cache.put(view, key, row)
        for p in projections:
            hits = [found.get(key) for key in keys[p.entity]]
            if len(hits) <= FEW_ROWS:
                _fill_rows(p, hits, at_s, columns, missing)
            else:
                _fill_columns(p, hits, at_s, columns, missing, len(self._row_features[view]))


#: Up to this many rows, values are filled one by one: numpy's per-call cost is more than a
#: request's few rows take in plain Python. Both fills apply the same rule (a test reads the same
#: rows both ways).
FEW_ROWS = 16

Row = tuple[float, tuple[float, ...]] | None  # (event time, the view's values in its order), None: no row


def _fill_rows(
    p: Projection, hits: list[Row], at_s: np.ndarray, columns: dict[str, np.ndarray], missing: np.ndarray
) -> None:
    for i, hit in enumerate(hits):
        if hit is None or (p.ttl_s is not None and at_s[i] - hit[0] > p.ttl_s):
            missing[i] = True
            continue
        values = hit[1]
        for j, column in zip(p.positions, p.columns, strict=True):
            columns[column][i] = values[j]


def _fill_columns(
    p: Projection, hits: list[Row], at_s: np.ndarray, columns: dict[str, np.ndarray], missing: np.ndarray, width: int
) -> None:
    stamps = np.array([np.nan if h is None else h[0] for h in hits], dtype="float64")
    fresh = ~np.isnan(stamps)
    if p.ttl_s is not None:
        fresh[fresh] = at_s[fresh] - stamps[fresh] <= p.ttl_s
    missing |= ~fresh
    if not fresh.any():
        return
    gone = (np.nan,) * width
    table = np.array([gone if h is None else h[1] for h in hits], dtype="float64")
    for j, column in zip(p.positions, p.columns, strict=True):
        columns[column][fresh] = table[fresh, j]


def view_ttl_s(view: FeatureView) -> float | None:
    """How long a view's value stays valid after its event time, as training's retrieval applies it."""
    return view.ttl.total_seconds() if view.ttl else None


def _number(value: Any) -> float:
    """A Feast ValueProto as a float; NaN when absent, unset or null."""
    if value is None:
        return np.nan
    kind = value.WhichOneof("val")
    if kind is None or kind == "null_val":
        return np.nan
    try:
        return float(getattr(value, kind))
    except (TypeError, ValueError):
        return np.nan


class OnlineFeatures:
    """Readers by FeatureService name, built once each, sharing the store's :class:`Breaker`."""

    def __init__(self, store: FeatureStore, retry_s: float = 5.0, cache_s: float = 0.0) -> None:
        self.store = store
        self.breaker = Breaker(retry_s)
        self.cache = RowCache(cache_s) if cache_s > 0 else None
        self._readers: dict[str, OnlineReader] = {}
        self._lock = threading.Lock()
        _fail_fast(store)

    def reader(self, service: str) -> OnlineReader:
        with self._lock:
            if service not in self._readers:
                service_def = self.store.get_feature_service(service)
                self._readers[service] = OnlineReader(self.store, service_def, self.breaker, self.cache)
            return self._readers[service]


def _fail_fast(store: FeatureStore) -> None:
    """A Redis online store that is down answers at once, instead of after redis-py's retries."""
    if getattr(store.config.online_store, "type", "") != "redis":
        return
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    online: Any = store._get_provider().online_store
    client = online._get_client(store.config.online_store)
    client.connection_pool.connection_kwargs.update(socket_connect_timeout=0.5, socket_timeout=0.5)
    client.set_retry(Retry(NoBackoff(), 0))


def model_columns(
    reader: OnlineReader, rows: TripRows, contexts: CityContexts
) -> tuple[dict[str, np.ndarray], OnlineRows]:
    """Every input column a model of ``reader``'s service can take, for ``rows``: request-time and online."""
    online = reader.read(entity_keys(rows.city, rows.pickup_zone, rows.dropoff_zone), rows.pickup_s)
    return {**request_columns(rows, contexts), **online.columns, "city": rows.city}, online


def model_input(reader: OnlineReader, df: pd.DataFrame, contexts: CityContexts) -> pd.DataFrame:
    """Feature rows, on ``df``'s index, for trips with city, pickup_ts, zones and coordinates."""
    columns, _ = model_columns(reader, TripRows.from_frame(df), contexts)
    columns.pop("city")
    return pd.DataFrame(columns, index=df.index)
