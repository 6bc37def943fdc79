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

from datetime import datetime, timedelta
from typing import Any

import pendulum
from airflow.sdk import Param, dag, get_current_context, task

POOL = "cityml_training"
TARGETS = ["eta", "price"]
UNTIL_PATTERN = r"^$|^\d{4}-\d{2}-\d{2}([T ][0-9:.]+([+-]\d{2}:?\d{2}|Z)?)?$"


def _catalog_slugs() -> list[str] | None:
    """The catalog's slugs for the trigger form's pick list, or None when the catalog cannot be read.

    The one read at parse time (an exception to STYLE rule 2, for a form that cannot offer a typo): the slugs only,
    no validation, and cached by the file's mtime (``cityml.catalog.catalog_slugs``). A broken catalog leaves the
    DAG parsing with a free list; the ``plan`` task then refuses what the catalog does not hold.
    """
    from cityml.catalog import catalog_slugs

    return catalog_slugs()


SLUGS = _catalog_slugs()
CITY_ITEMS: dict[str, Any] = (
    {"type": "string", "enum": SLUGS} if SLUGS else {"type": "string", "pattern": "^[a-z0-9][a-z0-9-]*$"}
)


def _context(params: dict[str, Any], run_id: str, until: str) -> Any:
    """The run's RunContext in a task: settings (with the form's tuning budget), catalog, window, who forced."""
    from cityml.settings import get_settings
    from training.context import RunContext

    settings = get_settings()
    budget = float(params.get("tune_budget_s") or 0)
    if budget:
        settings = settings.model_copy(update={"tune_budget_s": budget})
    forced_by = ""
    if params.get("force_promote"):
        user = get_current_context()["dag_run"].triggering_user_name or "airflow"
        forced_by = f"airflow:{user} ({run_id})"
    return RunContext.open(
        settings,
        run_label=run_id,
        until=datetime.fromisoformat(until) if until else None,
        train_days=int(params.get("train_days") or 0),
        forced_by=forced_by,
    )


@dag(
    dag_id="retrain_city_models",
    schedule="@daily",
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    max_active_runs=1,
    doc_md=__doc__,
    tags=["cityml", "training"],
    default_args={
        "owner": "cityml",
        "retries": 2,
        "retry_delay": timedelta(seconds=30),
        "retry_exponential_backoff": True,
        "max_retry_delay": timedelta(minutes=10),
    },
    params={
        # "null" among the types: the form then lets the field be left empty (Airflow marks other params required).
        "cities": Param(
            [],
            type=["null", "array"],
            items=CITY_ITEMS,
            uniqueItems=True,
            **({"examples": SLUGS} if SLUGS else {}),
            title="Cities",
            description="Cities to retrain; leave empty for every city of the catalog (which also retrains the "
            "global models).",
        ),
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
        "train_days": Param(
            0,
            type="integer",
            minimum=0,
            maximum=3650,
            title="Training window (days)",
            description="Train on the last N days before 'Train until'; 0: every stored trip.",
        ),
        "until": Param(
            None,
            type=["null", "string"],
            pattern=UNTIL_PATTERN,
            title="Train until",
            description="Trips picked up before this date or ISO time, UTC unless it says otherwise: 2026-11-30 or "
            "2026-11-30T06:00Z. Empty: the run's data interval end, or the trigger time for a manual run.",
        ),
        "force_promote": Param(
            False,
            type="boolean",
            title="Force promotion",
            description="Make each new version champion whatever the gate says (recorded on the version, with "
            "who triggered). For a change the gate cannot know is real, e.g. a new tariff.",
        ),
        "tune_budget_s": Param(
            0,
            type="number",
            minimum=0,
            maximum=3600,
            title="Tuning budget (s)",
            description="Seconds of Optuna search per city model; 0: no search.",
        ),
        "reason": Param(
            None,
            type=["null", "string"],
            maxLength=5000,
            title="Reason",
            description="Why this run was asked for; kept in the gate report (monitor_drift fills it in).",
        ),
    },
)
def retrain_city_models() -> None:
    @task
    def plan(params: dict[str, Any] | None = None) -> list[list[str]]:
        """The run's cities, in chunks to map over (one city per task up to 512 cities)."""
        from airflow.sdk.exceptions import AirflowFailException

        from cityml.catalog import load_catalog
        from cityml.settings import get_settings
        from training.fleet import plan_chunks

        catalog = load_catalog(get_settings().catalog_path)
        picked = (params or {}).get("cities") or []
        unknown = [c for c in picked if c not in catalog]
        if unknown:  # the catalog changed since the form was drawn
            raise AirflowFailException(f"cities: not in the catalog {catalog.slugs}: {unknown}")
        chunks = plan_chunks(list(picked or catalog.slugs))
        print(f"{sum(map(len, chunks))} cities in {len(chunks)} mapped tasks")
        return chunks

    @task(multiple_outputs=True)
    def window(params: dict[str, Any] | None = None) -> dict[str, Any]:
        """The run's cut-off (the form's, else the data interval end, else the trigger time) and whether it
        retrains the global models."""
        from training.fleet import retrains_global

        p = params or {}
        ctx = get_current_context()
        until, source = p.get("until") or "", "the form"
        if until:
            until = pendulum.parse(until, tz="UTC").isoformat()  # type: ignore[union-attr]
        else:
            interval_end = ctx.get("data_interval_end")
            until = (interval_end or ctx["dag_run"].run_after).isoformat()
            source = "the data interval end" if interval_end else "the trigger time (a manual run)"
        run = _context(p, "plan", "")
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
        result = train(_context(params or {}, run_id or "airflow", until), target)
        return _finish([result.to_dict()])[0]

    @task(map_index_template="{{ model_label }}", pool=POOL, trigger_rule="all_done")
    def train_city(
        cities: list[str], until: str, params: dict[str, Any] | None = None, run_id: str | None = None
    ) -> list[dict[str, Any]]:
        """The city unit for each city of the chunk: both targets trained, gated and registered."""
        from training.city import train_city as train

        label = cities[0] if len(cities) == 1 else f"{cities[0]} +{len(cities) - 1}"
        get_current_context()["model_label"] = label  # type: ignore[typeddict-unknown-key]
        p = params or {}
        ctx = _context(p, run_id or "airflow", until)
        targets = list(p.get("targets") or TARGETS)
        return _finish([r.to_dict() for city in cities for r in train(ctx, city, targets)])

    @task(trigger_rule="all_done")
    def summarise(
        until: str,
        until_source: str,
        with_global: bool,
        chunks: list[list[str]],
        params: dict[str, Any] | None = None,
        run_id: str | None = None,
    ) -> dict[str, Any]:
        """The run's gate report (JSON + markdown, logged to MLflow): promoted / kept / skipped / failed models.
        A model whose task ended without a result counts as failed; any failure fails the run (after the report),
        so a run is green only when every model was trained or skipped for lack of data."""
        from airflow.sdk.exceptions import AirflowFailException

        from cityml.naming import GLOBAL, model_name
        from cityml.settings import get_settings
        from training.report import counts, write_gate_report
        from training.results import TrainResult

        ti = get_current_context()["ti"]
        results = [TrainResult.from_dict(r) for r in [*_pulled(ti, "train_global"), *_pulled(ti, "train_city")]]
        p = params or {}
        targets = list(p.get("targets") or TARGETS)
        owners = [*(chunk for chunk in chunks), *([[GLOBAL]] if with_global else [])]
        got = {r.model for r in results}
        for city in (c for chunk in owners for c in chunk):
            for t in targets:
                if model_name(t, city) not in got:
                    why = "no result: its task ended before training did (see the task's log)"
                    results.append(TrainResult.failure(model_name(t, city), city, t, why))
        window = f"trips before {until} ({until_source})"
        if p.get("train_days"):
            window = f"the last {p['train_days']} days of {window}"
        doc = write_gate_report(get_settings(), results, run_id or "airflow", str(p.get("reason") or ""), window)
        print(f"{doc['markdown']}\n\n{window}; gate report: {doc['path']}")
        failed = [f"{r.model} ({r.reason[:200]})" for r in results if r.status == "failed"]
        if failed:
            raise AirflowFailException(f"{len(failed)} of {len(results)} models failed: {'; '.join(failed)[:2000]}")
        return {"counts": counts(results), "window": window, "report": doc["path"], "markdown": doc["markdown"]}

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


RESULTS_KEY = "results"


def _finish(results: list[dict[str, Any]]) -> Any:
    """Keep a task's results for the summary, then end it in the state they call for: skipped when every model
    was skipped for lack of data, failed when one failed (no retry: the reason is in the result), else success."""
    from airflow.sdk.exceptions import AirflowFailException, AirflowSkipException

    get_current_context()["ti"].xcom_push(RESULTS_KEY, results)
    failed = [f"{r['model']}: {r['reason']}" for r in results if r["status"] == "failed"]
    if failed:
        raise AirflowFailException("; ".join(failed))
    if results and all(r["status"] == "skipped" for r in results):
        raise AirflowSkipException("; ".join(f"{r['model']}: {r['reason']}" for r in results))
    return results


def _pulled(ti: Any, task_id: str) -> list[dict[str, Any]]:
    """The kept results of every mapped instance of ``task_id``, whatever state the instance ended in."""
    pulled = ti.xcom_pull(task_ids=task_id, key=RESULTS_KEY)  # every map index
    if pulled is None:
        return []
    if pulled and isinstance(pulled[0], dict):  # one instance's list
        return list(pulled)
    return [r for chunk in pulled if chunk for r in chunk]


retrain_city_models()
