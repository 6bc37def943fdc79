"""Request and response bodies of the prediction API."""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, ConfigDict, Field, model_validator

MAX_INSTANCES = 1000


class TripRequest(BaseModel):
    """One trip to predict. Zones or coordinates (or both) must be given."""

    model_config = ConfigDict(extra="forbid")
    city: str = Field(description="City slug from the catalog.")
    pickup_ts: datetime | None = Field(default=None, description="Pickup time (ISO 8601); default now.")
    pickup_zone: str | None = None
    dropoff_zone: str | None = None
    pickup_lat: float | None = Field(default=None, ge=-90, le=90)
    pickup_lon: float | None = Field(default=None, ge=-180, le=180)
    dropoff_lat: float | None = Field(default=None, ge=-90, le=90)
    dropoff_lon: float | None = Field(default=None, ge=-180, le=180)
    distance_km: float | None = Field(default=None, gt=0, le=500, description="Routed distance, if no coordinates.")

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
