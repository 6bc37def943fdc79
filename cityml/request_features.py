"""Request-time features: computed from the request itself, identically in training and serving.

Training calls :func:`request_features` on historical trips; serving calls it on the
instances of a predict request. There is no second copy of this code anywhere.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import pandas as pd

EARTH_RADIUS_KM = 6371.0088

#: The request's zones, as given (or placed from coordinates): city models take them as
#: categorical features (``cityml.modeling``), fleet models do not (zone names are city-local).
ZONE_FEATURES: tuple[str, ...] = ("pickup_zone", "dropoff_zone")

#: Names of the columns :func:`request_features` adds, in order.
REQUEST_FEATURES: tuple[str, ...] = (
    "distance_km",
    "bearing_deg",
    "local_hour",
    "local_weekday",
    "is_weekend",
    *ZONE_FEATURES,
)


#: Request features that only depend on the calendar date. A drift window shorter than a week
#: always differs from the reference in them, so drift reports but does not judge them.
CALENDAR_FEATURES: frozenset[str] = frozenset({"local_weekday", "is_weekend"})


def haversine_km(lat1: np.ndarray, lon1: np.ndarray, lat2: np.ndarray, lon2: np.ndarray) -> np.ndarray:
    """Great-circle distance in km (NaN where a coordinate is missing)."""
    p1, p2 = np.radians(lat1), np.radians(lat2)
    dphi = p2 - p1
    dlmb = np.radians(lon2) - np.radians(lon1)
    a = np.sin(dphi / 2) ** 2 + np.cos(p1) * np.cos(p2) * np.sin(dlmb / 2) ** 2
    return 2 * EARTH_RADIUS_KM * np.arcsin(np.sqrt(np.clip(a, 0.0, 1.0)))


def bearing_deg(lat1: np.ndarray, lon1: np.ndarray, lat2: np.ndarray, lon2: np.ndarray) -> np.ndarray:
    """Initial compass bearing from pickup to dropoff, 0–360 degrees."""
    p1, p2 = np.radians(lat1), np.radians(lat2)
    dlmb = np.radians(lon2) - np.radians(lon1)
    x = np.sin(dlmb) * np.cos(p2)
    y = np.cos(p1) * np.sin(p2) - np.sin(p1) * np.cos(p2) * np.cos(dlmb)
    return (np.degrees(np.arctan2(x, y)) + 360.0) % 360.0


def _coords(df: pd.DataFrame, name: str) -> np.ndarray:
    if name not in df.columns:
        return np.full(len(df), np.nan)
    return pd.to_numeric(df[name], errors="coerce").to_numpy(dtype="float64")


def request_features(df: pd.DataFrame, timezones: Mapping[str, str]) -> pd.DataFrame:
    """The request-time feature columns for rows with ``city``, ``pickup_ts`` and coordinates.

    Distance is the straight line between the points when all four coordinates are known;
    otherwise the row's own ``distance_km`` (a routed or metered estimate) is used.

    Args:
        df: rows with ``city``, ``pickup_ts`` (tz-aware or UTC-naive) and
            ``pickup_lat/lon``, ``dropoff_lat/lon`` and/or ``distance_km``.
        timezones: city slug to IANA timezone, from the catalog.

    Returns:
        A frame on the same index with the columns of :data:`REQUEST_FEATURES`; the zones are
        text (None where unknown), the rest numbers.
    """
    plat, plon = _coords(df, "pickup_lat"), _coords(df, "pickup_lon")
    dlat, dlon = _coords(df, "dropoff_lat"), _coords(df, "dropoff_lon")
    dist = haversine_km(plat, plon, dlat, dlon)
    given = _coords(df, "distance_km")
    dist = np.where(np.isnan(dist), given, dist)

    ts = pd.to_datetime(df["pickup_ts"], utc=True)
    hour = np.empty(len(df), dtype="int64")
    weekday = np.empty(len(df), dtype="int64")
    cities = df["city"].to_numpy()
    for city in pd.unique(cities):
        mask = cities == city
        try:
            tz = timezones[city]
        except KeyError as exc:
            raise KeyError(f"city {city!r} is not in the catalog") from exc
        local = ts[mask].dt.tz_convert(tz)
        hour[mask] = local.dt.hour.to_numpy()
        weekday[mask] = local.dt.weekday.to_numpy()

    return pd.DataFrame(
        {
            "distance_km": dist,
            "bearing_deg": bearing_deg(plat, plon, dlat, dlon),
            "local_hour": hour,
            "local_weekday": weekday,
            "is_weekend": (weekday >= 5).astype("int64"),
            **{name: _zones(df, name) for name in ZONE_FEATURES},
        },
        index=df.index,
    )


def _zones(df: pd.DataFrame, name: str) -> np.ndarray:
    if name not in df.columns:
        return np.full(len(df), None, dtype=object)
    values = df[name].astype(object)
    return values.where(values.notna(), None).map(lambda z: z if z is None else str(z)).to_numpy(dtype=object)
