"""The ``cityml`` command line.

Commands that report take ``--json`` and then print one JSON document on stdout; logs and
progress go to stderr. Heavy packages (training, serving, monitoring) are imported inside the
command that needs them, so ``cityml --help`` stays fast and the core does not depend on them.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Annotated, Any

import typer

from cityml.catalog import CatalogError, load_catalog
from cityml.cli.services import services_app
from cityml.naming import TARGETS, check_target
from cityml.settings import MAX_TRAIN_DAYS, get_settings

app = typer.Typer(help="cityml: per-city ETA and pricing models, from trips to predictions.", no_args_is_help=True)
data_app = typer.Typer(help="Trip data: generate synthetic cities, import real ones.", no_args_is_help=True)
features_app = typer.Typer(help="Feast feature store: apply definitions, materialize.", no_args_is_help=True)
models_app = typer.Typer(help="The MLflow registry fleet.", no_args_is_help=True)
drift_app = typer.Typer(help="Drift of live features against the training reference.", invoke_without_command=True)
import_app = typer.Typer(help="Import real trip files.", no_args_is_help=True)
monitor_app = typer.Typer(help="Monitoring beside drift: realized accuracy from completed trips.", no_args_is_help=True)
data_app.add_typer(import_app, name="import")
app.add_typer(data_app, name="data")
app.add_typer(features_app, name="features")
app.add_typer(models_app, name="models")
app.add_typer(drift_app, name="drift")
app.add_typer(monitor_app, name="monitor")
app.add_typer(services_app, name="services")

JsonOpt = Annotated[bool, typer.Option("--json", help="Print one JSON document on stdout.")]
log = logging.getLogger("cityml")


def _setup_logging() -> Path:
    """Library INFO logs (Feast, MLflow, LightGBM, ours) go to ``<home>/logs/cityml.log``; the terminal gets
    warnings and errors only, besides the command's progress and results (``CITYML_VERBOSE=1``: INFO there too)."""
    path = get_settings().home / "logs" / "cityml.log"
    path.parent.mkdir(parents=True, exist_ok=True)
    fmt = logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
    to_file = logging.FileHandler(path)
    to_file.setFormatter(fmt)
    to_terminal = logging.StreamHandler(sys.stderr)
    to_terminal.setFormatter(fmt)
    verbose = os.environ.get("CITYML_VERBOSE", "").lower() in ("1", "true", "yes")
    to_terminal.setLevel(logging.INFO if verbose else logging.WARNING)
    logging.basicConfig(level=logging.INFO, handlers=[to_file, to_terminal], force=True)
    return path


def _progress(quiet: bool) -> Any:
    """A progress bar on stderr (none under ``--json`` or when stderr is not a terminal)."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    console = Console(stderr=True)
    return Progress(
        TextColumn("{task.description:<40}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
        disable=quiet or not console.is_terminal,
        transient=True,
    )


def _emit(doc: Any, as_json: bool, human: str) -> None:
    if as_json:
        typer.echo(json.dumps(doc, indent=2, default=str))
    else:
        typer.echo(human)


def _fail(message: str) -> typer.Exit:
    typer.secho(f"error: {message}", fg="red", err=True)
    return typer.Exit(2)


MAX_HOURS = 366 * 24.0  # a year of logged predictions: more is no drift window


def _hours(value: float) -> timedelta:
    """``--hours`` as a window: a number of hours from 1 to a year (click's range lets NaN through)."""
    if not (1 <= value <= MAX_HOURS):  # False for NaN too
        raise _fail(f"--hours {value}: give a number of hours from 1 to {MAX_HOURS:g}")
    return timedelta(hours=value)


def _targets(spec: str) -> list[str]:
    try:
        return [check_target(t.strip()) for t in spec.split(",") if t.strip()]
    except ValueError as exc:
        raise _fail(f"--targets: {exc}") from exc


def _cities(spec: str) -> list[str]:
    try:
        return [c.slug for c in load_catalog(get_settings().catalog_path).select(spec)]
    except (KeyError, CatalogError) as exc:
        raise _fail(f"--cities: {exc.args[0]}") from exc


def _day(value: str | None, option: str) -> datetime | None:
    if value is None:
        return None
    try:
        return datetime.combine(date.fromisoformat(value), datetime.min.time(), UTC)
    except ValueError as exc:
        raise _fail(f"{option}: {value!r} is not a date (YYYY-MM-DD)") from exc


def _moment(value: str | None, option: str) -> datetime | None:
    """A date (midnight UTC) or an ISO time (UTC unless it says otherwise), as the retrain DAG's form takes it."""
    if value is None:
        return None
    try:
        at = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError as exc:
        raise _fail(f"{option}: {value!r} is not a date (YYYY-MM-DD) or an ISO time") from exc
    return at if at.tzinfo is not None else at.replace(tzinfo=UTC)


@app.command()
def config(as_json: JsonOpt = False) -> None:
    """Show the effective settings (secrets masked)."""
    doc = get_settings().public()
    _emit(doc, as_json, "\n".join(f"{k:<22} {v}" for k, v in doc.items()))


@data_app.command("generate")
def data_generate(
    cities: Annotated[str, typer.Option(help="How many catalog cities (a number), or a comma list, or 'all'.")] = "all",
    days: Annotated[int, typer.Option(min=1, max=400, help="Days of trips per city.")] = 30,
    seed: Annotated[int, typer.Option(help="Same seed and dates, same trips.")] = 7,
    end: Annotated[str | None, typer.Option(help="Last day is the day before END (default: today, UTC).")] = None,
    slow_city: Annotated[
        str | None, typer.Option(help="A city whose central zones slow down from --slow-from (drift scenario).")
    ] = None,
    slow_from: Annotated[str | None, typer.Option(help="First slowed day of --slow-city (YYYY-MM-DD).")] = None,
    slow_factor: Annotated[float, typer.Option(min=0.1, max=1.0, help="Speed kept in the slowed zones.")] = 0.7,
    as_json: JsonOpt = False,
) -> None:
    """Write synthetic trips for catalog cities, one parquet file per city and day."""
    from cityml.data.synth import Slowdown, central_zones, generate_city
    from cityml.data.trips import write_trips

    _setup_logging()
    s = get_settings()
    catalog = load_catalog(s.catalog_path)
    synthetic = [c for c in catalog.cities if c.synthetic is not None]
    if cities.isdigit():
        if int(cities) > len(synthetic):
            raise _fail(f"--cities {cities}: the catalog has {len(synthetic)} synthetic cities")
        chosen = synthetic[: int(cities)]
    else:
        chosen = [catalog.get(slug) for slug in _cities(cities)]
        real = [c.slug for c in chosen if c.synthetic is None]
        if real:
            raise _fail(f"--cities: {', '.join(real)} has no synthetic: block in the catalog (its trips are imported)")
    last = (_day(end, "--end") or datetime.now(UTC)).date()
    start = last - timedelta(days=days)
    slowdown = None
    if slow_city is not None:
        slowed = _day(slow_from, "--slow-from")
        if slow_city not in {c.slug for c in chosen} or slowed is None:
            raise _fail("--slow-city must be one of the generated cities, with --slow-from")
        slowdown = Slowdown(slowed.date(), central_zones(catalog.get(slow_city)), slow_factor)
    summary = {}
    for city in chosen:
        trips = generate_city(city, start, days, seed, slowdown if city.slug == slow_city else None)
        files = write_trips(s.trips_dir, trips)
        summary[city.slug] = {"trips": len(trips), "files": len(files)}
        log.info("%s: %d trips in %d files", city.slug, len(trips), len(files))
    doc: dict[str, Any] = {
        "start": start.isoformat(),
        "end": last.isoformat(),
        "cities": summary,
        "trips_dir": str(s.trips_dir),
    }
    if slowdown is not None:
        doc["slowdown"] = {
            "city": slow_city,
            "from": slowdown.start.isoformat(),
            "zones": sorted(slowdown.zones),
            "factor": slowdown.factor,
        }
    _emit(doc, as_json, "\n".join(f"{k}: {v['trips']} trips" for k, v in summary.items()))


def _import(source: str, files: list[Path], city: str, as_json: bool) -> None:
    from cityml.data.importers import import_files
    from cityml.data.validation import TripSchemaError

    _setup_logging()
    try:
        report = import_files(get_settings(), source, files, city)  # type: ignore[arg-type]
    except (TripSchemaError, KeyError, ValueError) as exc:
        raise _fail(str(exc.args[0]) if exc.args else str(exc)) from exc
    total = report["total"]
    lines = [
        f"{f['file']}: read {f['rows_read']}, kept {f['rows_kept']}, quarantined {f['rows_quarantined']} "
        + " ".join(f"{k}={v}" for k, v in f["quarantined_by_reason"].items())
        for f in report["files"]
    ]
    lines.append(
        f"total: read {total['rows_read']}, kept {total['rows_kept']}, quarantined {total['rows_quarantined']}"
    )
    if not report["has_fare"]:
        lines.append(f"note: no fares in these files: only the ETA model of {city} will be trained")
    _emit(report, as_json, "\n".join(lines))


@import_app.command("nyc-tlc")
def import_nyc_tlc(
    files: Annotated[list[Path], typer.Argument(help="TLC yellow/green trip files, CSV or parquet.")],
    city: Annotated[str, typer.Option(help="Catalog slug to store the trips under.")] = "nyc",
    as_json: JsonOpt = False,
) -> None:
    """Import NYC TLC trip records (official or snake_case columns); bad rows are quarantined."""
    _import("nyc-tlc", files, city, as_json)


@import_app.command("chicago")
def import_chicago(
    files: Annotated[
        list[Path], typer.Argument(help="Chicago Taxi Trips exports (portal, BigQuery, or BigQuery-subset layout).")
    ],
    city: Annotated[str, typer.Option(help="Catalog slug to store the trips under.")] = "chicago",
    as_json: JsonOpt = False,
) -> None:
    """Import Chicago Taxi Trips (portal titles, BigQuery columns, or their subset); bad rows are quarantined."""
    _import("chicago", files, city, as_json)


@features_app.command("apply")
def features_apply(as_json: JsonOpt = False) -> None:
    """Register the definitions in feature_repo/ (feast apply)."""
    from cityml.features.featurestore import apply

    _setup_logging()
    services = apply(get_settings())
    _emit({"feature_services": services}, as_json, f"applied; feature services: {', '.join(services)}")


@features_app.command("materialize")
def features_materialize(
    end: Annotated[str | None, typer.Option(help="Materialize up to this time (ISO 8601; default now).")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Rebuild the offline feature tables from the trips, then materialize incrementally up to END."""
    from cityml.features.feature_tables import build_feature_tables
    from cityml.features.featurestore import materialize

    _setup_logging()
    s = get_settings()
    try:
        until = datetime.fromisoformat(end) if end else datetime.now(UTC)
    except ValueError as exc:
        raise _fail(f"--end: {end!r} is not an ISO 8601 time") from exc
    if until.tzinfo is None:
        until = until.replace(tzinfo=UTC)
    try:
        rows = build_feature_tables(s.trips_dir, s.features_dir)
    except FileNotFoundError as exc:
        raise _fail(str(exc)) from exc
    views = materialize(s, end=until)
    _emit(
        {"tables": rows, "materialized_until": until.isoformat(), "views": views},
        as_json,
        "\n".join([f"tables: {rows}", *(f"{k}: {v}" for k, v in views.items())]),
    )


@features_app.command("parity")
def features_parity(
    city: Annotated[str, typer.Option(help="City slug.")],
    sample: Annotated[int, typer.Option(min=1, max=100_000, help="How many trips to check.")] = 200,
    targets: Annotated[str, typer.Option(help="Whose feature services to check.")] = ",".join(TARGETS),
    as_json: JsonOpt = False,
) -> None:
    """Training vs serving feature vectors for sampled trips; exit 1 on any mismatch."""
    from training.parity import parity_check

    _setup_logging()
    slug = _cities(city)[0]
    reports = [parity_check(get_settings(), slug, sample=sample, target=t) for t in _targets(targets)]
    lines = []
    for r in reports:
        lines.append(f"{r['feature_service']}: {r['samples']} trips, {r['mismatches']} mismatches")
        lines += [f"  {name:<36} {n}" for name, n in r["features"].items() if n]
        lines += [f"  e.g. {e}" for e in r["examples"][:3]]
    _emit(reports if len(reports) > 1 else reports[0], as_json, "\n".join(lines))
    if any(r["mismatches"] for r in reports):
        raise typer.Exit(1)


@app.command()
def train(
    cities: Annotated[str, typer.Option(help="Comma-separated slugs or 'all'.")] = "all",
    targets: Annotated[str, typer.Option(help="Comma-separated: eta,price.")] = ",".join(TARGETS),
    until: Annotated[
        str | None, typer.Option(help="Train on trips picked up before this date or ISO time (UTC) only.")
    ] = None,
    train_days: Annotated[
        int,
        typer.Option(
            min=0, max=MAX_TRAIN_DAYS, help="Only the last N days before --until (or now); 0: all stored trips."
        ),
    ] = 0,
    force_promote: Annotated[
        bool, typer.Option("--force-promote", help="Promote whatever the gate says (recorded on the version).")
    ] = False,
    with_global: Annotated[
        bool | None,
        typer.Option(
            "--global/--no-global",
            help="Retrain the fleet models (always on every catalog city). Default: only when training all cities.",
        ),
    ] = None,
    strict: Annotated[bool, typer.Option(help="Exit 1 if any model failed to train.")] = False,
    workers: Annotated[int | None, typer.Option(min=1, help="Cities fitted at once (default: settings).")] = None,
    tune_budget: Annotated[
        float | None,
        typer.Option(min=0, help="Seconds of Optuna search per city model (default: settings, 0 = no search)."),
    ] = None,
    tune_trials: Annotated[
        int | None, typer.Option(min=1, help="At most this many Optuna trials per city model (default: settings).")
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Train, register and gate each city's models (and the global ones); print the gate report."""
    import getpass

    from training.context import RunContext
    from training.fleet import retrains_global, train_fleet
    from training.report import write_gate_report
    from training.results import TrainResult

    _setup_logging()
    s = get_settings()
    if tune_budget is not None:
        s = s.model_copy(update={"tune_budget_s": tune_budget})
    if tune_trials is not None:
        s = s.model_copy(update={"tune_max_trials": tune_trials})
    label = "cli-force-promote" if force_promote else "cli"
    ctx = RunContext.open(
        s,
        run_label=label,
        until=_moment(until, "--until"),
        train_days=train_days,
        forced_by=f"cli:{getpass.getuser()}" if force_promote else "",
    )
    picked, wanted = _cities(cities), _targets(targets)
    with _progress(as_json) as bar:
        total = len(picked) * len(wanted) + len(wanted) * retrains_global(ctx, picked, wanted, with_global)
        task = bar.add_task("training", total=total)

        def done(result: TrainResult) -> None:
            bar.update(task, advance=1, description=f"{result.model}: {result.status}")

        results = train_fleet(
            ctx, picked, wanted, with_global=with_global, workers=workers or s.train_workers, progress=done
        )
    report = write_gate_report(s, results, label, window=ctx.describe_window())
    docs = [r.to_dict() for r in results]
    _emit({"models": docs, "report": report}, as_json, f"{report['markdown']}\n\ngate report: {report['path']}")
    if strict and any(r.status == "failed" for r in results):
        raise typer.Exit(1)


@models_app.command("list")
def models_list(as_json: JsonOpt = False) -> None:
    """Every registered model with its champion, metrics and tags."""
    from cityml.fleet import list_models

    rows = list_models(get_settings())
    lines = [
        f"{r['name']:<22} champion v{r['champion_version'] or '-':<4} "
        f"mae={r['metrics'].get('mae') or float('nan'):<10.4g} "
        f"baseline={r['metrics'].get('baseline_mae') or float('nan'):.4g}"
        for r in rows
    ]
    _emit(rows, as_json, "\n".join(lines) or "no registered models")


@models_app.command("rollback")
def models_rollback(
    city: Annotated[str, typer.Option(help="City slug (or 'global').")],
    target: Annotated[str, typer.Option(help="eta or price.")],
    version: Annotated[str, typer.Option(help="The version to make champion again.")],
    as_json: JsonOpt = False,
) -> None:
    """Move @champion back to an earlier version (recorded on the versions and the model)."""
    from cityml.naming import GLOBAL, model_name
    from training.registry import rollback

    slug = city if city == GLOBAL else _cities(city)[0]
    try:
        doc = rollback(get_settings(), model_name(_targets(target)[0], slug), version)
    except LookupError as exc:
        raise _fail(str(exc.args[0])) from exc
    _emit(doc, as_json, f"{doc['model']}: champion v{doc['previous_version']} -> v{doc['champion_version']}")


@app.command()
def evaluate(
    city: Annotated[str, typer.Option(help="City slug.")],
    target: Annotated[str, typer.Option(help="eta or price.")],
    start: Annotated[str, typer.Option("--from", help="Window start (date or ISO time, UTC).")],
    end: Annotated[str, typer.Option("--to", help="Window end, inclusive (date or ISO time, UTC).")],
    as_json: JsonOpt = False,
) -> None:
    """Score the champion, the global model and the baseline on trips in a window (point-in-time features)."""
    from training.backtest import evaluate_champion

    _setup_logging()
    try:
        lo, hi = datetime.fromisoformat(start), datetime.fromisoformat(end)
    except ValueError as exc:
        raise _fail(f"--from/--to: {exc}") from exc
    try:
        doc = evaluate_champion(get_settings(), _cities(city)[0], _targets(target)[0], lo, hi)
    except (LookupError, ValueError) as exc:
        raise _fail(str(exc.args[0])) from exc
    _emit(doc, as_json, "\n".join(f"{k:<14} {v}" for k, v in doc.items()))


@app.command()
def serve(
    host: Annotated[str, typer.Option()] = "127.0.0.1",
    port: Annotated[int, typer.Option()] = 8000,
    workers: Annotated[int, typer.Option(min=1)] = 1,
    access_log: Annotated[
        bool, typer.Option(help="One log line per request (the prediction log has them all).")
    ] = False,
) -> None:
    """Run the prediction API under uvicorn (``--workers`` processes, metrics summed across them)."""
    import os
    import shutil
    import tempfile

    import uvicorn

    _setup_logging()
    from cityml.registry import fail_fast

    fail_fast()
    if workers > 1:
        # Workers opening a registry that does not exist yet (a new SQLite file) would race to create
        # its tables: one creates them here first. A registry that is down is the workers' to report.
        from mlflow.exceptions import MlflowException

        from cityml.registry import client

        try:
            client(get_settings()).search_registered_models(max_results=1)
        except (MlflowException, OSError) as exc:
            typer.echo(f"registry not reachable before starting workers: {exc}", err=True)
    from serving.signals import SIGNALS_ENV
    from serving.state import MULTIPROCESS_ENV

    metrics_dir = signals_dir = None
    if workers > 1:
        # Each worker counts in its own process; a scrape of any worker must read them all.
        if "PROMETHEUS_MULTIPROC_DIR" not in os.environ:
            metrics_dir = tempfile.mkdtemp(prefix="cityml-metrics-")
            os.environ["PROMETHEUS_MULTIPROC_DIR"] = metrics_dir
        os.environ[MULTIPROCESS_ENV] = "1"
        # One webhook, registered here, not by each worker (a registry not up yet: polling only).
        from serving.webhook import ENSURED_ENV, ensure_webhook

        try:
            ensure_webhook(get_settings())
        except Exception as exc:  # noqa: BLE001 -- whatever the registry's client raises, serving goes on
            typer.echo(f"webhook not registered: {exc}", err=True)
        os.environ[ENSURED_ENV] = "1"
        # A reload (webhook, /admin/reload) reaches one worker; it tells the others through this folder.
        if SIGNALS_ENV not in os.environ:
            signals_dir = tempfile.mkdtemp(prefix="cityml-reloads-")
            os.environ[SIGNALS_ENV] = signals_dir
    try:
        uvicorn.run(
            "serving.app:create_app",
            factory=True,
            host=host,
            port=port,
            workers=workers,
            log_level="info",
            access_log=access_log,
        )
    finally:
        for folder in (metrics_dir, signals_dir):
            if folder is not None:
                shutil.rmtree(folder, ignore_errors=True)


@app.command("serve-routes")
def serve_routes(
    shards: Annotated[
        int | None, typer.Option(min=1, help="Serving shards; default: CITYML_SERVE_SHARDS, as the servers read it.")
    ] = None,
    server: Annotated[
        str, typer.Option(help="Address of shard {shard}'s servers (its replicas, behind one name).")
    ] = "api-{shard}:8000",
    resolve: Annotated[
        bool, typer.Option(help="Re-resolve the servers' names as they change (nginx 1.27.3+, with a resolver).")
    ] = False,
    out: Annotated[Path | None, typer.Option(help="Write the routes here (atomically); default: print them.")] = None,
) -> None:
    """The proxy's routes of a sharded fleet: nginx upstreams and a ``map`` from ``X-City`` to the city's shard."""
    from cityml.reports import write_text_atomic
    from cityml.shards import nginx_routes

    settings = get_settings()
    shards = shards or settings.serve_shards
    cities = load_catalog(settings.catalog_path).slugs
    try:
        text = nginx_routes(cities, shards, server, resolve=resolve)
    except ValueError as exc:
        raise _fail(f"--{exc}") from exc
    if out is None:
        typer.echo(text, nl=False)
        return
    try:
        write_text_atomic(out, text)  # nginx never reads half a file
    except OSError as exc:
        raise _fail(f"--out {out}: {exc.strerror or exc}") from exc
    typer.echo(f"{out}: {len(cities)} cities over {shards} shards")


@drift_app.callback()
def drift(
    ctx: typer.Context,
    cities: Annotated[str, typer.Option(help="Comma-separated slugs or 'all'.")] = "all",
    targets: Annotated[str, typer.Option()] = ",".join(TARGETS),
    hours: Annotated[float, typer.Option(help="Look back this many hours of logged predictions.")] = 7 * 24.0,
    request: Annotated[
        bool,
        typer.Option(
            "--request", help="Record the retrains this run asks for and start their cooldowns, as monitor_drift does."
        ),
    ] = False,
    as_json: JsonOpt = False,
) -> None:
    """Drift of each city's live features against its champion's reference profile, and realized accuracy."""
    if ctx.invoked_subcommand is not None:
        return
    from monitoring.drift import retrain_conf, run_drift

    _setup_logging()
    window = _hours(hours)
    report = run_drift(get_settings(), _cities(cities), _targets(targets), window=window, request=request)
    report["retrain_conf"] = retrain_conf(report)
    lines = []
    for m in report["models"]:
        worst = _worst_first(m["features"])[:3]
        lines.append(
            f"{m['model']:<22} {m['verdict']:<18} rows={m['rows']:<6} "
            + " ".join(f"{n}={v['verdict']}" for n, v in worst)
        )
    for city, why in sorted(report["reasons"].items()):
        lines.append(f"flagged {city}: {why}")
    waiting = ", ".join(report["cooling_down"]) or "none"
    lines.append(f"retrain: {', '.join(report['retrain']) or 'none'}   cooling down: {waiting}")
    lines.append(f"report: {report['html_path']} (JSON: {report['report_path']})")
    _emit(report, as_json, "\n".join(lines))


_VERDICT_ORDER = {"drift": 0, "watch": 1, "stable": 2}


def _worst_first(features: dict[str, dict[str, Any]]) -> list[tuple[str, dict[str, Any]]]:
    """Drifted features first, then watched, then stable; unjudged ones (calendar, history, no reference) last."""
    return sorted(features.items(), key=lambda kv: (_VERDICT_ORDER.get(kv[1]["verdict"], 3), kv[0]))


@drift_app.command("compare")
def drift_compare(
    reference: Annotated[Path, typer.Argument(help="Reference parquet table.")],
    current: Annotated[Path, typer.Argument(help="Current parquet table.")],
    method: Annotated[
        str, typer.Option(help="auto (as Evidently's preset), psi, ks, wasserstein, js or chi2.")
    ] = "auto",
    threshold: Annotated[
        float | None, typer.Option(help="Drift at or above this score (p-value methods: below); default per method.")
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Ad-hoc drift between two parquet tables: statistics and a verdict per shared column, numeric or not."""
    from monitoring.drift import compare_files
    from monitoring.stats import METHODS

    if method not in METHODS:
        raise _fail(f"--method must be one of {', '.join(METHODS)}, not {method!r}")
    try:
        doc = compare_files(reference, current, get_settings().drift_min_rows, method, threshold)
    except (FileNotFoundError, ValueError) as exc:
        raise _fail(str(exc)) from exc
    lines = [
        f"{n:<28} {v['verdict']:<12} {v['method'] or '-'}={v['score'] if v['score'] is not None else '-'}"
        for n, v in _worst_first(doc["features"])
    ]
    lines.append(f"verdict: {doc['verdict']}")
    _emit(doc, as_json, "\n".join(lines))


@monitor_app.command("labels")
def monitor_labels(
    cities: Annotated[str, typer.Option(help="Comma-separated slugs or 'all'.")] = "all",
    targets: Annotated[str, typer.Option()] = ",".join(TARGETS),
    hours: Annotated[float, typer.Option(min=1, help="Join the predictions of this many past hours.")] = 7 * 24.0,
    as_json: JsonOpt = False,
) -> None:
    """Join completed trips to the predictions served for them: realized MAE per city, target and day, stored
    beside the drift scores, and the cities past the accuracy factor (see `cityml config`)."""
    from monitoring.accuracy import run_labels

    _setup_logging()
    s = get_settings()
    since = datetime.now(UTC) - _hours(hours)
    run = run_labels(s, _cities(cities), _targets(targets), since)
    lines = [
        f"{d.day}  {d.model:<22} v{d.version:<4} trips={d.trips:<6} MAE {d.mae:9.4g}  "
        f"test {d.test_mae or float('nan'):9.4g}  x{d.ratio or float('nan'):.2f}"
        for d in run.days
    ]
    lines.append(
        f"{run.predictions} predictions: {run.by_trip_id} by trip_id, {run.by_time} by time and zones, "
        f"{run.unmatched} unmatched"
    )
    lines.append("flagged: " + ("; ".join(f"{f.city} ({f.why})" for f in run.flagged) or "none"))
    _emit(run.to_json(), as_json, "\n".join(lines))


@app.command()
def demo(
    cities: Annotated[int, typer.Option(min=1, help="How many catalog cities.")] = 4,
    days: Annotated[int, typer.Option(min=7)] = 30,
    port: Annotated[int, typer.Option(help="Port for the demo server (0: a free one).")] = 0,
    drift_scenario: Annotated[
        bool,
        typer.Option(
            "--drift-scenario",
            help="One city's central zones slow by 30% for the last week: drift and realized accuracy flag it, "
            "Airflow retrains it alone, a new champion serves (cityml/cli/scenario.py).",
        ),
    ] = False,
) -> None:
    """The whole loop: trips → Feast → Airflow retrain → MLflow champions → HTTP predictions → drift."""
    from cityml.cli.demo import run_demo

    _setup_logging()
    if drift_scenario and days < 14:
        raise _fail("--drift-scenario needs --days 14 or more: a week to learn from, a week of live traffic")
    raise typer.Exit(run_demo(get_settings(), cities=cities, days=days, port=port, drift_scenario=drift_scenario))


def main() -> None:
    app()
