"""What cityml's retrain DAGs share, and the helper that makes a new per-city model one short DAG file.

The Airflow front door (as ``cityml/cli`` is the shell's): it may call every stage, but only inside task bodies,
so a DAG file importing it stays light at parse time (airflow.sdk and pendulum; STYLE rule 2). Both
``retrain_city_models`` and every :func:`hourly_retrain_dag` use the same pieces: the trigger form's params, the
run's cut-off, a ``RunContext`` per task, cities planned in chunks under Airflow's mapping cap, fits in the
``cityml_training`` pool, a task's results kept for the summary, and the summary's gate report.

A data scientist adding a model commits a FeatureService in ``feature_repo/services.py`` and a DAG file::

    from cityml.dagkit import hourly_retrain_dag
    from cityml.targets import HourlyTarget

    hourly_retrain_dag(
        HourlyTarget(name="demand", feature_service="demand_v1", unit="trips/h"),
        dag_id="retrain_demand",
        doc_md=__doc__,
    )
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

import pendulum
from airflow.sdk import Param, dag, get_current_context, task

from cityml.settings import MAX_TRAIN_DAYS

if TYPE_CHECKING:
    from airflow.sdk import DAG

    from cityml.targets import HourlyTarget
    from training.context import RunContext
    from training.results import TrainResult

POOL = "cityml_training"
#: The form's cut-off: empty, a date, or a date and time (UTC unless it has an offset), years 1900-2099. The
#: lookahead refuses a newline: Python's ``$`` (Airflow checks params with Python's ``re``) matches before one.
UNTIL_PATTERN = (
    r"^(?![\s\S]*\n)(|(19|20)\d{2}-(0[1-9]|1[0-2])-(0[1-9]|[12]\d|3[01])"
    r"([T ]([01]\d|2[0-3]):[0-5]\d(:[0-5]\d(\.\d{1,6})?)?([+-]([01]\d|2[0-3]):?[0-5]\d|Z)?)?)$"
)
RESULTS_KEY = "results"
#: The Airflow connection a summary uses to write the run's note: the api-server's URL and a user allowed to edit
#: runs (role ``user``). ``cityml services up`` and docker-compose.yml set it as ``AIRFLOW_CONN_CITYML_AIRFLOW_API``.
NOTE_CONN = "cityml_airflow_api"
START_DATE = pendulum.datetime(2026, 1, 1, tz="UTC")
DEFAULT_ARGS: dict[str, Any] = {
    "owner": "cityml",
    "retries": 2,
    "retry_delay": timedelta(seconds=30),
    "retry_exponential_backoff": True,
    "max_retry_delay": timedelta(minutes=10),
}


def catalog_slugs() -> list[str] | None:
    """The catalog's slugs for the trigger form's pick list, or None when the catalog cannot be read.

    The one read at parse time (an exception to STYLE rule 2, for a form that cannot offer a typo): the slugs only,
    no validation, and cached by the file's mtime (``cityml.catalog.catalog_slugs``). A broken catalog leaves the
    DAG parsing with a free list; the ``plan`` task then refuses what the catalog does not hold.
    """
    from cityml.catalog import catalog_slugs as slugs

    return slugs()


def city_params(slugs: list[str] | None, what: str) -> dict[str, Param]:
    """The trigger form's params every retrain DAG has: cities, window, cut-off, force, reason.

    ``what``: the models a run retrains, in words (for the *Cities* description).
    """
    items: dict[str, Any] = (
        {"type": "string", "enum": slugs} if slugs else {"type": "string", "pattern": "^[a-z0-9][a-z0-9-]*$"}
    )
    examples: dict[str, Any] = {"examples": slugs} if slugs else {}
    # "null" among the types: the form then lets the field be left empty (Airflow marks other params required).
    return {
        "cities": Param(
            [],
            type=["null", "array"],
            items=items,
            uniqueItems=True,
            **examples,
            title="Cities",
            description=f"Cities to retrain; leave empty for every city of the catalog{what}.",
        ),
        "train_days": Param(
            0,
            type="integer",
            minimum=0,
            maximum=MAX_TRAIN_DAYS,
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
        "reason": Param(
            None,
            type=["null", "string"],
            maxLength=5000,
            title="Reason",
            description="Why this run was asked for; kept in the gate report (monitor_drift fills it in).",
        ),
    }


def run_context(params: dict[str, Any], run_id: str, until: str) -> RunContext:
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


def cut_off(params: dict[str, Any]) -> tuple[str, str]:
    """The run's cut-off as ISO text, and where it came from: the form's, else the data interval end, else the
    trigger time (a manual run)."""
    from airflow.sdk.exceptions import AirflowFailException

    until = params.get("until") or ""
    if until:
        try:  # the form's pattern lets a day that does not exist through (2026-02-30)
            return pendulum.parse(until, tz="UTC").isoformat(), "the form"  # type: ignore[union-attr]
        except ValueError as exc:  # pendulum's ParserError is one
            raise AirflowFailException(f"until: {until!r} is not a date or a time ({exc})") from None
    ctx = get_current_context()
    interval_end = ctx.get("data_interval_end")
    if interval_end:
        return interval_end.isoformat(), "the data interval end"
    return ctx["dag_run"].run_after.isoformat(), "the trigger time (a manual run)"


def plan_cities(params: dict[str, Any]) -> list[list[str]]:
    """The run's cities (the form's, or the whole catalog), in chunks to map over (one city per task up to the
    setting ``train_max_tasks``)."""
    from airflow.sdk.exceptions import AirflowFailException

    from cityml.catalog import CatalogError, load_catalog
    from cityml.settings import get_settings
    from training.fleet import plan_chunks

    settings = get_settings()
    try:
        catalog = load_catalog(settings.catalog_path)
    except CatalogError as exc:  # a broken catalog stays broken: no retry
        raise AirflowFailException(str(exc)) from None
    picked = params.get("cities") or []
    unknown = catalog.unknown(picked)
    if unknown:  # the catalog changed since the form was drawn
        raise AirflowFailException(f"cities: {unknown}")
    chunks = plan_chunks(list(picked or catalog.slugs), settings.train_max_tasks)
    print(f"{sum(map(len, chunks))} cities in {len(chunks)} mapped tasks")
    return chunks


def chunk_label(cities: list[str]) -> str:
    """A mapped task's name in the grid: its city, or the first and how many more."""
    label = cities[0] if len(cities) == 1 else f"{cities[0]} +{len(cities) - 1}"
    get_current_context()["model_label"] = label  # type: ignore[typeddict-unknown-key]
    return label


def finish(results: list[dict[str, Any]]) -> Any:
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


def pulled(ti: Any, task_id: str) -> list[dict[str, Any]]:
    """The kept results of every mapped instance of ``task_id``, whatever state the instance ended in."""
    got = ti.xcom_pull(task_ids=task_id, key=RESULTS_KEY)  # every map index
    if got is None:
        return []
    if got and isinstance(got[0], dict):  # one instance's list
        return list(got)
    return [r for chunk in got if chunk for r in chunk]


def summarise_run(
    task_ids: list[str],
    expected: list[tuple[str, str]],
    params: dict[str, Any],
    until: str,
    until_source: str,
    run_id: str,
) -> dict[str, Any]:
    """The run's gate report (JSON + markdown, logged to MLflow): promoted / kept / skipped / failed models.

    ``expected``: every (target, city) the run owed a model for; one whose task ended without a result counts as
    failed. Any failure fails the run (after the report), so a run is green only when every model was trained or
    skipped for lack of data.
    """
    from airflow.sdk.exceptions import AirflowFailException

    from cityml.naming import model_name
    from cityml.settings import get_settings
    from training.report import counts, run_note, write_gate_report
    from training.results import TrainResult

    ti = get_current_context()["ti"]
    results: list[TrainResult] = [TrainResult.from_dict(r) for t in task_ids for r in pulled(ti, t)]
    got = {r.model for r in results}
    for target, city in expected:
        if model_name(target, city) not in got:
            why = "no result: its task ended before training did (see the task's log)"
            results.append(TrainResult.failure(model_name(target, city), city, target, why))
    window = f"trips before {until} ({until_source})"
    if params.get("train_days"):
        window = f"the last {params['train_days']} days of {window}"
    doc = write_gate_report(get_settings(), results, run_id, str(params.get("reason") or ""), window)
    print(f"{doc['markdown']}\n\n{window}; gate report: {doc['path']}")
    print(set_run_note(run_note(results, window, str(doc["path"]))))
    failed = [f"{r.model} ({r.reason[:200]})" for r in results if r.status == "failed"]
    if failed:
        raise AirflowFailException(f"{len(failed)} of {len(results)} models failed: {'; '.join(failed)[:2000]}")
    return {"counts": counts(results), "window": window, "report": doc["path"], "markdown": doc["markdown"]}


def set_run_note(note: str) -> str:
    """Show ``note`` (markdown) as the running DAG run's note in the Airflow UI; what happened, in words.

    A task cannot edit its run through the task SDK, so this goes through the api-server's REST API (``PATCH
    /api/v2/dags/{dag_id}/dagRuns/{run_id}``) as the user of the :data:`NOTE_CONN` connection. Without that
    connection (``dag.test()``, a bare install) the summary stays in the task's log and the gate report; a
    refused or failed call is reported, never raised: the note is for people, the report is the record.
    """
    import httpx
    from airflow.sdk import Connection

    run = get_current_context()["dag_run"]
    try:
        conn = Connection.get(NOTE_CONN)
    except Exception:  # noqa: BLE001 - not configured: nothing to write through
        return f"run note: no {NOTE_CONN} connection, the summary is in this log and the gate report"
    base = _url(conn.host or "", conn.schema, conn.port)
    try:
        with httpx.Client(base_url=base, timeout=30) as api:
            r = api.post("/auth/token", json={"username": conn.login, "password": conn.password})
            r.raise_for_status()
            r = api.patch(
                f"/api/v2/dags/{run.dag_id}/dagRuns/{run.run_id}",
                params={"update_mask": "note"},
                json={"note": note},
                headers={"Authorization": f"Bearer {r.json()['access_token']}"},
            )
            r.raise_for_status()
    except httpx.HTTPError as exc:
        return f"run note: not written ({type(exc).__name__}: {str(exc)[:300]})"
    return f"run note written ({len(note)} characters) as {conn.login}"


def _url(host: str, scheme: str | None, port: int | None) -> str:
    """An HTTP connection's base URL: its host as a URL, or host + scheme (HttpHook's use of ``schema``) + port."""
    from urllib.parse import urlsplit

    if "://" not in host:
        host = f"{scheme or 'http'}://{host}"
    parts = urlsplit(host.rstrip("/"))
    netloc = parts.netloc if parts.port or not port else f"{parts.netloc}:{port}"
    return f"{parts.scheme}://{netloc}{parts.path}"


def hourly_retrain_dag(
    target: HourlyTarget,
    *,
    dag_id: str,
    doc_md: str | None,
    schedule: str | None = "@daily",
    tags: tuple[str, ...] = (),
) -> DAG:
    """A DAG that retrains ``<target.name>-<city>`` for the chosen cities (every city by default).

    Tasks: ``window`` (the cut-off), ``plan`` (cities in chunks), ``train`` (mapped, named by city, in the
    ``cityml_training`` pool: each city's hourly training set built point-in-time correct from the target's
    FeatureService, fitted, gated and registered by ``training.hourly``), ``summarise`` (the gate report). The
    trigger form has the same Cities / Training window / Train until / Force promotion / Reason fields as
    ``retrain_city_models``.
    """
    spec = target.to_dict()
    slugs = catalog_slugs()

    @dag(
        dag_id=dag_id,
        schedule=schedule,
        start_date=START_DATE,
        catchup=False,
        max_active_runs=1,
        doc_md=doc_md,
        tags=["cityml", "training", target.name, *tags],
        default_args=DEFAULT_ARGS,
        params=city_params(slugs, ""),
    )
    def build() -> None:
        @task(multiple_outputs=True)
        def window(params: dict[str, Any] | None = None) -> dict[str, Any]:
            until, source = cut_off(params or {})
            print(f"training until {until} ({source})")
            return {"until": until, "until_source": source}

        @task
        def plan(params: dict[str, Any] | None = None) -> list[list[str]]:
            """The run's cities in chunks, once the target's FeatureService is known to Feast (a typo in the DAG
            file fails here, naming it, rather than in every city's task)."""
            from airflow.sdk.exceptions import AirflowFailException

            from cityml.features.featurestore import get_store
            from cityml.settings import get_settings

            try:
                get_store(get_settings()).get_feature_service(spec["feature_service"])
            except Exception as exc:  # Feast's own not-found error, or a registry it cannot read
                raise AirflowFailException(
                    f"feature_service: {spec['feature_service']!r} is not registered in Feast "
                    f"(define it in feature_repo/services.py, then cityml features apply): {exc}"
                ) from exc
            return plan_cities(params or {})

        @task(map_index_template="{{ model_label }}", pool=POOL)
        def train(
            cities: list[str], until: str, params: dict[str, Any] | None = None, run_id: str | None = None
        ) -> list[dict[str, Any]]:
            """``training.hourly.train_hourly_city`` for each city of the chunk."""
            from cityml.targets import HourlyTarget
            from training.hourly import train_hourly_city

            chunk_label(cities)
            ctx = run_context(params or {}, run_id or "airflow", until)
            model = HourlyTarget.from_dict(spec)
            return finish([train_hourly_city(ctx, city, model).to_dict() for city in cities])

        @task(trigger_rule="all_done")
        def summarise(
            until: str,
            until_source: str,
            chunks: list[list[str]],
            params: dict[str, Any] | None = None,
            run_id: str | None = None,
        ) -> dict[str, Any]:
            expected = [(spec["name"], city) for chunk in chunks for city in chunk]
            return summarise_run(["train"], expected, params or {}, until, until_source, run_id or "airflow")

        # XComArgs: Airflow resolves them at run time (the type checker sees no items in them).
        cut: Any = window()
        chunks: Any = plan()
        trained = train.partial(until=cut["until"]).expand(cities=chunks)
        trained >> summarise(cut["until"], cut["until_source"], chunks)

    made: Callable[[], DAG] = build  # type: ignore[assignment]
    return made()
