"""Feature services: one versioned service per target; each model version is tagged with its service.

A new version is a new service: the old one stays, so the champions trained on it keep serving
(serving reads the service named by the model's tag) until a retrain replaces them. New models
train on the version ``cityml.naming.FEATURE_SERVICE_VERSION`` names.

Request-time features (distance, bearing, local hour, weekday, weekend) are not here: they are
computed from the request by `cityml.features.request_features`, the one function training and serving share.
"""

from feast import FeatureService
from views import city_demand, zone_history, zone_pair_history, zone_traffic


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


def _history_views() -> list:
    """The pair's history, and each end's zone history (the pickup zone's trips, keyed by either end).

    Medians only: the trip counts stay in the views (and the online store) for people, not in the
    models. A count grows for 28 days after a city's first trip, so a model that learned from it
    splits on the city's age, and a drift check reads the growth as drift.
    """
    pair = [f.name for f in zone_pair_history.features if "median" in f.name]
    zone = [f.name for f in zone_history.features if "median" in f.name]
    return [
        zone_pair_history[pair],
        zone_history[zone].with_name("pickup_history").with_join_key_map({"zone_key": "pickup_zone_key"}),
        zone_history[zone].with_name("dropoff_history").with_join_key_map({"zone_key": "dropoff_zone_key"}),
    ]


eta_v2 = FeatureService(
    name="eta_v2",
    features=[*_zone_traffic_twice(), city_demand, *_history_views()],
    description="ETA features with the 28-day trip history of the zone pair and of each zone.",
)

price_v2 = FeatureService(
    name="price_v2",
    features=[*_zone_traffic_twice(), city_demand, *_history_views()],
    description="Pricing features with the 28-day trip history of the zone pair and of each zone.",
)

# A city-hour model's service (training.hourly): the city's demand at the start of the hour it forecasts.
demand_v1 = FeatureService(
    name="demand_v1",
    features=[city_demand],
    description="Features of the per-city hourly demand forecast (trips picked up in the next hour).",
)
