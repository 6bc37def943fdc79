"""Entities: what feature rows are keyed by."""

from feast import Entity, ValueType

# Zone ids repeat across cities (zone "z07", TLC zone "141"), so the key is "<city>:<zone>".
zone = Entity(
    name="zone",
    join_keys=["zone_key"],
    value_type=ValueType.STRING,
    description="A pickup or dropoff zone of one city, keyed '<city>:<zone>'.",
)

city = Entity(
    name="city",
    join_keys=["city"],
    value_type=ValueType.STRING,
    description="A city slug from the catalog.",
)

# Directed: "<city>:<pickup zone>><dropoff zone>". The way in and the way out of downtown differ.
zone_pair = Entity(
    name="zone_pair",
    join_keys=["zone_pair_key"],
    value_type=ValueType.STRING,
    description="A (pickup zone, dropoff zone) pair of one city, keyed '<city>:<pickup>><dropoff>'.",
)
