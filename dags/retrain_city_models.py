"""
### retrain_city_models

Retrains every city's **ETA** and **pricing** LightGBM models from Feast features into the MLflow
registry, one mapped task per (city, target), named `<target>-<city>` in the grid view.

First the fleet models `eta-global` / `price-global` are retrained on every city (the city is a
categorical feature): they serve cities without a champion and are the bar each city model must
beat. Then each (city, target) task trains on trips picked up before the run's data interval end,
registers a new version of `eta-<city>` / `price-<city>` and moves `@champion` only when the
promotion gate passes (beats champion and global on the same fresh test window, enough rows,
training/serving parity, skill over the median). A city that fails keeps its champion; the others
go on. The `report` task writes the gate report (JSON + markdown, also logged to MLflow).

**Trigger with config** (Airflow UI → Trigger DAG w/ config):
`{"cities": "lisbon,nairobi", "targets": ["eta"]}` — `cities` is a comma list or `all`;
`"tune_budget_s": 60` searches each city model's LightGBM parameters with Optuna for 60 s first
(scored on the validation window; the gate still decides on the test window). `"until":
"2026-03-01"` trains on trips picked up before that day (or ISO time) instead of the run's data
interval end. `reason` is free text kept in the gate report: `monitor_drift` fills it with why it
asked for the run (drifted features, realized accuracy).
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pendulum
from airflow.sdk import Param, dag, get_current_context, task


def _until(params: dict[str, Any] | None, data_interval_end: pendulum.DateTime | None) -> Any:
    """The training cut-off: the ``until`` param if given, else the run's data interval end."""
    value = (params or {}).get("until") or ""
    return pendulum.parse(value, tz="UTC") if value else data_interval_end


@dag(
    dag_id="retrain_city_models",
    schedule="@daily",
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    max_active_runs=1,
    doc_md=__doc__,
    tags=["cityml", "training"],
    default_args={"owner": "cityml", "retries": 2, "retry_delay": timedelta(minutes=2)},
    params={
        "cities": Param("all", type="string", description="Comma-separated city slugs, or 'all'."),
        "targets": Param(["eta", "price"], type="array", description="Targets to retrain."),
        "tune_budget_s": Param(
            0, type="number", minimum=0, description="Seconds of Optuna search per city model; 0: no search."
        ),
        "until": Param(
            "",
            type="string",
            pattern=r"^$|^\d{4}-\d{2}-\d{2}([T ][0-9:.]+([+-]\d{2}:?\d{2}|Z)?)?$",
            description="Train on trips picked up before this date or ISO time (UTC); empty: the run's data "
            "interval end.",
        ),
        "reason": Param("", type="string", description="Why this run was asked for; kept in the gate report."),
    },
)
def retrain_city_models() -> None:
    @task
    def select_cities(params: dict[str, Any] | None = None) -> list[str]:
        """The catalog cities this run retrains."""
        from cityml.catalog import load_catalog
        from cityml.settings import get_settings

        spec = (params or {}).get("cities", "all")
        return [c.slug for c in load_catalog(get_settings().catalog_path).select(spec)]

    @task
    def select_targets(params: dict[str, Any] | None = None) -> list[str]:
        from cityml.naming import check_target

        return [check_target(t) for t in (params or {}).get("targets", ["eta", "price"])]

    @task(map_index_template="{{ model_label }}")
    def train_global(
        target: str,
        params: dict[str, Any] | None = None,
        run_id: str | None = None,
        data_interval_end: pendulum.DateTime | None = None,
    ) -> dict[str, Any]:
        """The fleet model of one target, on every selected city."""
        from cityml.catalog import load_catalog
        from cityml.settings import get_settings
        from training.pipeline import train_global as fit_global

        get_current_context()["model_label"] = f"{target}-global"  # type: ignore[typeddict-unknown-key]
        s = get_settings()
        cities = [c.slug for c in load_catalog(s.catalog_path).cities]
        until = _until(params, data_interval_end)
        return fit_global(s, target, cities, until=until, run_label=run_id or "airflow")

    @task(map_index_template="{{ model_label }}", retries=1)
    def train(
        city: str,
        target: str,
        params: dict[str, Any] | None = None,
        run_id: str | None = None,
        data_interval_end: pendulum.DateTime | None = None,
    ) -> dict[str, Any]:
        """Train, register and gate one city's model on data before the interval end."""
        from cityml.settings import get_settings
        from training.pipeline import train_city

        get_current_context()["model_label"] = f"{target}-{city}"  # type: ignore[typeddict-unknown-key]
        s = get_settings()
        budget = float((params or {}).get("tune_budget_s") or 0)
        if budget:
            s = s.model_copy(update={"tune_budget_s": budget})
        return train_city(s, city, target, until=_until(params, data_interval_end), run_label=run_id or "airflow")

    @task(trigger_rule="all_done")
    def report(
        fleet: list[dict[str, Any]],
        results: list[dict[str, Any]],
        params: dict[str, Any] | None = None,
        run_id: str | None = None,
    ) -> str:
        """Write the run's gate report (JSON + markdown, logged to MLflow); returns its path."""
        from cityml.settings import get_settings
        from training.report import write_gate_report

        reason = str((params or {}).get("reason") or "")
        doc = write_gate_report(get_settings(), [*fleet, *results], run_id or "airflow", reason)
        print(doc["markdown"])
        return str(doc["path"])

    targets = select_targets()
    fleet = train_global.expand(target=targets)
    results = train.expand(city=select_cities(), target=targets)
    fleet >> results  # the gate compares each city with the fleet model of this run
    report(fleet, results)


retrain_city_models()
