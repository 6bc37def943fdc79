"""
### retrain_demand

Per-city **hourly demand forecast**: how many trips each city will see picked up in the next hour, learned from
one row per city and hour with the city's demand features (`demand_v1`: trips completed in the hour before and
the ratio to the same hour of the 4 weeks before) plus the local hour and weekday. Registered as
`demand-<city>`; a version becomes `@champion` when it beats the champion on the same fresh test window, has
enough hours to learn from and has skill over the training median. Its test MAE is reported beside a
seasonal baseline (the training window's mean for the same hour of the week).

This whole DAG is the one-file recipe for a new per-city model (`cityml.dagkit.hourly_retrain_dag`); the Airflow
trigger form has the same fields as `retrain_city_models`. (Airflow only parses files that mention both "airflow"
and "dag": this docstring does.)
"""

from cityml.dagkit import hourly_retrain_dag
from cityml.targets import HourlyTarget

hourly_retrain_dag(
    HourlyTarget(name="demand", feature_service="demand_v1", aggregate="count", unit="trips/h"),
    dag_id="retrain_demand",
    doc_md=__doc__,
)
