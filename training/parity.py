"""Training/serving parity: the vector training saw for a trip against the one serving builds.

For a sample of a city's trips, the whole model input is compared — the request-time features
(zones included) as well as the Feast ones. The historical vector comes from Feast's point-in-time join
(``training.datasets.historical_model_input``) and the online vector from ``cityml.features.online.model_input``
— the function the API calls — after materializing a scratch online store up to each trip's
pickup hour, as the hourly DAG would have. Any feature that differs beyond float tolerance is a
mismatch.

The scratch store is SQLite with a copy of the registry, so the check never writes past values
into the live online store (Redis or SQLite). The Redis backend itself is covered by the
integration tests.
"""

from __future__ import annotations

import contextlib
import io
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
from feast import FeatureView, FileSource

from cityml.catalog import Catalog, load_catalog
from cityml.data.trips import read_trips
from cityml.features.featurestore import get_store, materialize
from cityml.features.online import OnlineReader, model_input
from cityml.naming import feature_service_name
from cityml.settings import Settings
from training.datasets import historical_model_input

if TYPE_CHECKING:
    from feast import FeatureService, FeatureStore

RTOL = 1e-9
ATOL = 1e-9


def _mismatch(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a_nan, b_nan = np.isnan(a), np.isnan(b)
    close = np.isclose(np.nan_to_num(a), np.nan_to_num(b), rtol=RTOL, atol=ATOL)
    return (a_nan != b_nan) | (~a_nan & ~b_nan & ~close)


def service_signature(service: FeatureService) -> tuple[Any, ...]:
    """What a service's vectors are made of: two services with the same signature build the same vectors.

    The promotion gate checks parity once per city and signature, not once per model: ``eta_v1``
    and ``price_v1`` hold the same features today, and their check would repeat the same work.
    """
    return tuple(
        (p.name, p.name_to_use(), tuple(sorted((p.join_key_map or {}).items())), tuple(f.name for f in p.features))
        for p in service.feature_view_projections
    )


def _pick(trips: pd.DataFrame, sample: int, hours: int | None, seed: int) -> pd.DataFrame:
    """``sample`` trips, from at most ``hours`` random pickup hours when given.

    Every distinct pickup hour costs one materialization of the scratch store, which is most of
    the check's time; the gate samples few hours, the CLI (``hours=None``) any hour.
    """
    if hours is not None:
        hour = trips["pickup_ts"].dt.floor("h")
        distinct = hour.drop_duplicates()
        chosen = distinct.sample(n=min(hours, len(distinct)), random_state=seed)
        trips = trips[hour.isin(chosen)]
    return trips.sample(n=min(sample, len(trips)), random_state=seed).sort_values("pickup_ts")


def parity_check(
    settings: Settings,
    city: str,
    sample: int = 200,
    target: str = "eta",
    seed: int = 0,
    hours: int | None = None,
    *,
    store: FeatureStore | None = None,
    catalog: Catalog | None = None,
) -> dict[str, Any]:
    """Compare historical and online feature vectors for ``sample`` trips of ``city``.

    With ``hours``, the trips come from that many random pickup hours (see :func:`_pick`).
    Returns a JSON-safe report: mismatches per feature, the total, and up to 10 examples.
    """
    catalog = catalog or load_catalog(settings.catalog_path)
    catalog.get(city)
    contexts = catalog.contexts()
    trips = read_trips(settings.trips_dir, [city])
    if trips.empty:
        raise ValueError(f"no stored trips for city {city!r}")
    picked = _pick(trips, sample, hours, seed).reset_index(drop=True)

    store = store or get_store(settings)
    service_name = feature_service_name(target)
    historical = historical_model_input(store, store.get_feature_service(service_name), picked, contexts)

    with tempfile.TemporaryDirectory(prefix="cityml-parity-") as tmp:
        scratch = settings.model_copy(update={"home": Path(tmp), "online_store": "sqlite"})
        scratch.feast_state_dir.mkdir(parents=True)
        shutil.copy2(settings.feast_state_dir / "registry.db", scratch.feast_state_dir / "registry.db")
        sstore = get_store(scratch)
        # The scratch views read this city's rows only: materializing every city's features for each sampled
        # hour made the check grow with the catalog (20-29 s a city at 100 cities, against ~1 s at 3). Then the
        # scratch online tables are created (what `feast apply` does for the live store).
        join_keys = {e.name: e.join_key for e in sstore.list_entities()}
        views = [_city_rows(view, city, Path(tmp), join_keys) for view in sstore.list_feature_views()]
        sstore.apply([*sstore.list_entities(), *views])
        service = sstore.get_feature_service(service_name)
        reader = OnlineReader(sstore, service)
        longest = max(ttl for ttl in (sstore.get_feature_view(p.view).ttl for p in reader.projections) if ttl)
        parts = []
        previous = None
        # Feature rows are stamped on the hour: materializing to a pickup's hour is what serving had.
        for hour, group in picked.groupby(picked["pickup_ts"].dt.floor("h"), sort=True):
            start = previous if previous is not None else hour - longest
            with contextlib.redirect_stdout(io.StringIO()):  # Feast prints progress
                materialize(scratch, end=hour.to_pydatetime(), start=start.to_pydatetime())
            previous = hour
            parts.append(model_input(reader, group, contexts))
        online = pd.concat(parts).reindex(picked.index)
    get_store(settings)  # restore the Feast environment of the live settings

    counts: dict[str, int] = {}
    examples: list[dict[str, Any]] = []
    for name in online.columns:
        a, b = _values(historical[name]), _values(online[name])
        bad = _mismatch(a, b) if a.dtype.kind == "f" else a != b
        counts[name] = int(bad.sum())
        for i in np.flatnonzero(bad)[: max(0, 10 - len(examples))]:
            examples.append(
                {
                    "trip_id": picked.at[i, "trip_id"],
                    "pickup_ts": picked.at[i, "pickup_ts"].isoformat(),
                    "feature": name,
                    "training": _json(a[i]),
                    "serving": _json(b[i]),
                }
            )
    return {
        "city": city,
        "feature_service": service_name,
        "samples": len(picked),
        "hours": int(picked["pickup_ts"].dt.floor("h").nunique()),
        "features": counts,
        "mismatches": int(sum(counts.values())),
        "examples": examples,
    }


def _city_rows(view: FeatureView, city: str, folder: Path, join_keys: dict[str, str]) -> FeatureView:
    """``view`` reading a copy of its offline table with ``city``'s rows only (entity keys are the city's slug or
    start with ``<slug>:``, ``cityml.naming``); Feast's own materialization then loads just those. ``join_keys``:
    the join key of each entity by name, for a view that does not list its entity columns."""
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    source = view.batch_source
    keys = list(view.join_keys) or [join_keys[e] for e in view.entities if e in join_keys]
    if not isinstance(source, FileSource) or len(keys) != 1:
        return view
    # The tables are sorted by key in small row groups (cityml.features.feature_tables): a range holding every key
    # of the city lets parquet skip the other cities' row groups (the range also holds e.g. ``<city>-2``'s keys,
    # which the exact test below drops). Reading the whole table cost ~1 s per view and city at 1,000 cities.
    near = (pc.field(keys[0]) >= city) & (pc.field(keys[0]) < f"{city};")  # ";" follows ":" in code order
    table = pq.read_table(source.path, filters=near)
    column = table[keys[0]]
    mine = pc.or_(pc.equal(column, city), pc.starts_with(column, f"{city}:"))
    copy = folder / f"{view.name}.parquet"
    pq.write_table(table.filter(mine), copy)
    source.file_options.uri = str(copy)
    return view


def _values(column: pd.Series) -> np.ndarray:
    """Numbers as float64; names (the zones) as text, missing as the empty string."""
    if column.dtype == object or isinstance(column.dtype, pd.CategoricalDtype | pd.StringDtype):
        return column.astype(object).where(column.notna(), "").astype(str).to_numpy()
    return column.to_numpy(dtype="float64")


def _json(value: Any) -> Any:
    if isinstance(value, str):
        return value or None
    return None if np.isnan(value) else float(value)
