"""Request instances to trip rows: zones checked or placed from coordinates, refusals that name the field."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime

import numpy as np

from cityml.catalog import Catalog, City
from cityml.features.request_features import TripRows
from serving.schemas import TripRequest


class RequestError(ValueError):
    """A request instance cannot be answered; ``field`` names what is wrong."""

    def __init__(self, index: int, field: str, message: str, reason: str = "bad_request") -> None:
        super().__init__(message)
        self.index = index
        self.field = field
        self.reason = reason


def _zone(city: City, i: int, inst: TripRequest, end: str, known: frozenset[str] | None) -> str:
    """The instance's zone at one end: as given (if the city has it), else placed from the coordinates.

    Coordinates, when given, must be inside the city's bbox, zones given or not: the distance is
    computed from them, and training never saw a trip that left the bbox (the importer refuses it).
    """
    given: str | None = getattr(inst, f"{end}_zone")
    lat, lon = getattr(inst, f"{end}_lat"), getattr(inst, f"{end}_lon")
    if lat is not None and lon is not None and not city.contains(lat, lon):
        message = f"{end} point ({lat}, {lon}) is outside {city.slug}'s bbox {list(city.bbox)}"
        raise RequestError(i, f"{end}_lat", message, "outside_bbox")
    if given is not None:
        if known is not None and given not in known:
            raise RequestError(i, f"{end}_zone", f"{city.slug} has no zone {given[:40]!r}", "unknown_zone")
        return given
    zone = city.zone_of(lat, lon)
    if zone is None:
        raise RequestError(
            i, f"{end}_zone", f"{end} point ({lat}, {lon}) is outside {city.slug}'s zones; give {end}_zone", "bad_zone"
        )
    return zone


def known_zones(catalog: Catalog, city: str, zone_categories: frozenset[str] | None) -> frozenset[str] | None:
    """The zones a city has: its synthetic grid, else the zones its serving model learned, else unknown (None)."""
    return catalog.get(city).grid_zones or zone_categories


def place(
    instances: Sequence[TripRequest], catalog: Catalog, zones: Sequence[frozenset[str] | None]
) -> tuple[list[str], list[str]]:
    """Each instance's pickup and dropoff zone, checked; ``zones[i]``: the zones instance ``i``'s city has
    (None: not known here). Raises the :class:`RequestError` of the first instance that cannot be placed."""
    cities = {slug: catalog.get(slug) for slug in {x.city for x in instances}}
    pickup: list[str] = []
    dropoff: list[str] = []
    for i, inst in enumerate(instances):
        city = cities[inst.city]
        pickup.append(_zone(city, i, inst, "pickup", zones[i]))
        dropoff.append(_zone(city, i, inst, "dropoff", zones[i]))
    return pickup, dropoff


def trip_rows(
    instances: Sequence[TripRequest], pickup: Sequence[str], dropoff: Sequence[str], now: Sequence[datetime]
) -> TripRows:
    """Columns of placed instances (:func:`place`); ``now[i]``: when instance ``i`` was asked, its pickup
    time if it gives none. Instances of several requests go in one call: a run's rows of one model."""

    def number(name: str) -> np.ndarray:
        values = [getattr(x, name) for x in instances]
        return np.array([np.nan if v is None else v for v in values], dtype=float)

    # A time without a zone is UTC, as pandas (and so training) reads it.
    when = [x.pickup_ts or at for x, at in zip(instances, now, strict=True)]
    when = [t if t.tzinfo is not None else t.replace(tzinfo=UTC) for t in when]
    return TripRows(
        city=np.array([x.city for x in instances], dtype=object),
        pickup_s=np.array([int(t.astimezone(UTC).timestamp()) for t in when], dtype="int64"),
        pickup_lat=number("pickup_lat"),
        pickup_lon=number("pickup_lon"),
        dropoff_lat=number("dropoff_lat"),
        dropoff_lon=number("dropoff_lon"),
        distance_km=number("distance_km"),
        pickup_zone=np.array(pickup, dtype=object),
        dropoff_zone=np.array(dropoff, dtype=object),
    )
