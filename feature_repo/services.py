"""Feature services: one versioned service per target; each model version is tagged with its service.

Request-time features (distance, bearing, local hour, weekday, weekend) are not here: they are
computed from the request by `cityml.request_features`, the one function training and serving share.
"""

from feast import FeatureService
from views import city_demand, zone_traffic


def _zone_traffic_twice() -> list:
    """The zone view joined twice, on the pickup and on the dropoff zone.

    Built in a function, not bound at module level: Feast registers every FeatureView it finds
    as a module attribute, and these projections are not views of their own.
    """
    return [
        zone_traffic.with_name("pickup").with_join_key_map({"zone_key": "pickup_zone_key"}),
        zone_traffic.with_name("dropoff").with_join_key_map({"zone_key": "dropoff_zone_key"}),
    ]


eta_v1 = FeatureService(
    name="eta_v1",
    features=[*_zone_traffic_twice(), city_demand],
    description="Features of the ETA models (trip duration in seconds).",
)

price_v1 = FeatureService(
    name="price_v1",
    features=[*_zone_traffic_twice(), city_demand],
    description="Features of the pricing models (fare in the city's currency).",
)
