"""What a model beyond ETA and price learns: declared once, light enough for a DAG file to build at parse time.

ETA and price learn a column of each trip (``cityml.naming.LABELS``). A model of a city-hour quantity — a
demand forecast, say — is an :class:`HourlyTarget`: a data scientist writes one in a DAG file and hands it to
``cityml.dagkit.hourly_retrain_dag``; ``training.hourly`` builds, fits, gates and registers it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Literal

from cityml.naming import GLOBAL, MODEL_PREFIX, TARGETS

Aggregate = Literal["count", "sum", "mean", "median"]
AGGREGATES: tuple[Aggregate, ...] = ("count", "sum", "mean", "median")
#: The trip columns an hour's label may aggregate (a count needs none).
TRIP_MEASURES = ("duration_s", "fare", "distance_km")


@dataclass(frozen=True)
class HourlyTarget:
    """A per-city target learned from one row per city and hour.

    ``name``: the registry prefix (``demand`` registers ``demand-lisbon``); lowercase letters and digits.
    ``feature_service``: the Feast FeatureService (defined in ``feature_repo/services.py``) whose features every
    hour's row is joined with, keyed by the ``city`` entity at the start of the hour.
    ``aggregate``/``column``: the label of an hour, over the trips picked up in it: ``count`` (trips, no column),
    or the ``sum``/``mean``/``median`` of a trip column (``fare``, ``duration_s``, ``distance_km``).
    ``unit``: how the label reads, for people (reports, the model's tags).
    """

    name: str
    feature_service: str
    aggregate: Aggregate = "count"
    column: str | None = None
    unit: str = "trips"
    description: str = ""

    def __post_init__(self) -> None:
        if not MODEL_PREFIX.fullmatch(self.name):
            raise ValueError(f"name: {self.name!r} must be lowercase letters and digits, starting with a letter")
        if self.name in (*TARGETS, GLOBAL):
            raise ValueError(f"name: {self.name!r} is taken by cityml's own models")
        if self.aggregate not in AGGREGATES:
            raise ValueError(f"aggregate: {self.aggregate!r} is not one of {', '.join(AGGREGATES)}")
        if self.aggregate == "count" and self.column is not None:
            raise ValueError("column: a count needs no column")
        if self.aggregate != "count" and self.column not in TRIP_MEASURES:
            raise ValueError(f"column: {self.aggregate} needs one of {', '.join(TRIP_MEASURES)}, got {self.column!r}")
        if not self.feature_service:
            raise ValueError("feature_service: name the FeatureService the model reads")

    @property
    def label(self) -> str:
        """The label column of a training set: ``trips`` for a count, else e.g. ``mean_fare``."""
        return "trips" if self.aggregate == "count" else f"{self.aggregate}_{self.column}"

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe, for an Airflow task's arguments."""
        return asdict(self)

    @classmethod
    def from_dict(cls, doc: dict[str, Any]) -> HourlyTarget:
        return cls(**doc)
