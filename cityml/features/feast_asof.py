"""A Feast offline store whose point-in-time joins are DuckDB ``ASOF LEFT JOIN``s.

Feast's own DuckDB store joins each entity row with every feature row of its key inside the
TTL, ranks them and joins back on a string row id: 8.5-10x a plain ``ASOF JOIN`` on a million
rows (``bench/RESULTS.md``). :class:`AsofDuckDBOfflineStore` answers ``get_historical_features``
with one sort-merge ``ASOF LEFT JOIN`` per feature view instead, the SQL generated from the
views, so training keeps calling ``store.get_historical_features(features=service, ...)`` and
names, keys, sources and TTLs come from ``feature_repo/`` only. Everything else (materialize,
pull_latest, writing) is the stock DuckDB store. Selected in ``feature_store.yaml``::

    offline_store:
      type: cityml.features.feast_asof.AsofDuckDBOfflineStore

Semantics, as Feast's DuckDB store: for each entity row, the latest feature row with the same
join key and ``event_timestamp <= entity timestamp`` (of several with that timestamp, the latest
created); its values are NULL when that row is older than the view's TTL (``feature ts <
entity ts - ttl``), or when there is none. Entity timestamps without a time zone are UTC.
Every entity row comes back once, with its own columns unchanged; the row order is not kept
(as with Feast's stores), so callers join back on a key of their own.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import duckdb
import pandas as pd
import pyarrow as pa
from feast.errors import FeastEntityDFMissingColumnsError
from feast.infra.offline_stores.duckdb import DuckDBOfflineStore, DuckDBOfflineStoreConfig
from feast.infra.offline_stores.file_source import FileSource
from feast.infra.offline_stores.offline_store import RetrievalJob, RetrievalMetadata
from feast.infra.offline_stores.offline_utils import infer_event_timestamp_from_entity_df

if TYPE_CHECKING:
    from feast import FeatureService, FeatureStore, FeatureView
    from feast.infra.registry.base_registry import BaseRegistry
    from feast.repo_config import RepoConfig


@dataclass(frozen=True)
class JoinSpec:
    """One feature view projection to join: where its rows are and what comes out."""

    path: str
    keys: dict[str, str]  # feature table column -> entity column
    timestamp: str
    created: str | None
    ttl: timedelta | None
    features: list[tuple[str, str]]  # (source column, output column)


def specs_from_views(
    feature_views: list[FeatureView], feature_refs: list[str], full_feature_names: bool, repo_path: str | Path
) -> list[JoinSpec]:
    """Join specs for views as Feast hands them to an offline store (projections applied)."""
    specs = []
    for view in feature_views:
        source = view.batch_source
        if not isinstance(source, FileSource):
            raise TypeError(f"{view.name}: only file sources are supported, not {type(source).__name__}")
        prefix = view.projection.name_to_use()
        names = [ref.split(":", 1)[1] for ref in feature_refs if ref.startswith(f"{prefix}:")]
        out = view.projection.name_alias or view.name
        specs.append(
            JoinSpec(
                path=str(FileSource.get_uri_for_file_path(repo_path=str(repo_path), uri=source.path)),
                keys=view.projection.join_key_map or {e.name: e.name for e in view.entity_columns},
                timestamp=source.timestamp_field,
                created=source.created_timestamp_column or None,
                ttl=view.ttl or None,
                features=[(n, f"{out}__{n}" if full_feature_names else n) for n in names],
            )
        )
    return specs


def specs_from_service(store: FeatureStore, service: FeatureService) -> list[JoinSpec]:
    """Join specs for a FeatureService, read from the store's registry (full feature names)."""
    views = []
    refs = []
    for projection in service.feature_view_projections:
        view = store.get_feature_view(projection.name).with_projection(projection)
        views.append(view)
        refs += [f"{projection.name_to_use()}:{f.name}" for f in projection.features]
    return specs_from_views(views, refs, True, store.repo_path)


def _q(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


#: Entity column -> (smallest, largest) key of the entity rows: the feature rows worth reading.
KeyRanges = dict[str, tuple[str, str]]


def _lit(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def key_ranges(entity_df: pd.DataFrame, columns: set[str]) -> KeyRanges:
    """The range of each text key column's values in ``entity_df`` (columns without a value are left out).

    cityml's feature tables are sorted by key and keys start with the city (``<city>:<zone>``), so
    the rows of a few cities are a narrow range: a scan filtered to it reads only the parquet row
    groups that hold those cities (their min/max statistics say which) — a run of one city's
    trips no longer reads every city's feature rows.
    """
    out: KeyRanges = {}
    for column in sorted(columns):
        values = entity_df[column].dropna()
        if len(values) and all(isinstance(v, str) for v in (values.iloc[0], values.iloc[-1])):
            texts = values.astype(str)
            out[column] = (str(texts.min()), str(texts.max()))
    return out


def asof_sql(
    specs: list[JoinSpec], entity: str, event_timestamp: str, dedupe: bool = False, ranges: KeyRanges | None = None
) -> str:
    """``SELECT entity.*, features`` with one ASOF LEFT JOIN per spec.

    ``dedupe`` keeps one row per (key, timestamp), the latest created, as Feast does; it is
    needed only when a source can hold several versions of a row (cityml's tables cannot).
    ``ranges`` (:func:`key_ranges`) reads only feature rows whose key lies in the entity rows' range:
    no row outside it can match, so the answer is the same.
    """
    ts = f"e.{_q(event_timestamp)}"
    columns = ["e.*"]
    joins = []
    for i, spec in enumerate(specs):
        alias = f"f{i}"
        source = f"read_parquet({_lit(spec.path)})"
        bounds = [
            f"{_q(col)} BETWEEN {_lit(lo)} AND {_lit(hi)}"
            for col, entity_col in spec.keys.items()
            if entity_col in (ranges or {})
            for lo, hi in [(ranges or {})[entity_col]]
        ]
        if bounds:
            source = f"(SELECT * FROM {source} WHERE {' AND '.join(bounds)})"
        if dedupe and spec.created:
            partition = ", ".join(_q(k) for k in [*spec.keys, spec.timestamp])
            source = (
                f"(SELECT * FROM {source} QUALIFY row_number() OVER "
                f"(PARTITION BY {partition} ORDER BY {_q(spec.created)} DESC) = 1)"
            )
        on = [f"e.{_q(entity_col)} = {alias}.{_q(col)}" for col, entity_col in spec.keys.items()]
        on.append(f"{ts} >= {alias}.{_q(spec.timestamp)}")
        joins.append(f"ASOF LEFT JOIN {source} AS {alias} ON {' AND '.join(on)}")
        fresh = (
            f"{alias}.{_q(spec.timestamp)} >= {ts} - INTERVAL {int(spec.ttl.total_seconds())} SECOND"
            if spec.ttl
            else f"{alias}.{_q(spec.timestamp)} IS NOT NULL"
        )
        columns += [f"CASE WHEN {fresh} THEN {alias}.{_q(src)} END AS {_q(out)}" for src, out in spec.features]
    return f"SELECT {', '.join(columns)}\nFROM {entity} AS e\n" + "\n".join(joins)


def run_asof(entity_df: pd.DataFrame, sql: str, con: duckdb.DuckDBPyConnection | None = None) -> pa.Table:
    """Run ``sql`` (which reads the relation ``entity_df``) over a pandas entity frame.

    The session time zone is UTC, so that a feature table stored without a time zone is read
    as UTC, as Feast does, whatever the machine's local zone.
    """
    con = con or duckdb.connect()
    con.execute("SET TimeZone = 'UTC'")
    con.register("entity_df", entity_df)
    try:
        return con.sql(sql).to_arrow_table()
    finally:
        con.unregister("entity_df")


def _utc(entity_df: pd.DataFrame, column: str) -> pd.DataFrame:
    """``entity_df`` with ``column`` as a UTC timestamp (naive means UTC, as in Feast)."""
    stamps = entity_df[column]
    if isinstance(stamps.dtype, pd.DatetimeTZDtype) and str(stamps.dt.tz) == "UTC":
        return entity_df
    out = entity_df.copy(deep=False)
    out[column] = pd.to_datetime(stamps, utc=True)
    return out


class AsofRetrievalJob(RetrievalJob):
    """A retrieval that runs one ASOF query when its result is asked for."""

    def __init__(self, entity_df: pd.DataFrame, sql: str, full_feature_names: bool, metadata: RetrievalMetadata):
        super().__init__()
        self._entity_df = entity_df
        self._sql = sql
        self._full_feature_names = full_feature_names
        self._metadata = metadata

    def _to_arrow_internal(self, timeout: int | None = None) -> pa.Table:
        return run_asof(self._entity_df, self._sql)

    def _to_df_internal(self, timeout: int | None = None) -> pd.DataFrame:
        return self._to_arrow_internal(timeout).to_pandas()

    def to_sql(self) -> str:
        return self._sql

    @property
    def full_feature_names(self) -> bool:
        return self._full_feature_names

    @property
    def on_demand_feature_views(self) -> list:
        return []

    @property
    def metadata(self) -> RetrievalMetadata | None:
        return self._metadata


class AsofDuckDBOfflineStoreConfig(DuckDBOfflineStoreConfig):
    """``offline_store: {type: cityml.features.feast_asof.AsofDuckDBOfflineStore}``; the DuckDB store's options."""

    type: str = "cityml.features.feast_asof.AsofDuckDBOfflineStore"


class AsofDuckDBOfflineStore(DuckDBOfflineStore):
    """Feast's DuckDB offline store with historical retrieval done by ASOF joins.

    What it does not cover falls back to the stock DuckDB implementation, unchanged: an SQL
    string as the entity frame, the created-timestamp cutoff, field mappings, sources other
    than files, and on-demand feature views (cityml computes request-time features in
    ``cityml.features.request_features`` instead).
    """

    @staticmethod
    def get_historical_features(
        config: RepoConfig,
        feature_views: list[FeatureView],
        feature_refs: list[str],
        entity_df: pd.DataFrame | str,
        registry: BaseRegistry,
        project: str,
        full_feature_names: bool = False,
        filter_by_created_timestamp: bool = False,
    ) -> RetrievalJob:
        simple = (
            isinstance(entity_df, pd.DataFrame)
            and not filter_by_created_timestamp
            and all(isinstance(v.batch_source, FileSource) and not v.batch_source.field_mapping for v in feature_views)
        )
        if not simple:
            return DuckDBOfflineStore.get_historical_features(
                config,
                feature_views,
                feature_refs,
                entity_df,
                registry,
                project,
                full_feature_names,
                filter_by_created_timestamp,
            )
        assert isinstance(entity_df, pd.DataFrame)
        ts_col = infer_event_timestamp_from_entity_df(dict(zip(entity_df.columns, entity_df.dtypes, strict=True)))
        specs = specs_from_views(feature_views, feature_refs, full_feature_names, config.repo_path or ".")
        needed = {col for spec in specs for col in spec.keys.values()}
        missing = needed - set(entity_df.columns)
        if missing:
            raise FeastEntityDFMissingColumnsError(needed, missing)
        entity_df = _utc(entity_df, ts_col)
        sql = asof_sql(specs, "entity_df", ts_col, dedupe=True, ranges=key_ranges(entity_df, needed))
        stamps: Any = entity_df[ts_col]
        metadata = RetrievalMetadata(
            features=feature_refs,
            keys=[c for c in entity_df.columns if c != ts_col],
            min_event_timestamp=stamps.min().to_pydatetime() if len(stamps) else None,
            max_event_timestamp=stamps.max().to_pydatetime() if len(stamps) else None,
        )
        return AsofRetrievalJob(entity_df, sql, full_feature_names, metadata)
