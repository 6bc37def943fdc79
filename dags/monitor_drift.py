"""
### monitor_drift

Every day: compare, per city and target, the features the API logged in the last 7 days with the
reference profile saved with that city's champion (Wasserstein distance per feature by default; see
`monitoring/stats.py`), and join the trips completed in those days to the predictions served for them
(realized accuracy, `monitoring/accuracy.py`). Cities with a drifting model, or whose realized MAE
stayed past 1.5x the test MAE for 2 days, get a `retrain_city_models` run for just those cities, with
why in its `reason`, at most once per `CITYML_DRIFT_COOLDOWN_H` hours each (24): a city whose retrain
did not fix it is listed under `cooling_down` in the report, with its newest version's outcome, instead
of being retrained in a loop. The JSON and HTML reports are written under `var/reports/drift/`.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pendulum
from airflow.providers.standard.operators.trigger_dagrun import TriggerDagRunOperator
from airflow.sdk import dag, task


@dag(
    dag_id="monitor_drift",
    schedule="@daily",
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    max_active_runs=1,
    doc_md=__doc__,
    tags=["cityml", "monitoring"],
    default_args={"owner": "cityml", "retries": 2, "retry_delay": timedelta(minutes=5)},
)
def monitor_drift() -> None:
    @task(multiple_outputs=True)
    def drift() -> dict[str, Any]:
        """Drift of every champion over the last week of logged predictions."""
        from cityml.catalog import load_catalog
        from cityml.naming import TARGETS
        from cityml.settings import get_settings
        from monitoring.drift import retrain_conf, run_drift

        s = get_settings()
        report = run_drift(s, load_catalog(s.catalog_path).slugs, list(TARGETS), request=True)
        return {
            "retrain": report["retrain"],
            "conf": retrain_conf(report),
            "cooling_down": sorted(report["cooling_down"]),
            "report_path": report["report_path"],
            "html_path": report["html_path"],
            "verdicts": {f"{m['target']}-{m['city']}": m["verdict"] for m in report["models"]},
        }

    @task.short_circuit
    def needs_retrain(result: dict[str, Any]) -> bool:
        return bool(result["retrain"])

    result = drift()
    retrain = TriggerDagRunOperator(
        task_id="retrain_drifted_cities",
        trigger_dag_id="retrain_city_models",
        conf=result["conf"],  # the cities as a list, as the retrain DAG's form takes them
        wait_for_completion=False,
    )
    needs_retrain(result) >> retrain


monitor_drift()
