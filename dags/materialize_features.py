"""
### materialize_features

Every hour: rebuild the offline feature tables from the stored trips, then load what is new into
the Feast online store (SQLite or Redis), up to the end of the run's data interval.

Materialization is incremental: Feast remembers where each view stopped, so a re-run of the same
interval writes nothing new and a missed hour is picked up by the next run.
"""

from __future__ import annotations

from datetime import timedelta

import pendulum
from airflow.sdk import dag, task


@dag(
    dag_id="materialize_features",
    schedule="@hourly",
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    max_active_runs=1,
    doc_md=__doc__,
    tags=["cityml", "features"],
    default_args={"owner": "cityml", "retries": 2, "retry_delay": timedelta(minutes=1)},
)
def materialize_features() -> None:
    @task
    def build_tables() -> dict[str, int]:
        """Feature tables (zone-hour traffic, city-hour demand) from every stored trip."""
        from cityml.features.feature_tables import build_feature_tables
        from cityml.settings import get_settings

        s = get_settings()
        return build_feature_tables(s.trips_dir, s.features_dir)

    @task
    def materialize(data_interval_end: pendulum.DateTime | None = None) -> dict[str, str]:
        """Incremental materialization up to the interval end (what each view did)."""
        from cityml.features.featurestore import materialize as run
        from cityml.settings import get_settings

        end = data_interval_end or pendulum.now("UTC")
        return run(get_settings(), end=end)

    build_tables() >> materialize()


materialize_features()
