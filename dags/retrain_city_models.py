"""
### retrain_city_models

Retrains cities' **ETA** and **pricing** LightGBM models from Feast features into the MLflow registry:
one mapped task per city (`train_city`, named by its city in the grid view), which builds the city's
training sets once and trains, gates and registers both targets. A version becomes `@champion` only
when the promotion gate passes (beats champion and global on the same fresh test window, enough rows,
training/serving parity, skill over the median, labels like the champion's); a city that fails keeps
its champions and the others go on. `summarise` writes the gate report (JSON + markdown, also logged
to MLflow) and shows promoted / kept / skipped / failed cities in its log and return value.

A run of **every** city (the daily run, or an empty *Cities* list), or a run while a global model
has no champion yet, first retrains the fleet models `eta-global` / `price-global` on every catalog
city; otherwise a run of some cities leaves them alone (they always learn from the whole catalog)
and `train_global` shows as skipped.

**Trigger** (Airflow UI → Trigger): pick *Cities* (empty: all), *Targets*, a *Training window*
in days (0: all stored trips), *Train until* (empty: the run's data interval end, or the trigger time
for a manual run), *Force promotion* (recorded on the version with who triggered). Fits share the
`cityml_training` pool (`cityml services up` creates it), so a retrain of one city never waits
behind a hundred unbounded fits.
"""

from __future__ import annotations

from typing import Any

from airflow.sdk import Param, dag, get_current_context, task

from cityml.dagkit import (
    DEFAULT_ARGS,
    POOL,
    START_DATE,
    catalog_slugs,
    chunk_label,
    city_params,
    cut_off,
    finish,
    plan_cities,
    run_context,
    summarise_run,
)

TARGETS = ["eta", "price"]
#: The form's fields every retrain DAG has; the pick list of cities is the catalog's (read at parse time).
COMMON = city_params(catalog_slugs(), " (which also retrains the global models)")


@dag(
    dag_id="retrain_city_models",
    schedule="@daily",
    start_date=START_DATE,
    catchup=False,
    max_active_runs=1,
    doc_md=__doc__,
    tags=["cityml", "training"],
    default_args=DEFAULT_ARGS,
    params={
        "cities": COMMON["cities"],
        "targets": Param(
            TARGETS,
            type="array",
            items={"type": "string", "enum": TARGETS},
            uniqueItems=True,
            minItems=1,
            examples=TARGETS,
            title="Targets",
            description="Models to retrain for each city: ETA (seconds) and price (the city's currency).",
        ),
        "train_days": COMMON["train_days"],
        "until": COMMON["until"],
        "force_promote": COMMON["force_promote"],
        "tune_budget_s": Param(
            0,
            type="number",
            minimum=0,
            maximum=3600,
            title="Tuning budget (s)",
            description="Seconds of Optuna search per city model; 0: no search.",
        ),
        "reason": COMMON["reason"],
    },
)
def retrain_city_models() -> None:
    @task
    def plan(params: dict[str, Any] | None = None) -> list[list[str]]:
        """The run's cities, in chunks to map over (one city per task up to `CITYML_TRAIN_MAX_TASKS`, 64)."""
        return plan_cities(params or {})

    @task(multiple_outputs=True)
    def window(params: dict[str, Any] | None = None) -> dict[str, Any]:
        """The run's cut-off (the form's, else the data interval end, else the trigger time) and whether it
        retrains the global models."""
        from training.fleet import retrains_global

        p = params or {}
        until, source = cut_off(p)
        run = run_context(p, "plan", "")
        with_global = retrains_global(
            run, list(p.get("cities") or run.catalog.slugs), list(p.get("targets") or TARGETS)
        )
        print(f"training until {until} ({source}); retrains the global models: {with_global}")
        return {"until": until, "until_source": source, "with_global": with_global}

    @task(map_index_template="{{ model_label }}", pool=POOL)
    def train_global(
        target: str, until: str, with_global: bool, params: dict[str, Any] | None = None, run_id: str | None = None
    ) -> dict[str, Any]:
        """The fleet model of one target, on every catalog city; skipped when the run covers some cities only."""
        from airflow.sdk.exceptions import AirflowSkipException

        from cityml.naming import model_name
        from training.global_model import train_global as train

        get_current_context()["model_label"] = model_name(target, "global")  # type: ignore[typeddict-unknown-key]
        if not with_global:
            raise AirflowSkipException("a run of some cities leaves the global models alone")
        result = train(run_context(params or {}, run_id or "airflow", until), target)
        return finish([result.to_dict()])[0]

    @task(map_index_template="{{ model_label }}", pool=POOL, trigger_rule="all_done")
    def train_city(
        cities: list[str], until: str, params: dict[str, Any] | None = None, run_id: str | None = None
    ) -> list[dict[str, Any]]:
        """The city unit for each city of the chunk: both targets trained, gated and registered."""
        from training.fleet import train_fleet

        chunk_label(cities)
        p = params or {}
        ctx = run_context(p, run_id or "airflow", until)
        targets = list(p.get("targets") or TARGETS)
        results = train_fleet(ctx, cities, targets, with_global=False, join_errors="raise")  # retried on a join error
        return finish([r.to_dict() for r in results])

    @task(trigger_rule="all_done")
    def summarise(
        until: str,
        until_source: str,
        with_global: bool,
        chunks: list[list[str]],
        params: dict[str, Any] | None = None,
        run_id: str | None = None,
    ) -> dict[str, Any]:
        """The run's gate report: promoted / kept / skipped / failed models; any failure fails the run."""
        from cityml.naming import GLOBAL

        p = params or {}
        owners = [c for chunk in chunks for c in chunk] + ([GLOBAL] if with_global else [])
        expected = [(t, city) for city in owners for t in p.get("targets") or TARGETS]
        return summarise_run(["train_global", "train_city"], expected, p, until, until_source, run_id or "airflow")

    @task
    def select_targets(params: dict[str, Any] | None = None) -> list[str]:
        from cityml.naming import check_target

        return [check_target(t) for t in (params or {}).get("targets") or TARGETS]

    cut = window()
    fleet = train_global.partial(until=cut["until"], with_global=cut["with_global"]).expand(target=select_targets())
    chunks = plan()
    cities = train_city.partial(until=cut["until"]).expand(cities=chunks)
    fleet >> cities  # the gate compares each city with the fleet model of this run (when it retrains one)
    [fleet, cities] >> summarise(cut["until"], cut["until_source"], cut["with_global"], chunks)


retrain_city_models()
