"""Offline sources: parquet tables written by `cityml features build` from the stored trips."""

import os

from feast import FileSource

# Where cityml writes the feature tables; relative paths resolve against this repo.
FEATURES_DIR = os.environ.get("CITYML_FEATURES_DIR", "../var/data/features")

zone_hour_source = FileSource(
    name="zone_hour_source",
    path=f"{FEATURES_DIR}/zone_hour.parquet",
    timestamp_field="event_timestamp",
    created_timestamp_column="created",
    description="Trips completed per pickup zone and hour, stamped at the end of the hour.",
)

city_hour_source = FileSource(
    name="city_hour_source",
    path=f"{FEATURES_DIR}/city_hour.parquet",
    timestamp_field="event_timestamp",
    created_timestamp_column="created",
    description="Trips completed per city and hour, stamped at the end of the hour.",
)

zone_pair_day_source = FileSource(
    name="zone_pair_day_source",
    path=f"{FEATURES_DIR}/zone_pair_day.parquet",
    timestamp_field="event_timestamp",
    created_timestamp_column="created",
    description="28-day trip history per (pickup zone, dropoff zone), stamped at the end of each day with trips.",
)

zone_day_source = FileSource(
    name="zone_day_source",
    path=f"{FEATURES_DIR}/zone_day.parquet",
    timestamp_field="event_timestamp",
    created_timestamp_column="created",
    description="28-day trip history per pickup zone, stamped at the end of each day with trips.",
)
