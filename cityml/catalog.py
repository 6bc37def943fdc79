"""The city catalog: which cities exist, their timezone, currency, bounds and generator knobs."""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from functools import cached_property, lru_cache
from pathlib import Path
from typing import Annotated
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

SLUG = re.compile(r"[a-z0-9][a-z0-9-]*")  # whole string (fullmatch): "$" lets a final newline through


@dataclass(frozen=True)
class CityContext:
    """What request-time features need to know about a city, from the catalog: its IANA timezone,
    whose public holidays it keeps (``holidays``: an ISO 3166 country code, ``US``, or with a
    subdivision, ``US-NY``) and the area of each zone (``zone_areas``: a borough, a district)."""

    timezone: str
    holidays: str | None = None
    zone_areas: Mapping[str, str] | None = None


class Tariff(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)
    base: float = Field(ge=0)
    per_km: float = Field(ge=0)
    per_min: float = Field(ge=0)
    surge: float = Field(ge=0, description="Fare multiplier gained per unit of excess demand.")


class FareRule(BaseModel):
    """What a trip's fare may plausibly be, for the importer's sanity check.

    The fare of a trip of ``km`` kilometres and ``minutes`` minutes is plausible when it lies within
    ``band[0] * (base + per_km * km)`` and ``band[1] * (base + per_km * km + per_min * minutes)``: a meter
    charges for distance, time or both, and surge, tolls, airport flat fares and negotiated fares move it within the
    band. The default band (a quarter to five times the meter) keeps every fare a real tariff produces, 3.4x surge
    included, and refuses a fare typed in the wrong unit (cents for euros: 100x) or multiplied by ten.
    """

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)
    base: float = Field(ge=0)
    per_km: float = Field(gt=0)
    per_min: float = Field(ge=0)
    band: tuple[float, float] = (0.25, 5.0)

    @model_validator(mode="after")
    def _band(self) -> FareRule:
        lo, hi = self.band
        if not 0 < lo < 1 < hi:
            raise ValueError(f"fare band {self.band} must be [low, high] with 0 < low < 1 < high")
        return self


class Synthetic(BaseModel):
    """Parameters of the trip generator for one city."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)
    grid: int = Field(ge=2, le=20)
    trips_per_day: int = Field(gt=0)
    base_speed_kmh: float = Field(gt=0)
    rush_hours: tuple[Annotated[int, Field(ge=0, le=23)], Annotated[int, Field(ge=0, le=23)]]
    rush_slowdown: float = Field(ge=0, lt=1)
    weekend_speedup: float = Field(gt=0)
    tariff: Tariff
    noise: float = Field(ge=0, lt=1)


class City(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)
    slug: str
    timezone: str
    currency: str = Field(pattern=r"^[A-Z]{3}$")
    bbox: tuple[float, float, float, float]
    fare: FareRule | None = Field(
        default=None, description="The city's meter, for the importer's fare check; synthetic cities use their tariff."
    )
    zones: tuple[str, ...] | None = Field(
        default=None,
        description="The city's zone ids; in YAML a list or the path of a CSV zone table (first column, or one named "
        "zone_id / LocationID), relative to the catalog file. Synthetic cities have their grid.",
    )
    zone_areas: dict[str, str] | None = Field(
        default=None,
        description="The area (borough, district) of each zone, for the area_pair feature; from the zone table's "
        "area / borough / district column, or given here. Zones without one have no area pair.",
    )
    holidays: str | None = Field(
        default=None,
        description="Whose public holidays the city keeps: an ISO 3166 country code (US) or country-subdivision "
        "(US-NY), as the `holidays` package names them; the is_holiday feature. Without it the feature is missing.",
    )
    synthetic: Synthetic | None = None

    @field_validator("slug")
    @classmethod
    def _slug(cls, value: str) -> str:
        if not SLUG.fullmatch(value):
            raise ValueError(f"city slug {value!r} must be lowercase letters, digits and '-'")
        return value

    @field_validator("zones")
    @classmethod
    def _zone_ids(cls, value: tuple[str, ...] | None) -> tuple[str, ...] | None:
        if value is None:
            return None
        for z in value:
            # Zone pairs are keyed "<city>:<pickup>><dropoff>" (the online store, the area pair feature).
            if not z.strip() or any(c in z for c in ":>\n"):
                raise ValueError(f"zone id {z!r} must be non-blank and hold no ':', '>' or line break")
        twice = sorted({z for z in value if value.count(z) > 1})[:5]
        if twice:
            raise ValueError(f"zone ids listed twice: {', '.join(twice)}")
        return value

    @field_validator("zone_areas")
    @classmethod
    def _area_names(cls, value: dict[str, str] | None) -> dict[str, str] | None:
        bad = [a for a in (value or {}).values() if ">" in a or "\n" in a]
        if bad:
            raise ValueError(f"area {bad[0]!r} holds '>' or a line break: area pairs are '<area>><area>'")
        return value

    @field_validator("timezone")
    @classmethod
    def _tz(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError) as exc:
            raise ValueError(f"unknown timezone {value!r}") from exc
        return value

    @field_validator("holidays")
    @classmethod
    def _holidays(cls, value: str | None) -> str | None:
        if value is None:
            return None
        import holidays

        country, _, subdivision = value.partition("-")
        supported = holidays.list_supported_countries()
        if country not in supported:
            raise ValueError(f"unknown holiday country {country!r} in {value!r} (an ISO 3166 code such as US)")
        if subdivision and subdivision not in supported[country]:
            raise ValueError(f"{country} has no subdivision {subdivision!r} in the holidays package")
        return value

    @model_validator(mode="after")
    def _areas_of_known_zones(self) -> City:
        if self.zone_areas and self.zones is not None:
            unknown = sorted(set(self.zone_areas) - set(self.zones))[:5]
            if unknown:
                raise ValueError(f"zone_areas names zones the city does not have: {', '.join(unknown)}")
        return self

    @model_validator(mode="after")
    def _bbox(self) -> City:
        min_lat, min_lon, max_lat, max_lon = self.bbox
        if not (-90 <= min_lat < max_lat <= 90 and -180 <= min_lon < max_lon <= 180):
            raise ValueError(f"bbox {self.bbox} must be [min_lat, min_lon, max_lat, max_lon]")
        return self

    @property
    def tz(self) -> ZoneInfo:
        return ZoneInfo(self.timezone)

    @cached_property
    def context(self) -> CityContext:
        """What the request-time features are computed with: local time, holidays, zone areas."""
        return CityContext(self.timezone, self.holidays, self.zone_areas)

    def contains(self, lat: float, lon: float) -> bool:
        """Whether a point is inside the city's bbox (edges included): trips outside it are refused at import
        (``cityml.data.validation``, the same bounds on whole columns) and requests outside it at serving."""
        min_lat, min_lon, max_lat, max_lon = self.bbox
        return min_lat <= lat <= max_lat and min_lon <= lon <= max_lon

    def zone_of(self, lat: float, lon: float) -> str | None:
        """The synthetic grid zone holding a point, or None outside the bbox / without a grid."""
        if self.synthetic is None or not self.contains(lat, lon):
            return None
        min_lat, min_lon, max_lat, max_lon = self.bbox
        n = self.synthetic.grid
        row = min(int((lat - min_lat) / (max_lat - min_lat) * n), n - 1)
        col = min(int((lon - min_lon) / (max_lon - min_lon) * n), n - 1)
        return grid_zone(row * n + col)

    @cached_property
    def grid_zones(self) -> frozenset[str] | None:
        """Every zone of the city: its synthetic grid, else its zone table; None when the catalog gives neither."""
        if self.synthetic is not None:
            return frozenset(grid_zone(i) for i in range(self.synthetic.grid**2))
        return frozenset(self.zones) if self.zones is not None else None

    @property
    def fare_rule(self) -> FareRule | None:
        """The meter a fare is checked against: the catalog's ``fare``, else the synthetic tariff."""
        if self.fare is not None:
            return self.fare
        if self.synthetic is not None:
            t = self.synthetic.tariff
            return FareRule(base=t.base, per_km=max(t.per_km, 1e-9), per_min=t.per_min)
        return None


def grid_zone(index: int) -> str:
    """The name of grid cell ``index`` (row-major), as the generator names it: ``z07``."""
    return f"z{index:02d}"


class Catalog(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)
    cities: list[City]

    @model_validator(mode="after")
    def _unique(self) -> Catalog:
        seen: set[str] = set()
        for city in self.cities:
            if city.slug in seen:
                raise ValueError(f"city {city.slug!r} is listed twice")
            seen.add(city.slug)
        return self

    @cached_property
    def _by_slug(self) -> dict[str, City]:
        return {c.slug: c for c in self.cities}

    def get(self, slug: str) -> City:
        city = self._by_slug.get(slug)
        if city is None:
            raise KeyError(self.unknown([slug]))
        return city

    def unknown(self, slugs: Iterable[str], show: int = 20) -> str | None:
        """None when every slug is a catalog city, else the error to show: the unknown ones and a few known ones,
        at most ``show`` of each (a 1,000-city catalog is not printed whole)."""
        missing = [s for s in slugs if s not in self]
        if not missing:
            return None

        def some(names: list[str]) -> str:
            more = f" and {len(names) - show} more" if len(names) > show else ""
            return ", ".join(repr(n[:64]) for n in names[:show]) + more

        return f"unknown {'city' if len(missing) == 1 else 'cities'} {some(missing)} (catalog has {some(self.slugs)})"

    def __contains__(self, slug: object) -> bool:
        return slug in self._by_slug

    @property
    def slugs(self) -> list[str]:
        return [c.slug for c in self.cities]

    def contexts(self) -> dict[str, CityContext]:
        """Every city's :class:`CityContext` by slug: what its request-time features are computed with."""
        return {c.slug: c.context for c in self.cities}

    def select(self, spec: str | None) -> list[City]:
        """Cities named by ``a,b`` or ``all`` (None means all)."""
        if spec is None or spec.strip() in ("", "all"):
            return list(self.cities)
        return [self.get(s.strip()) for s in spec.split(",") if s.strip()]


class CatalogError(ValueError):
    """The catalog file is missing or malformed; the message names the file and field."""


ZONE_ID_COLUMNS = ("zone_id", "locationid")
#: A zone table's column naming each zone's area (the first of these found, case-insensitively).
ZONE_AREA_COLUMNS = ("area", "borough", "district")


def read_zone_table(path: Path) -> tuple[str, ...]:
    """Zone ids from a CSV zone table: the column ``zone_id`` (or TLC's ``LocationID``), else the first.

    Raises:
        CatalogError: The file is missing, empty, or holds a blank or repeated id; the message names the file.
    """
    import csv

    try:
        with path.open(newline="", encoding="utf-8") as f:
            rows = list(csv.reader(f))
    except (OSError, UnicodeDecodeError) as exc:
        raise CatalogError(f"zone table {path}: {exc}") from exc
    if len(rows) < 2:
        raise CatalogError(f"zone table {path}: needs a header line and at least one zone")
    header = [h.strip().lower() for h in rows[0]]
    col = next((header.index(c) for c in ZONE_ID_COLUMNS if c in header), 0)
    ids = [row[col].strip() if col < len(row) else "" for row in rows[1:] if any(cell.strip() for cell in row)]
    blank = next((i for i, z in enumerate(ids) if not z), None)
    if blank is not None:
        raise CatalogError(f"zone table {path}: line {blank + 2} has no zone id")
    if len(set(ids)) != len(ids):
        twice = sorted({z for z in ids if ids.count(z) > 1})[:5]
        raise CatalogError(f"zone table {path}: zone ids listed twice: {', '.join(twice)}")
    return tuple(ids)


def read_zone_areas(path: Path) -> dict[str, str] | None:
    """Each zone's area from a zone table's ``area`` / ``borough`` / ``district`` column; None without one.

    A zone whose cell is blank has no area. Call after :func:`read_zone_table` (which checks the ids).
    """
    import csv

    with path.open(newline="", encoding="utf-8") as f:
        rows = list(csv.reader(f))
    header = [h.strip().lower() for h in rows[0]]
    area = next((header.index(c) for c in ZONE_AREA_COLUMNS if c in header), None)
    if area is None:
        return None
    col = next((header.index(c) for c in ZONE_ID_COLUMNS if c in header), 0)
    return {
        row[col].strip(): row[area].strip()
        for row in rows[1:]
        if max(col, area) < len(row) and row[col].strip() and row[area].strip()
    }


def _zone_tables(raw: object, folder: Path) -> object:
    """The catalog document with each city's ``zones: <file.csv>`` replaced by the ids the file lists."""
    if not isinstance(raw, dict) or not isinstance(raw.get("cities"), list):
        return raw
    for city in raw["cities"]:
        if isinstance(city, dict) and isinstance(city.get("zones"), str):
            table = folder / city["zones"]
            city["zones"] = read_zone_table(table)
            if "zone_areas" not in city:
                city["zone_areas"] = read_zone_areas(table)
    return raw


@lru_cache(maxsize=8)
def _load(path: Path, mtime: float) -> Catalog:
    try:
        raw = _zone_tables(yaml.safe_load(path.read_text()), path.parent)
    except FileNotFoundError as exc:
        raise CatalogError(f"city catalog {path} does not exist") from exc
    except (OSError, UnicodeDecodeError) as exc:  # a folder, unreadable, not UTF-8
        raise CatalogError(f"city catalog {path} cannot be read: {exc}") from exc
    except yaml.YAMLError as exc:
        raise CatalogError(f"city catalog {path} is not valid YAML: {exc}") from exc
    try:
        return Catalog.model_validate(raw)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors())
        raise CatalogError(f"city catalog {path}: {problems}") from exc


def load_catalog(path: Path) -> Catalog:
    """Read and validate the catalog (cached until the file changes)."""
    mtime = path.stat().st_mtime if path.exists() else 0.0
    return _load(path, mtime)


@lru_cache(maxsize=8)
def _slugs(path: Path, mtime: float) -> tuple[str, ...]:
    raw = yaml.load(path.read_text(), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    return tuple(str(c["slug"]) for c in raw["cities"])


def catalog_slugs(path: Path | None = None) -> list[str] | None:
    """The catalog's slugs without validating it (a form's pick list at DAG parse time), or None when the file
    cannot be read as a catalog. ``path``: default the settings' catalog."""
    if path is None:
        from cityml.settings import get_settings

        path = get_settings().catalog_path
    try:
        return list(_slugs(path, path.stat().st_mtime))
    except (OSError, yaml.YAMLError, KeyError, TypeError):
        return None
