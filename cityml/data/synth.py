"""Synthetic trips: cities that differ in ways a per-city model learns and a global one partly misses.

Each city has its own timezone and rush hours, base speed, zones with their own congestion,
tariff with demand surge, weekend behaviour, day-to-day conditions, noise and a few outliers.
The same seed and dates give the same rows.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from datetime import date, timedelta

import numpy as np
import pandas as pd

from cityml.catalog import City, grid_zone
from cityml.geo import haversine_km

DETOUR = 1.3  # route km per straight-line km
OUTLIER_SHARE = 0.004


def _hour_profile(rush: tuple[int, int]) -> np.ndarray:
    """Relative demand per local hour: low at night, peaks at the two rush hours."""
    hours = np.arange(24)
    night = np.where((hours >= 1) & (hours <= 5), 0.25, 1.0)
    peaks = sum(np.exp(-0.5 * ((hours - h) / 1.5) ** 2) for h in rush)
    return night * (0.6 + 1.6 * peaks)


def _rush_curve(hour: np.ndarray, rush: tuple[int, int]) -> np.ndarray:
    """0..1, how close a fractional local hour is to a rush peak."""
    return np.clip(sum(np.exp(-0.5 * ((hour - h) / 1.2) ** 2) for h in rush), 0.0, 1.0)


@dataclass(frozen=True)
class Slowdown:
    """From local day ``start`` on, trips that start or end in ``zones`` move at ``factor`` of their speed
    (a bridge closed, roadworks): what the drift scenario shows. The other draws stay as they were, so the days
    before ``start`` and the other cities are the same trips as without it."""

    start: date
    zones: frozenset[str]
    factor: float = 0.7


def central_zones(city: City, share: float = 0.4) -> frozenset[str]:
    """The ``share`` of a synthetic city's grid zones nearest its centre (its busiest)."""
    if city.synthetic is None:
        raise ValueError(f"city {city.slug!r} has no 'synthetic' parameters in the catalog")
    n = city.synthetic.grid
    rows, cols = np.divmod(np.arange(n * n), n)
    ring = np.hypot(rows - (n - 1) / 2, cols - (n - 1) / 2)
    nearest = np.argsort(ring, kind="stable")[: max(1, round(share * n * n))]
    return frozenset(grid_zone(int(i)) for i in nearest)


def generate_city(city: City, start: date, days: int, seed: int, slowdown: Slowdown | None = None) -> pd.DataFrame:
    """Canonical trips for ``days`` local days of ``city`` from ``start``; ``slowdown``: see :class:`Slowdown`."""
    if city.synthetic is None:
        raise ValueError(f"city {city.slug!r} has no 'synthetic' parameters in the catalog")
    p = city.synthetic
    rng = np.random.default_rng([seed, zlib.crc32(city.slug.encode())])
    n = p.grid
    min_lat, min_lon, max_lat, max_lon = city.bbox
    cell_lat = (max_lat - min_lat) / n
    cell_lon = (max_lon - min_lon) / n

    # Zones: central ones are busy and slow, outer ones quiet and fast.
    rows, cols = np.divmod(np.arange(n * n), n)
    centre = (n - 1) / 2
    ring = np.hypot(rows - centre, cols - centre) / max(centre, 1)
    congestion = np.clip(0.55 + 0.45 * ring + rng.normal(0, 0.08, n * n), 0.4, 1.2)
    popularity = np.exp(-1.2 * ring) * rng.uniform(0.6, 1.4, n * n)
    popularity /= popularity.sum()
    profile = _hour_profile(p.rush_hours)
    slow = np.array([slowdown is not None and grid_zone(i) in slowdown.zones for i in range(n * n)])

    frames = []
    for d in range(days):
        day = start + timedelta(days=d)
        weekend = day.weekday() >= 5
        condition = rng.lognormal(0.0, 0.15)  # weather, events: busier days are slower
        volume = p.trips_per_day * (0.8 if weekend else 1.0) * condition
        k = int(rng.poisson(volume))
        if k == 0:
            continue
        hour_w = profile / profile.sum()
        hour = rng.choice(24, size=k, p=hour_w)
        frac_hour = hour + rng.uniform(0, 1, k)
        hourly_count = np.bincount(hour, minlength=24)
        demand_ratio = hourly_count[hour] / (k / 24)

        pz = rng.choice(n * n, size=k, p=popularity)
        near = rng.uniform(size=k) < 0.5
        dz = np.where(
            near,
            np.clip(pz + rng.integers(-1, 2, k) * n + rng.integers(-1, 2, k), 0, n * n - 1),
            rng.choice(n * n, size=k, p=popularity),
        )
        prow, pcol = np.divmod(pz, n)
        drow, dcol = np.divmod(dz, n)
        plat = min_lat + (prow + rng.uniform(0, 1, k)) * cell_lat
        plon = min_lon + (pcol + rng.uniform(0, 1, k)) * cell_lon
        dlat = min_lat + (drow + rng.uniform(0, 1, k)) * cell_lat
        dlon = min_lon + (dcol + rng.uniform(0, 1, k)) * cell_lon

        straight = haversine_km(plat, plon, dlat, dlon)
        route_km = np.maximum(straight * DETOUR + rng.gamma(2.0, 0.2, k), 0.3)
        speed = (
            p.base_speed_kmh
            * np.sqrt(congestion[pz] * congestion[dz])
            * (1 - p.rush_slowdown * _rush_curve(frac_hour, p.rush_hours) * (0.6 if weekend else 1.0))
            * (p.weekend_speedup if weekend else 1.0)
            / condition**0.7
            * rng.lognormal(0.0, p.noise, k)
        )
        if slowdown is not None and day >= slowdown.start:
            speed = np.where(slow[pz] | slow[dz], speed * slowdown.factor, speed)
        duration = route_km / np.maximum(speed, 3.0) * 3600 + rng.uniform(30, 120, k)
        outlier = rng.uniform(size=k) < OUTLIER_SHARE
        duration = np.where(outlier, duration * rng.uniform(2.0, 4.0, k), duration)
        duration = np.clip(duration, 60, 4 * 3600 - 1)

        t = p.tariff
        surge = 1 + t.surge * np.clip(demand_ratio * condition - 1.0, 0, 2.0)
        fare = (t.base + t.per_km * route_km + t.per_min * duration / 60) * surge
        fare = fare * rng.lognormal(0.0, p.noise / 3, k)

        local_start = pd.Timestamp(day).tz_localize(city.timezone)
        pickup = local_start + pd.to_timedelta(frac_hour * 3600, unit="s")
        pickup = pickup.tz_convert("UTC").floor("s")
        order = np.argsort(pickup.asi8, kind="stable")
        frames.append(
            pd.DataFrame(
                {
                    "city": city.slug,
                    "pickup_ts": pickup[order],
                    "dropoff_ts": (pickup + pd.to_timedelta(np.round(duration), unit="s"))[order],
                    "pickup_zone": [grid_zone(int(i)) for i in pz[order]],
                    "dropoff_zone": [grid_zone(int(i)) for i in dz[order]],
                    "pickup_lat": plat[order],
                    "pickup_lon": plon[order],
                    "dropoff_lat": dlat[order],
                    "dropoff_lon": dlon[order],
                    "distance_km": np.round(route_km[order], 3),
                    "duration_s": np.round(duration[order]),
                    "fare": np.round(fare[order], 2),
                    "currency": city.currency,
                }
            ).assign(trip_id=[f"{city.slug}-{day:%Y%m%d}-{i:06d}" for i in range(k)])
        )
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


ZONES = ("Europe/Lisbon", "Asia/Jakarta", "America/Sao_Paulo", "Africa/Nairobi", "Asia/Tokyo", "America/Chicago")


def random_catalog(names: list[str], seed: int = 0, trips_per_day: int = 400) -> dict[str, object]:
    """A catalog document of synthetic cities that differ as real ones do.

    Place and size, zone grid, speeds, rush hours, weekend behaviour, tariffs and noise are drawn
    per city; benchmarks and fleet tests use it to make many cities at once.
    """
    rng = np.random.default_rng(seed)
    cities = []
    for i, slug in enumerate(names):
        lat, lon = float(rng.uniform(-40, 50)), float(rng.uniform(-120, 140))
        half = float(rng.uniform(0.05, 0.12))
        morning = int(rng.integers(6, 10))
        cities.append(
            {
                "slug": slug,
                "timezone": ZONES[i % len(ZONES)],
                "currency": "EUR",
                "bbox": [round(lat - half, 4), round(lon - half, 4), round(lat + half, 4), round(lon + half, 4)],
                "synthetic": {
                    "grid": int(rng.integers(3, 7)),
                    "trips_per_day": trips_per_day,
                    "base_speed_kmh": float(rng.uniform(15, 40)),
                    "rush_hours": [morning, morning + int(rng.integers(8, 12))],
                    "rush_slowdown": float(rng.uniform(0.2, 0.7)),
                    "weekend_speedup": float(rng.uniform(0.9, 1.4)),
                    "tariff": {
                        "base": float(rng.uniform(1, 6)),
                        "per_km": float(rng.uniform(0.5, 2.5)),
                        "per_min": float(rng.uniform(0.05, 0.5)),
                        "surge": float(rng.uniform(0.2, 1.2)),
                    },
                    "noise": float(rng.uniform(0.06, 0.14)),
                },
            }
        )
    return {"cities": cities}
