"""Request-time features: computed from the request itself, identically in training and serving.

Training calls :func:`request_features` on historical trips; serving calls it on the
instances of a predict request. There is no second copy of this code anywhere.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from dataclasses import dataclass, fields
from datetime import date, datetime
from zoneinfo import ZoneInfo

import numpy as np
import pandas as pd

from cityml.catalog import CityContext
from cityml.geo import bearing_deg, haversine_km

#: The request's zones, as given (or placed from coordinates): city models take them as
#: categorical features (``cityml.modeling``), fleet models do not (zone names are city-local).
ZONE_FEATURES: tuple[str, ...] = ("pickup_zone", "dropoff_zone")

#: The areas (boroughs, districts: the catalog's ``zone_areas``) of the pickup and dropoff zones, as
#: one category ``"<pickup area>><dropoff area>"``: a handful of values where zones are hundreds, so
#: a city with few trips per zone still learns how long a trip between two boroughs takes.
AREA_PAIR = "area_pair"

#: Categorical features whose values mean something in one city only: the fleet model leaves them out.
CITY_LOCAL_FEATURES: tuple[str, ...] = (*ZONE_FEATURES, AREA_PAIR)

#: Names of the columns :func:`request_features` adds, in order.
REQUEST_FEATURES: tuple[str, ...] = (
    "distance_km",
    "bearing_deg",
    "local_hour",
    "local_weekday",
    "is_weekend",
    "is_holiday",
    *ZONE_FEATURES,
    AREA_PAIR,
)


#: Request features that only depend on the calendar date. A drift window shorter than a week
#: always differs from the reference in them, so drift reports but does not judge them.
CALENDAR_FEATURES: frozenset[str] = frozenset({"local_weekday", "is_weekend", "is_holiday"})


#: City slug to its context; a bare timezone name is a city without holidays or zone areas.
CityContexts = Mapping[str, "CityContext | str"]


@functools.lru_cache(maxsize=512)
def holiday_dates(code: str, year: int) -> frozenset[date]:
    """Public holidays of ``code`` (``US``, ``US-NY``, ``PT``...) in ``year``, by the ``holidays`` package.

    Raises ``ValueError`` naming the code when the package does not know it.
    """
    import holidays

    country, _, subdivision = code.partition("-")
    try:
        found = holidays.country_holidays(country, subdiv=subdivision or None, years=year)
    except NotImplementedError as exc:  # what the package raises for a country or subdivision it lacks
        raise ValueError(f"unknown holiday calendar {code!r}: {exc}") from exc
    return frozenset(found)


def holiday_flags(pickup_s: np.ndarray, context: CityContext) -> np.ndarray:
    """1.0 where the local date of a pickup is a public holiday, 0.0 where not; NaN for a city without a
    holiday calendar (unknown, not "no holiday")."""
    n = len(pickup_s)
    if context.holidays is None:
        return np.full(n, np.nan)
    zone = ZoneInfo(context.timezone)
    if n <= LOOP_ROWS:
        days = [datetime.fromtimestamp(int(s), zone).date() for s in pickup_s]
    else:
        stamps = pd.DatetimeIndex(pd.to_datetime(np.asarray(pickup_s, dtype="int64"), unit="s", utc=True))
        days = list(stamps.tz_convert(zone).date)
    code = context.holidays
    return np.fromiter((d in holiday_dates(code, d.year) for d in days), dtype="float64", count=n)


def _coords(df: pd.DataFrame, name: str) -> np.ndarray:
    if name not in df.columns:
        return np.full(len(df), np.nan)
    return pd.to_numeric(df[name], errors="coerce").to_numpy(dtype="float64")


@dataclass(frozen=True)
class TripRows:
    """Trips or request instances as columns: what request-time features are computed from.

    ``pickup_s`` is the pickup time in epoch seconds; coordinates and ``distance_km`` are float
    (NaN where not given); zones are text or None.
    """

    city: np.ndarray
    pickup_s: np.ndarray
    pickup_lat: np.ndarray
    pickup_lon: np.ndarray
    dropoff_lat: np.ndarray
    dropoff_lon: np.ndarray
    distance_km: np.ndarray
    pickup_zone: np.ndarray
    dropoff_zone: np.ndarray

    def __len__(self) -> int:
        return len(self.city)

    def take(self, index: np.ndarray) -> TripRows:
        """The rows at positions ``index``."""
        return TripRows(**{f.name: getattr(self, f.name)[index] for f in fields(self)})

    @classmethod
    def from_frame(cls, df: pd.DataFrame) -> TripRows:
        ts = pd.to_datetime(df["pickup_ts"], utc=True)
        return cls(
            city=df["city"].astype(str).to_numpy(dtype=object),
            pickup_s=((ts - EPOCH) // pd.Timedelta(seconds=1)).to_numpy(dtype="int64"),
            pickup_lat=_coords(df, "pickup_lat"),
            pickup_lon=_coords(df, "pickup_lon"),
            dropoff_lat=_coords(df, "dropoff_lat"),
            dropoff_lon=_coords(df, "dropoff_lon"),
            distance_km=_coords(df, "distance_km"),
            pickup_zone=_zones(df, "pickup_zone"),
            dropoff_zone=_zones(df, "dropoff_zone"),
        )


EPOCH = pd.Timestamp(0, tz="UTC")
#: Up to this many rows of one city, local times come from ``datetime`` one by one (a request);
#: above it, from pandas in one pass (a training set). Both read the same zoneinfo rules.
LOOP_ROWS = 256


def local_calendar(pickup_s: np.ndarray, tz: str) -> tuple[np.ndarray, np.ndarray]:
    """Local hour and weekday (Monday 0) of epoch seconds in the IANA timezone ``tz``."""
    zone = ZoneInfo(tz)
    if len(pickup_s) <= LOOP_ROWS:
        local = [datetime.fromtimestamp(int(s), zone) for s in pickup_s]
        return (
            np.fromiter((t.hour for t in local), dtype="int64", count=len(local)),
            np.fromiter((t.weekday() for t in local), dtype="int64", count=len(local)),
        )
    stamps = pd.DatetimeIndex(pd.to_datetime(np.asarray(pickup_s, dtype="int64"), unit="s", utc=True)).tz_convert(zone)
    return stamps.hour.to_numpy(dtype="int64"), stamps.weekday.to_numpy(dtype="int64")


def request_columns(rows: TripRows, contexts: CityContexts) -> dict[str, np.ndarray]:
    """The request-time feature columns (:data:`REQUEST_FEATURES`) of ``rows``, by name.

    Distance is the straight line between the points when all four coordinates are known;
    otherwise the row's own ``distance_km`` (a routed or metered estimate) is used. Zones pass
    through as text (None where unknown), and so does the area pair (None where either zone has
    no area); the rest are numbers.
    """
    plat, plon, dlat, dlon = rows.pickup_lat, rows.pickup_lon, rows.dropoff_lat, rows.dropoff_lon
    dist = haversine_km(plat, plon, dlat, dlon)
    dist = np.where(np.isnan(dist), rows.distance_km, dist)

    n = len(rows)
    hour = np.empty(n, dtype="int64")
    weekday = np.empty(n, dtype="int64")
    holiday = np.empty(n, dtype="float64")
    pair = np.full(n, None, dtype=object)
    cities = rows.city
    for city in dict.fromkeys(cities.tolist()):
        mask = cities == city
        try:
            context = contexts[city]
        except KeyError as exc:
            raise KeyError(f"city {city!r} is not in the catalog") from exc
        if isinstance(context, str):
            context = CityContext(context)
        hour[mask], weekday[mask] = local_calendar(rows.pickup_s[mask], context.timezone)
        holiday[mask] = holiday_flags(rows.pickup_s[mask], context)
        if context.zone_areas:
            pair[mask] = area_pairs(rows.pickup_zone[mask], rows.dropoff_zone[mask], context.zone_areas)

    return {
        "distance_km": dist,
        "bearing_deg": bearing_deg(plat, plon, dlat, dlon),
        "local_hour": hour,
        "local_weekday": weekday,
        "is_weekend": (weekday >= 5).astype("int64"),
        "is_holiday": holiday,
        "pickup_zone": rows.pickup_zone,
        "dropoff_zone": rows.dropoff_zone,
        AREA_PAIR: pair,
    }


def area_pairs(pickup: np.ndarray, dropoff: np.ndarray, areas: Mapping[str, str]) -> np.ndarray:
    """``"<pickup area>><dropoff area>"`` per row; None where either zone is unknown or has no area."""
    out = np.full(len(pickup), None, dtype=object)
    for i, (a, b) in enumerate(zip(pickup, dropoff, strict=True)):
        from_area = areas.get(str(a)) if a is not None else None
        to_area = areas.get(str(b)) if b is not None else None
        if from_area is not None and to_area is not None:
            out[i] = f"{from_area}>{to_area}"
    return out


def request_features(df: pd.DataFrame, contexts: CityContexts) -> pd.DataFrame:
    """:func:`request_columns` of a frame's rows, as a frame on the same index.

    Args:
        df: rows with ``city``, ``pickup_ts`` (tz-aware or UTC-naive) and
            ``pickup_lat/lon``, ``dropoff_lat/lon`` and/or ``distance_km``.
        contexts: city slug to its :class:`~cityml.catalog.CityContext` (``Catalog.contexts``), or to its
            IANA timezone alone.
    """
    return pd.DataFrame(request_columns(TripRows.from_frame(df), contexts), index=df.index)


def _zones(df: pd.DataFrame, name: str) -> np.ndarray:
    if name not in df.columns:
        return np.full(len(df), None, dtype=object)
    values = df[name].astype(object)
    return values.where(values.notna(), None).map(lambda z: z if z is None else str(z)).to_numpy(dtype=object)
