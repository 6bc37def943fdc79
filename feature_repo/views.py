"""Feature views: the features models train and serve on."""

from datetime import timedelta

from entities import city, zone, zone_pair
from feast import FeatureView, Field
from feast.types import Float64, Int64
from sources import city_hour_source, zone_day_source, zone_hour_source, zone_pair_day_source

# A zone's traffic older than 3 hours says little about the next trip: past the TTL the
# features are missing (LightGBM handles missing values) rather than stale.
zone_traffic = FeatureView(
    name="zone_traffic",
    entities=[zone],
    ttl=timedelta(hours=3),
    schema=[
        Field(name="zone_trips_1h", dtype=Int64),
        Field(name="zone_mean_speed_kmh", dtype=Float64),
        Field(name="zone_median_speed_kmh", dtype=Float64),
        Field(name="zone_mean_duration_s", dtype=Float64),
    ],
    source=zone_hour_source,
    online=True,
    tags={"owner": "cityml"},
)

# Demand is a surge signal for the next hour only; the city table has a row every hour,
# so a 2-hour TTL just bridges a late hour.
city_demand = FeatureView(
    name="city_demand",
    entities=[city],
    ttl=timedelta(hours=2),
    schema=[
        Field(name="city_trips_1h", dtype=Int64),
        Field(name="city_demand_ratio_4w", dtype=Float64),
    ],
    source=city_hour_source,
    online=True,
    tags={"owner": "cityml"},
)

# What a zone pair usually takes: the trailing 28 days of its trips, a row per day it had any.
# 28 days (four of each weekday) is long enough for a pair seen a few times a week to have a
# median, short enough to follow a closed bridge within weeks. The TTL equals the window: a
# pair quiet for longer is unknown (missing), not described by trips that have left the window.
zone_pair_history = FeatureView(
    name="zone_pair_history",
    entities=[zone_pair],
    ttl=timedelta(days=28),
    schema=[
        Field(name="pair_trips_28d", dtype=Int64),
        Field(name="pair_median_duration_s", dtype=Float64),
        Field(name="pair_median_speed_kmh", dtype=Float64),
        Field(name="pair_median_fare_per_km", dtype=Float64),
    ],
    source=zone_pair_day_source,
    online=True,
    tags={"owner": "cityml"},
)

# The same history per pickup zone: the fallback where the pair is rare or new (its count says
# how much the pair's medians can be trusted; the model learns when to lean on the zone's).
zone_history = FeatureView(
    name="zone_history",
    entities=[zone],
    ttl=timedelta(days=28),
    schema=[
        Field(name="zone_trips_28d", dtype=Int64),
        Field(name="zone_median_duration_s", dtype=Float64),
        Field(name="zone_median_speed_kmh", dtype=Float64),
        Field(name="zone_median_fare_per_km", dtype=Float64),
    ],
    source=zone_day_source,
    online=True,
    tags={"owner": "cityml"},
)
