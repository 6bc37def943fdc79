"""Names are made here and nowhere else: registry model names, aliases and model URIs."""

from __future__ import annotations

import re
from typing import Literal

Target = Literal["eta", "price"]
TARGETS: tuple[Target, ...] = ("eta", "price")
GLOBAL = "global"
CHAMPION = "champion"

#: The column each target learns, and its unit (price's unit is the city's currency).
LABELS: dict[str, str] = {"eta": "duration_s", "price": "fare"}
UNITS: dict[str, str] = {"eta": "s", "price": "currency"}
#: A fleet model's run logs each city's test MAE as this prefix + the city slug.
CITY_MAE_METRIC = "mae_city_"


def check_target(target: str) -> Target:
    if target not in TARGETS:
        raise ValueError(f"unknown target {target!r}: expected one of {', '.join(TARGETS)}")
    return target  # type: ignore[return-value]


#: Targets beyond eta and price (a city-hour demand forecast, say: ``training.hourly``) follow this pattern.
MODEL_PREFIX = re.compile(r"[a-z][a-z0-9]{0,30}")  # fullmatch: "$" lets a final newline through


def model_name(target: str, city: str) -> str:
    """Registry name of a city's model, e.g. ``eta-lisbon`` (``eta-global`` for the fleet model)."""
    if target not in TARGETS and not MODEL_PREFIX.fullmatch(target):
        raise ValueError(f"target {target!r}: lowercase letters and digits, starting with a letter")
    return f"{target}-{city}"


def split_model_name(name: str) -> tuple[str, str]:
    """A registry model name's target and city (or ``global``): ``eta-lisbon`` -> ``("eta", "lisbon")``."""
    target, _, city = name.partition("-")
    return target, city


def champion_uri(target: str, city: str) -> str:
    return f"models:/{model_name(target, city)}@{CHAMPION}"


#: The FeatureService version new models train on. Older versions stay registered in Feast, so the
#: champions trained on them keep serving until they are replaced.
FEATURE_SERVICE_VERSION = 2


def feature_service_name(target: str, version: int = FEATURE_SERVICE_VERSION) -> str:
    """The Feast FeatureService a target's models are trained and served with."""
    return f"{check_target(target)}_v{version}"


def zone_key(city: str, zone: str) -> str:
    """Zones are only unique inside a city: the Feast entity key joins both."""
    return f"{city}:{zone}"


def zone_pair_key(city: str, pickup_zone: str, dropoff_zone: str) -> str:
    """The Feast key of a trip's zone pair, e.g. ``nyc:132>230`` (directed: there and back differ)."""
    return f"{city}:{pickup_zone}>{dropoff_zone}"
