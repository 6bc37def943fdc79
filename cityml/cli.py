"""The ``cityml`` command line.

Commands that report take ``--json`` and then print one JSON document on stdout; logs and
progress go to stderr. Heavy packages (training, serving, monitoring) are imported inside the
command that needs them, so ``cityml --help`` stays fast and the core does not depend on them.
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Annotated, Any

import typer

from cityml.catalog import CatalogError, load_catalog
from cityml.naming import TARGETS, check_target
from cityml.settings import get_settings

app = typer.Typer(help="cityml: per-city ETA and pricing models, from trips to predictions.", no_args_is_help=True)
data_app = typer.Typer(help="Trip data: generate synthetic cities.", no_args_is_help=True)
features_app = typer.Typer(help="Feast feature store: apply definitions, materialize.", no_args_is_help=True)
models_app = typer.Typer(help="The MLflow registry fleet.", no_args_is_help=True)
drift_app = typer.Typer(help="Drift of live features against the training reference.", invoke_without_command=True)
app.add_typer(data_app, name="data")
app.add_typer(features_app, name="features")
app.add_typer(models_app, name="models")
app.add_typer(drift_app, name="drift")

JsonOpt = Annotated[bool, typer.Option("--json", help="Print one JSON document on stdout.")]
log = logging.getLogger("cityml")


def _setup_logging() -> None:
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def _emit(doc: Any, as_json: bool, human: str) -> None:
    if as_json:
        typer.echo(json.dumps(doc, indent=2, default=str))
    else:
        typer.echo(human)


def _fail(message: str) -> typer.Exit:
    typer.secho(f"error: {message}", fg="red", err=True)
    return typer.Exit(2)


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
    as_json: JsonOpt = False,
) -> None:
    """Write synthetic trips for catalog cities, one parquet file per city and day."""
    from cityml.synth import generate_city
    from cityml.trips import write_trips

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
    last = (_day(end, "--end") or datetime.now(UTC)).date()
    start = last - timedelta(days=days)
    summary = {}
    for city in chosen:
        trips = generate_city(city, start, days, seed)
        files = write_trips(s.trips_dir, trips)
        summary[city.slug] = {"trips": len(trips), "files": len(files)}
        log.info("%s: %d trips in %d files", city.slug, len(trips), len(files))
    doc = {"start": start.isoformat(), "end": last.isoformat(), "cities": summary, "trips_dir": str(s.trips_dir)}
    _emit(doc, as_json, "\n".join(f"{k}: {v['trips']} trips" for k, v in summary.items()))


@features_app.command("apply")
def features_apply(as_json: JsonOpt = False) -> None:
    """Register the definitions in feature_repo/ (feast apply)."""
    from cityml.featurestore import apply

    _setup_logging()
    services = apply(get_settings())
    _emit({"feature_services": services}, as_json, f"applied; feature services: {', '.join(services)}")


@features_app.command("materialize")
def features_materialize(
    end: Annotated[str | None, typer.Option(help="Materialize up to this time (ISO 8601; default now).")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Rebuild the offline feature tables from the trips, then materialize incrementally up to END."""
    from cityml.feature_tables import build_feature_tables
    from cityml.featurestore import materialize

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


@app.command()
def train(
    cities: Annotated[str, typer.Option(help="Comma-separated slugs or 'all'.")] = "all",
    targets: Annotated[str, typer.Option(help="Comma-separated: eta,price.")] = ",".join(TARGETS),
    until: Annotated[str | None, typer.Option(help="Train on trips picked up before this date only.")] = None,
    strict: Annotated[bool, typer.Option(help="Exit 1 if any city failed.")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Train, register and gate each city's models."""
    from training.pipeline import train_many

    _setup_logging()
    results = train_many(get_settings(), _cities(cities), _targets(targets), until=_day(until, "--until"))
    lines = [
        f"{r['model']:<22} {r['status']:<9} v{r.get('version', '-'):<4} "
        f"mae={r.get('metrics', {}).get('mae', float('nan')):<10.4g} "
        f"baseline={r.get('metrics', {}).get('baseline_mae', float('nan')):<10.4g} {r.get('reason', '')}"
        for r in results
    ]
    _emit(results, as_json, "\n".join(lines))
    if strict and any(r["status"] == "failed" for r in results):
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


@app.command()
def serve(
    host: Annotated[str, typer.Option()] = "127.0.0.1",
    port: Annotated[int, typer.Option()] = 8000,
    workers: Annotated[int, typer.Option(min=1)] = 1,
) -> None:
    """Run the prediction API under uvicorn."""
    import uvicorn

    _setup_logging()
    uvicorn.run("serving.app:create_app", factory=True, host=host, port=port, workers=workers, log_level="info")


@drift_app.callback()
def drift(
    ctx: typer.Context,
    cities: Annotated[str, typer.Option(help="Comma-separated slugs or 'all'.")] = "all",
    targets: Annotated[str, typer.Option()] = ",".join(TARGETS),
    hours: Annotated[float, typer.Option(help="Look back this many hours of logged predictions.")] = 7 * 24.0,
    as_json: JsonOpt = False,
) -> None:
    """Drift of each city's live features against its champion's reference profile."""
    if ctx.invoked_subcommand is not None:
        return
    from monitoring.drift import run_drift

    _setup_logging()
    report = run_drift(get_settings(), _cities(cities), _targets(targets), window=timedelta(hours=hours))
    lines = []
    for m in report["models"]:
        worst = sorted(m["features"].items(), key=lambda kv: -kv[1]["psi"])[:3]
        lines.append(
            f"{m['model']:<22} {m['verdict']:<18} rows={m['rows']:<6} "
            + " ".join(f"{n}={v['psi']:.3f}" for n, v in worst)
        )
    lines.append(f"retrain: {', '.join(report['retrain']) or 'none'}   report: {report['report_path']}")
    _emit(report, as_json, "\n".join(lines))


@drift_app.command("compare")
def drift_compare(
    reference: Annotated[Path, typer.Argument(help="Reference parquet table.")],
    current: Annotated[Path, typer.Argument(help="Current parquet table.")],
    as_json: JsonOpt = False,
) -> None:
    """Ad-hoc drift between two parquet tables: PSI and verdict per shared numeric column."""
    from monitoring.drift import compare_files

    try:
        doc = compare_files(reference, current, min_rows=get_settings().drift_min_rows)
    except (FileNotFoundError, ValueError) as exc:
        raise _fail(str(exc)) from exc
    lines = [f"{n:<28} psi={v['psi']:<8.4f} {v['verdict']}" for n, v in doc["features"].items()]
    lines.append(f"verdict: {doc['verdict']}")
    _emit(doc, as_json, "\n".join(lines))


@app.command()
def demo(
    cities: Annotated[int, typer.Option(min=1, help="How many catalog cities.")] = 4,
    days: Annotated[int, typer.Option(min=7)] = 30,
    port: Annotated[int, typer.Option(help="Port for the demo server (0: a free one).")] = 0,
) -> None:
    """The whole loop: trips → Feast → Airflow retrain → MLflow champions → HTTP predictions → drift."""
    from cityml.demo import run_demo

    _setup_logging()
    raise typer.Exit(run_demo(get_settings(), cities=cities, days=days, port=port))


def main() -> None:
    app()
