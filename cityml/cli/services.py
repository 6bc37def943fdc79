"""``cityml services up|down|status``: the services environment on this machine (see :mod:`cityml.services`)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from cityml.settings import get_settings

services_app = typer.Typer(
    help="MLflow server + Airflow (api-server, scheduler, dag-processor, triggerer, Celery workers) on 127.0.0.1, "
    "over the local PostgreSQL and Redis.",
    no_args_is_help=True,
)

FolderOpt = Annotated[
    Path | None, typer.Option(help="State, logs and Airflow home of the stack (default: <CITYML_HOME>/services).")
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print one JSON document on stdout.")]


def _folder(folder: Path | None) -> Path:
    return (folder or get_settings().home / "services").expanduser().resolve()


@services_app.command("up")
def up(
    folder: FolderOpt = None,
    airflow_port: Annotated[int, typer.Option(help="Airflow api-server (UI, REST API, execution API).")] = 8080,
    mlflow_port: Annotated[int, typer.Option(help="MLflow server (UI, REST API, artifacts).")] = 5000,
    workers: Annotated[int, typer.Option(min=1, help="Celery workers (worker-1, worker-2, ...).")] = 2,
    worker_concurrency: Annotated[int, typer.Option(min=1, help="Tasks each worker runs at once.")] = 1,
    pool_slots: Annotated[int, typer.Option(min=1, help="Slots of the cityml_training pool: fits at once.")] = 2,
    airflow_db: Annotated[str, typer.Option(help="Postgres database of Airflow's metadata.")] = "cityml_airflow",
    mlflow_db: Annotated[str, typer.Option(help="Postgres database of MLflow's runs and registry.")] = "cityml_mlflow",
    postgres: Annotated[
        str, typer.Option(help="SQLAlchemy URL of the Postgres server, without a database.")
    ] = "postgresql+psycopg2://postgres@127.0.0.1:5432",
    redis: Annotated[str, typer.Option(help="host:port of the Redis the Celery broker uses.")] = "127.0.0.1:6379",
    redis_db: Annotated[int, typer.Option(min=0, help="Redis database of the Celery broker.")] = 1,
    schedules: Annotated[
        bool, typer.Option("--schedules/--no-schedules", help="Run the DAGs' schedules, or only triggered runs.")
    ] = True,
    as_json: JsonOpt = False,
) -> None:
    """Start the stack and wait until every component is healthy; prints the URLs and the admin login."""
    from cityml.services import ServiceError, ServicesConfig, start

    settings = get_settings()
    try:
        config = ServicesConfig(
            folder=_folder(folder),
            airflow_port=airflow_port,
            mlflow_port=mlflow_port,
            workers=workers,
            worker_concurrency=worker_concurrency,
            pool_slots=pool_slots,
            airflow_db=airflow_db,
            mlflow_db=mlflow_db,
            postgres=postgres,
            redis=redis,
            redis_db=redis_db,
            schedules=schedules,
        )
        typer.echo(f"starting MLflow and Airflow from {config.folder} (logs in {config.logs}) ...", err=True)
        stack = start(settings, config)
    except (ServiceError, ValueError) as exc:
        typer.secho(f"error: {exc}", fg="red", err=True)
        raise typer.Exit(1) from exc
    processes = {p.name: p.pid for p in stack.processes.values()}
    doc = {
        "airflow_url": stack.airflow_url,
        "mlflow_url": stack.mlflow_url,
        "admin_user": stack.admin_user,
        "passwords_file": str(config.passwords_file),
        "env_file": str(config.folder / "env"),
        "processes": processes,
    }
    if as_json:
        typer.echo(json.dumps(doc, indent=2))
        return
    typer.echo(
        f"Airflow  {stack.airflow_url}  (user {stack.admin_user}, password in {config.passwords_file})\n"
        f"MLflow   {stack.mlflow_url}\n"
        f"running: {', '.join(f'{n} ({pid})' for n, pid in processes.items())}\n"
        f"cityml commands that should use it: source {doc['env_file']}\n"
        f"stop: cityml services down"
    )


@services_app.command("down")
def down(
    folder: FolderOpt = None,
    purge: Annotated[bool, typer.Option("--purge", help="Also drop its databases and broker keys.")] = False,
) -> None:
    """Stop every process the stack started (with their process groups)."""
    from cityml.services import load
    from cityml.services import purge as drop

    stack = load(_folder(folder))
    if stack is None:
        typer.echo(f"nothing runs from {_folder(folder)}")
        return
    stopped = stack.stop()
    typer.echo(f"stopped: {', '.join(stopped) or 'nothing was running'}")
    if purge:
        drop(stack.config)
        typer.echo(f"dropped databases {stack.config.airflow_db}, {stack.config.mlflow_db} and the broker keys")


@services_app.command("status")
def status(folder: FolderOpt = None, as_json: JsonOpt = False) -> None:
    """What the stack runs and what its health endpoints say; exit 1 if anything is down."""
    from cityml.services import load

    stack = load(_folder(folder))
    if stack is None:
        typer.echo(json.dumps({"running": False}) if as_json else f"nothing runs from {_folder(folder)}")
        raise typer.Exit(1)
    doc = stack.status()
    up = all(p["alive"] for p in doc["processes"].values()) and doc["health"]["mlflow"] == "healthy"
    up = up and all(v == "healthy" for v in doc["health"]["airflow"].values())
    if as_json:
        typer.echo(json.dumps({"running": up, **doc}, indent=2))
    else:
        typer.echo(f"Airflow {doc['airflow_url']}  {doc['health']['airflow']}")
        typer.echo(f"MLflow  {doc['mlflow_url']}  {doc['health']['mlflow']}")
        for name, p in doc["processes"].items():
            typer.echo(f"  {name:<14} pid {p['pid']:<8} {'running' if p['alive'] else 'DEAD'}  {p['log']}")
    if not up:
        raise typer.Exit(1)
