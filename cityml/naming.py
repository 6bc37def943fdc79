"""Names are made here and nowhere else: registry model names, aliases and model URIs."""

from __future__ import annotations

from typing import Literal

Target = Literal["eta", "price"]
TARGETS: tuple[Target, ...] = ("eta", "price")
GLOBAL = "global"
CHAMPION = "champion"

#: The column each target learns, and its unit (price's unit is the city's currency).
LABELS: dict[str, str] = {"eta": "duration_s", "price": "fare"}
UNITS: dict[str, str] = {"eta": "s", "price": "currency"}


def check_target(target: str) -> Target:
    if target not in TARGETS:
        raise ValueError(f"unknown target {target!r}: expected one of {', '.join(TARGETS)}")
    return target  # type: ignore[return-value]


def model_name(target: str, city: str) -> str:
    """Registry name of a city's model, e.g. ``eta-lisbon`` (``eta-global`` for the fleet model)."""
    return f"{check_target(target)}-{city}"


def champion_uri(target: str, city: str) -> str:
    return f"models:/{model_name(target, city)}@{CHAMPION}"


def feature_service_name(target: str, version: int = 1) -> str:
    """The Feast FeatureService a target's models are trained and served with."""
    return f"{check_target(target)}_v{version}"


def zone_key(city: str, zone: str) -> str:
    """Zones are only unique inside a city: the Feast entity key joins both."""
    return f"{city}:{zone}"
