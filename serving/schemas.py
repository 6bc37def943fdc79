"""Request and response bodies of the prediction API."""

from __future__ import annotations

from datetime import UTC, datetime

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

MAX_INSTANCES = 1000
EARLIEST = datetime(1970, 1, 1, tzinfo=UTC)
LATEST = datetime(2100, 1, 1, tzinfo=UTC)


class TripRequest(BaseModel):
    """One trip to predict. Zones or coordinates (or both) must be given."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)
    city: str = Field(max_length=64, description="City slug from the catalog.")
    pickup_ts: datetime | None = Field(
        default=None, description="Pickup time (ISO 8601, UTC unless it has an offset), 1970–2100; default now."
    )
    pickup_zone: str | None = Field(default=None, min_length=1, max_length=64, description="Zone id in the city.")
    dropoff_zone: str | None = Field(default=None, min_length=1, max_length=64, description="Zone id in the city.")
    # Numbers only (strict): ``true`` or ``"4.2"`` is a client's bug, not a 1 km or 4.2 km trip.
    pickup_lat: float | None = Field(default=None, ge=-90, le=90, strict=True, description="Inside the city's bbox.")
    pickup_lon: float | None = Field(default=None, ge=-180, le=180, strict=True)
    dropoff_lat: float | None = Field(default=None, ge=-90, le=90, strict=True, description="Inside the city's bbox.")
    dropoff_lon: float | None = Field(default=None, ge=-180, le=180, strict=True)
    distance_km: float | None = Field(
        default=None, gt=0, le=500, strict=True, description="Routed distance, used when no coordinates are given."
    )
    trip_id: str | None = Field(
        default=None, max_length=128, description="Your trip id, kept in the prediction log to join the outcome later."
    )

    @field_validator("pickup_ts")
    @classmethod
    def _when(cls, value: datetime | None) -> datetime | None:
        if value is None:
            return None
        utc = value if value.tzinfo is not None else value.replace(tzinfo=UTC)
        if not EARLIEST <= utc <= LATEST:
            raise ValueError(f"pickup_ts must be between {EARLIEST.year} and {LATEST.year}")
        return utc

    @model_validator(mode="after")
    def _where(self) -> TripRequest:
        coords = [self.pickup_lat, self.pickup_lon, self.dropoff_lat, self.dropoff_lon]
        if any(v is not None for v in coords) and not all(v is not None for v in coords):
            raise ValueError("give all four of pickup_lat, pickup_lon, dropoff_lat, dropoff_lon, or none")
        if all(v is None for v in coords) and self.distance_km is None:
            raise ValueError("give the coordinates or distance_km")
        if (self.pickup_zone is None or self.dropoff_zone is None) and all(v is None for v in coords):
            raise ValueError("give pickup_zone and dropoff_zone, or the coordinates to find them")
        return self


class PredictRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    instances: list[TripRequest] = Field(min_length=1, max_length=MAX_INSTANCES)


class Prediction(BaseModel):
    value: float
    unit: str
    model: str
    version: str
    fallback: str | None = Field(description="Why a fallback model answered; null for the city's own champion.")
    degraded: bool = Field(
        default=False, description="An online feature was missing, stale or unreadable: predicted without it."
    )


class PredictResponse(BaseModel):
    request_id: str
    predictions: list[Prediction]


class ModelInfo(BaseModel):
    name: str
    city: str
    target: str
    version: str
    feature_service: str | None
    features: list[str]
    loaded_at: datetime
    self_test: str


class ModelList(BaseModel):
    total: int
    offset: int
    models: list[ModelInfo]


class ErrorItem(BaseModel):
    loc: list[str | int] = Field(description="Where: e.g. body, instances, 0, city; or header, X-API-Key.")
    msg: str
    type: str = Field(description="A stable reason code: unauthorized, unknown_zone, too_large, ...")


class ErrorBody(BaseModel):
    """Every error's shape (FastAPI's validation shape); the input is never echoed back."""

    detail: list[ErrorItem]
    errors: int | None = Field(default=None, description="A 422's count of problems; at most 20 are listed.")
    request_id: str | None = Field(default=None, description="A 500's id, under which the server logged it.")


_ERRORS = {
    400: "A Content-Length that is not a size.",
    401: "No key, or a wrong one (X-API-Key).",
    403: "A predict key on /admin.",
    404: "Not enabled on this server.",
    408: "The body did not arrive in time.",
    413: "A body past the size limit, or more than 1,000 instances.",
    421: "A city another shard of the fleet serves: send X-City through its proxy.",
    422: "A value the route cannot take; each problem names its field.",
    500: "A server error: counted, logged under request_id; the connection stays usable.",
    503: "Starting, no key configured, or no model for the city.",
}


def error_responses(*codes: int) -> dict[int | str, dict[str, object]]:
    """The OpenAPI ``responses`` of a route's errors, in :class:`ErrorBody`'s shape (400, 413 and 500: any route)."""
    return {code: {"model": ErrorBody, "description": _ERRORS[code]} for code in sorted({400, 413, 500, *codes})}
