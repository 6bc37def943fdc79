"""Feature views: the features models train and serve on."""

from datetime import timedelta

from entities import city, zone
from feast import FeatureView, Field
from feast.types import Float64, Int64
from sources import city_hour_source, zone_hour_source

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
