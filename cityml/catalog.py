"""The city catalog: which cities exist, their timezone, currency, bounds and generator knobs."""

from __future__ import annotations

import re
from functools import cached_property, lru_cache
from pathlib import Path
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

SLUG = re.compile(r"^[a-z0-9][a-z0-9-]*$")


class Tariff(BaseModel):
    model_config = ConfigDict(extra="forbid")
    base: float = Field(ge=0)
    per_km: float = Field(ge=0)
    per_min: float = Field(ge=0)
    surge: float = Field(ge=0, description="Fare multiplier gained per unit of excess demand.")


class Synthetic(BaseModel):
    """Parameters of the trip generator for one city."""

    model_config = ConfigDict(extra="forbid")
    grid: int = Field(ge=2, le=20)
    trips_per_day: int = Field(gt=0)
    base_speed_kmh: float = Field(gt=0)
    rush_hours: tuple[int, int]
    rush_slowdown: float = Field(ge=0, lt=1)
    weekend_speedup: float = Field(gt=0)
    tariff: Tariff
    noise: float = Field(ge=0, lt=1)


class City(BaseModel):
    model_config = ConfigDict(extra="forbid")
    slug: str
    timezone: str
    currency: str = Field(pattern=r"^[A-Z]{3}$")
    bbox: tuple[float, float, float, float]
    synthetic: Synthetic | None = None

    @field_validator("slug")
    @classmethod
    def _slug(cls, value: str) -> str:
        if not SLUG.match(value):
            raise ValueError(f"city slug {value!r} must be lowercase letters, digits and '-'")
        return value

    @field_validator("timezone")
    @classmethod
    def _tz(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError) as exc:
            raise ValueError(f"unknown timezone {value!r}") from exc
        return value

    @model_validator(mode="after")
    def _bbox(self) -> City:
        min_lat, min_lon, max_lat, max_lon = self.bbox
        if not (-90 <= min_lat < max_lat <= 90 and -180 <= min_lon < max_lon <= 180):
            raise ValueError(f"bbox {self.bbox} must be [min_lat, min_lon, max_lat, max_lon]")
        return self

    @property
    def tz(self) -> ZoneInfo:
        return ZoneInfo(self.timezone)

    def zone_of(self, lat: float, lon: float) -> str | None:
        """The synthetic grid zone holding a point, or None outside the bbox / without a grid."""
        if self.synthetic is None:
            return None
        min_lat, min_lon, max_lat, max_lon = self.bbox
        if not (min_lat <= lat <= max_lat and min_lon <= lon <= max_lon):
            return None
        n = self.synthetic.grid
        row = min(int((lat - min_lat) / (max_lat - min_lat) * n), n - 1)
        col = min(int((lon - min_lon) / (max_lon - min_lon) * n), n - 1)
        return grid_zone(row * n + col)

    @cached_property
    def grid_zones(self) -> frozenset[str] | None:
        """Every zone of the synthetic grid; None for a city without one (a real city's zones are its data's)."""
        if self.synthetic is None:
            return None
        return frozenset(grid_zone(i) for i in range(self.synthetic.grid**2))


def grid_zone(index: int) -> str:
    """The name of grid cell ``index`` (row-major), as the generator names it: ``z07``."""
    return f"z{index:02d}"


class Catalog(BaseModel):
    model_config = ConfigDict(extra="forbid")
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
            known = ", ".join(c.slug for c in self.cities[:20]) + (", ..." if len(self.cities) > 20 else "")
            raise KeyError(f"unknown city {slug[:64]!r} (catalog has: {known})")
        return city

    def __contains__(self, slug: object) -> bool:
        return slug in self._by_slug

    @property
    def slugs(self) -> list[str]:
        return [c.slug for c in self.cities]

    def select(self, spec: str | None) -> list[City]:
        """Cities named by ``a,b`` or ``all`` (None means all)."""
        if spec is None or spec.strip() in ("", "all"):
            return list(self.cities)
        return [self.get(s.strip()) for s in spec.split(",") if s.strip()]


class CatalogError(ValueError):
    """The catalog file is missing or malformed; the message names the file and field."""


@lru_cache(maxsize=8)
def _load(path: Path, mtime: float) -> Catalog:
    try:
        raw = yaml.safe_load(path.read_text())
    except FileNotFoundError as exc:
        raise CatalogError(f"city catalog {path} does not exist") from exc
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
