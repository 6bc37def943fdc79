"""The "services" environment on one machine, without Docker: an MLflow server and Airflow's components.

``cityml services up`` (or :func:`start`) uses the PostgreSQL and Redis already running on 127.0.0.1 and starts,
each as its own background process group with its log under ``<home>/services/logs/``:

- ``mlflow server``: registry and runs in a Postgres database, artifacts served by the server itself
  (``--serve-artifacts``), so every cityml process only needs ``CITYML_MLFLOW_TRACKING_URI=http://...``;
- Airflow as its production components, not ``airflow standalone``: ``api-server``, ``scheduler``,
  ``dag-processor``, ``triggerer`` and N Celery workers (CeleryExecutor, Redis as broker, results in the Airflow
  metadata database on Postgres), all configured by ``AIRFLOW__*`` variables built here.

The cityml settings of the launching process (``CITYML_*`` variables, ``.env``) reach the task processes through
the components' environment; ``CITYML_HOME``, ``CITYML_CATALOG_PATH`` and the tracking URI are set from the
settings and the started MLflow server. ``<home>/services/state.json`` records what runs, so ``down`` and
``status`` work from any shell; ``<home>/services/env`` holds the exports a shell needs to use the stack.

This module is imported by every Airflow process of the stack (:func:`hostname` is their
``hostname_callable``), so it imports only the standard library at the top.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from cityml.settings import Settings

#: The pool the retrain DAG's per-city fits run in: its slots are how many fits run at once across the workers.
TRAINING_POOL = "cityml_training"
#: Where the Airflow admin's password can be given; without it one is generated once and kept in the services folder.
ADMIN_PASSWORD_ENV = "CITYML_AIRFLOW_ADMIN_PASSWORD"
#: Set on each Celery worker; :func:`hostname` reports it, so a task instance shows which worker ran it.
WORKER_NAME_ENV = "CITYML_WORKER_NAME"

#: The user task processes act as on Airflow's REST API (role ``user``: may edit DAG runs, e.g. their notes).
RUNNER_USER = "cityml-runner"
SIMPLE_AUTH_MANAGER = "airflow.api_fastapi.auth.managers.simple.simple_auth_manager.SimpleAuthManager"
_DB_NAME = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")
_POLL_S = 0.5


def hostname() -> str:
    """Airflow's ``[core] hostname_callable`` for the stack: the worker's name if set, else the FQDN."""
    return os.environ.get(WORKER_NAME_ENV) or socket.getfqdn()


class ServiceError(RuntimeError):
    """A service could not be started, or died; the message names it and ends with its log."""


@dataclass(frozen=True)
class ServicesConfig:
    """What to start and where. Ports, database names and the broker's Redis database are per stack."""

    folder: Path
    airflow_port: int = 8080
    mlflow_port: int = 5000
    airflow_db: str = "cityml_airflow"
    mlflow_db: str = "cityml_mlflow"
    postgres: str = "postgresql+psycopg2://postgres@127.0.0.1:5432"
    redis: str = "127.0.0.1:6379"
    redis_db: int = 1
    workers: int = 2
    worker_concurrency: int = 1
    pool_slots: int = 2
    parallelism: int = 4
    mlflow_workers: int = 2
    schedules: bool = True
    admin_user: str = "admin"
    polls: int = 360

    def __post_init__(self) -> None:
        for name in (self.airflow_db, self.mlflow_db):
            if not _DB_NAME.match(name):
                raise ValueError(f"database name {name!r}: lowercase letters, digits and _ only")
        if self.airflow_db == self.mlflow_db:
            raise ValueError("Airflow and MLflow need databases of their own")
        if self.workers < 1 or self.worker_concurrency < 1 or self.pool_slots < 1:
            raise ValueError("workers, worker_concurrency and pool_slots must be at least 1")

    @property
    def logs(self) -> Path:
        return self.folder / "logs"

    @property
    def airflow_home(self) -> Path:
        return self.folder / "airflow"

    @property
    def artifacts(self) -> Path:
        return self.folder / "mlartifacts"

    @property
    def state_file(self) -> Path:
        return self.folder / "state.json"

    @property
    def passwords_file(self) -> Path:
        return self.folder / "airflow-passwords.json"

    @property
    def airflow_url(self) -> str:
        return f"http://127.0.0.1:{self.airflow_port}"

    @property
    def mlflow_url(self) -> str:
        return f"http://127.0.0.1:{self.mlflow_port}"

    def db_url(self, name: str) -> str:
        return f"{self.postgres.rstrip('/')}/{name}"

    @property
    def broker_url(self) -> str:
        return f"redis://{self.redis}/{self.redis_db}"

    @property
    def broker_prefix(self) -> str:
        """Every broker key starts with it: stacks sharing a Redis database do not see each other's tasks."""
        return f"{self.airflow_db}:"

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "folder": str(self.folder)}

    @classmethod
    def from_json(cls, doc: Mapping[str, Any]) -> ServicesConfig:
        return cls(**{**doc, "folder": Path(doc["folder"])})


@dataclass
class Process:
    """One started service: its process (and process group) id, command and log."""

    name: str
    pid: int
    cmd: list[str]
    log: Path
    since: str | None = None  # the kernel's start time of the pid: a recycled pid is not ours
    popen: subprocess.Popen[bytes] | None = field(default=None, repr=False, compare=False)

    def alive(self) -> bool:
        if self.popen is not None:
            return self.popen.poll() is None
        return _pid_alive(self.pid) and (self.since is None or _start_time(self.pid) == self.since)

    def exit_code(self) -> int | None:
        return self.popen.poll() if self.popen is not None else None


@dataclass
class Stack:
    """A started stack: its URLs, the Airflow admin, the environment of its processes, the processes."""

    config: ServicesConfig
    env: dict[str, str] = field(repr=False)
    admin_password: str = field(repr=False)
    processes: dict[str, Process] = field(default_factory=dict)
    started: str = ""

    @property
    def airflow_url(self) -> str:
        return self.config.airflow_url

    @property
    def mlflow_url(self) -> str:
        return self.config.mlflow_url

    @property
    def admin_user(self) -> str:
        return self.config.admin_user

    def client_env(self) -> dict[str, str]:
        """The ``CITYML_*`` variables the stack's task processes get: what a cityml command outside it needs."""
        return {k: v for k, v in self.env.items() if k.startswith("CITYML_") and k != WORKER_NAME_ENV}

    def token(self) -> str:
        """A JWT for Airflow's REST API (``Authorization: Bearer ...``), from ``/auth/token`` as the admin."""
        import httpx

        r = httpx.post(
            f"{self.airflow_url}/auth/token",
            json={"username": self.admin_user, "password": self.admin_password},
            timeout=30,
        )
        if r.status_code not in (200, 201):
            raise ServiceError(f"Airflow refused the admin's token request: {r.status_code} {r.text[:300]}")
        return str(r.json()["access_token"])

    def status(self) -> dict[str, Any]:
        """What runs (pid, alive) and what the health endpoints say, as JSON-safe values."""
        return {
            "airflow_url": self.airflow_url,
            "mlflow_url": self.mlflow_url,
            "started": self.started,
            "processes": {
                p.name: {"pid": p.pid, "alive": p.alive(), "log": str(p.log)} for p in self.processes.values()
            },
            "health": {"mlflow": _mlflow_health(self.mlflow_url), "airflow": _airflow_health(self.airflow_url)},
        }

    def stop(self, polls: int = 60) -> list[str]:
        """Stop every process this stack started, with their process groups and any descendant that left them.

        SIGTERM first; what is still there after ``polls`` checks gets SIGKILL. Returns the names stopped.
        """
        procs = [p for p in reversed(self.processes.values()) if p.alive()]  # workers first, MLflow last
        if procs:
            _terminate(procs, polls)
        self.config.state_file.unlink(missing_ok=True)
        return [p.name for p in procs]

    def write_state(self) -> None:
        doc = {
            "config": self.config.to_json(),
            "started": self.started,
            "processes": [
                {"name": p.name, "pid": p.pid, "since": p.since, "cmd": p.cmd, "log": str(p.log)}
                for p in self.processes.values()
            ],
        }
        _write_private(self.config.state_file, json.dumps(doc, indent=2))


def load(folder: Path) -> Stack | None:
    """The stack recorded in ``folder/state.json`` (started by any process), or None."""
    state = folder / "state.json"
    if not state.exists():
        return None
    doc = json.loads(state.read_text())
    config = ServicesConfig.from_json(doc["config"])
    procs = {
        p["name"]: Process(
            name=p["name"], pid=int(p["pid"]), cmd=list(p["cmd"]), log=Path(p["log"]), since=p.get("since")
        )
        for p in doc["processes"]
    }
    password = _admin_password(config, create=False)
    return Stack(config=config, env={}, admin_password=password, processes=procs, started=doc.get("started", ""))


def start(settings: Settings, config: ServicesConfig, extra_env: Mapping[str, str] | None = None) -> Stack:
    """Create the databases, start MLflow and Airflow, and return once every component is healthy.

    ``extra_env`` is added to this process's environment for every component (e.g. ``CITYML_*`` settings of
    the task processes). On any failure what was started is stopped, and :class:`ServiceError` names the
    component with the end of its log.
    """
    existing = load(config.folder)
    if existing is not None and any(p.alive() for p in existing.processes.values()):
        raise ServiceError(f"a stack already runs from {config.folder} (cityml services down stops it)")
    config.logs.mkdir(parents=True, exist_ok=True)
    config.airflow_home.mkdir(parents=True, exist_ok=True)
    config.artifacts.mkdir(parents=True, exist_ok=True)
    for port, what in ((config.airflow_port, "Airflow"), (config.mlflow_port, "MLflow")):
        if _listening("127.0.0.1", port):
            raise ServiceError(f"port {port} for {what} is already taken on 127.0.0.1")
    _require_postgres_and_redis(config)
    create_databases(config)
    password = _admin_password(config, create=True)
    _runner_password(config)
    env = stack_env(settings, config, extra_env)
    stack = Stack(config=config, env=env, admin_password=password, started=datetime.now(UTC).isoformat())
    try:
        stack.processes["mlflow"] = _spawn("mlflow", _mlflow_cmd(config), env, config)
        stack.write_state()
        _run_once("airflow-db-migrate", [_bin("airflow"), "db", "migrate"], env, config)
        _run_once(
            "airflow-pool",
            [_bin("airflow"), "pools", "set", TRAINING_POOL, str(config.pool_slots), "cityml per-city fits"],
            env,
            config,
        )
        for name, cmd, extra in _airflow_cmds(config):
            stack.processes[name] = _spawn(name, cmd, {**env, **extra}, config)
        stack.write_state()
        _wait_healthy(stack)
        _ensure_experiment(settings, config)
    except BaseException:
        stack.stop()
        raise
    _write_private(config.folder / "env", "".join(f"export {k}={_shell_quote(v)}\n" for k, v in _user_env(stack)))
    return stack


def stack_env(settings: Settings, config: ServicesConfig, extra_env: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment of every component: this process's, ``extra_env``, cityml's locations, Airflow's config."""
    keys = _secrets(config)
    airflow_conn = config.db_url(config.airflow_db)
    execution_api = f"{config.airflow_url}/execution/"
    env = {**os.environ, **(extra_env or {})}
    env.update(
        {
            "CITYML_HOME": str(settings.home),
            "CITYML_CATALOG_PATH": str(settings.catalog_path),
            "CITYML_DAGS_FOLDER": str(settings.dags_folder),
            "CITYML_FEAST_REPO_PATH": str(settings.feast_repo_path),
            "CITYML_MLFLOW_TRACKING_URI": config.mlflow_url,
            "CITYML_MLFLOW_EXPERIMENT": settings.mlflow_experiment,
            "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
            # The server's GenAI job runner (7 huey consumers): cityml does not use it, 2 cores do not afford it.
            "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": env.get("MLFLOW_SERVER_ENABLE_JOB_EXECUTION", "false"),
            "AIRFLOW_HOME": str(config.airflow_home),
            "AIRFLOW__CORE__DAGS_FOLDER": str(settings.dags_folder),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__CORE__UNIT_TEST_MODE": "False",
            "AIRFLOW__CORE__EXECUTOR": "CeleryExecutor",
            "AIRFLOW__CORE__PARALLELISM": str(config.parallelism),
            "AIRFLOW__CORE__HOSTNAME_CALLABLE": f"{__name__}.hostname",
            "AIRFLOW__CORE__FERNET_KEY": keys["fernet_key"],
            "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": execution_api,
            "AIRFLOW__CORE__AUTH_MANAGER": SIMPLE_AUTH_MANAGER,
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": f"{config.admin_user}:admin,{RUNNER_USER}:user",
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS": "False",
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(config.passwords_file),
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": airflow_conn,
            "AIRFLOW__API__HOST": "127.0.0.1",
            "AIRFLOW__API__PORT": str(config.airflow_port),
            "AIRFLOW__API__BASE_URL": config.airflow_url,
            "AIRFLOW__API__WORKERS": "1",
            "AIRFLOW__API__SECRET_KEY": keys["secret_key"],
            "AIRFLOW__API_AUTH__JWT_SECRET": keys["jwt_secret"],
            "AIRFLOW__SCHEDULER__USE_JOB_SCHEDULE": str(config.schedules),
            "AIRFLOW__DAG_PROCESSOR__PARSING_PROCESSES": "1",
            "AIRFLOW__CELERY__BROKER_URL": config.broker_url,
            "AIRFLOW__CELERY__RESULT_BACKEND": f"db+{airflow_conn}",
            "AIRFLOW__CELERY__WORKER_CONCURRENCY": str(config.worker_concurrency),
            "AIRFLOW__CELERY_BROKER_TRANSPORT_OPTIONS__GLOBAL_KEYPREFIX": config.broker_prefix,
            # Longer than any fit: a task still running past it would be handed to a second worker.
            "AIRFLOW__CELERY_BROKER_TRANSPORT_OPTIONS__VISIBILITY_TIMEOUT": "21600",
        }
    )
    # What a retrain's summary writes the run's note through (cityml.dagkit.set_run_note): a user that may edit
    # runs, not the admin.
    env["AIRFLOW_CONN_CITYML_AIRFLOW_API"] = json.dumps(
        {"conn_type": "http", "host": config.airflow_url, "login": RUNNER_USER, "password": _runner_password(config)}
    )
    env.pop(WORKER_NAME_ENV, None)
    return env


def _ensure_experiment(settings: Settings, config: ServicesConfig) -> None:
    """Create cityml's MLflow experiment on the new server, before the first run's parallel fits would race to."""
    from mlflow import MlflowClient

    on_server = settings.model_copy(update={"mlflow_tracking_uri": config.mlflow_url})
    client = MlflowClient(tracking_uri=config.mlflow_url, registry_uri=config.mlflow_url)
    if client.get_experiment_by_name(on_server.mlflow_experiment) is None:
        client.create_experiment(on_server.mlflow_experiment, artifact_location=on_server.artifact_root)


def create_databases(config: ServicesConfig) -> list[str]:
    """Create the Airflow and MLflow databases if absent; returns those created."""
    created = []
    with _admin_connection(config) as cur:
        for name in (config.airflow_db, config.mlflow_db):
            cur.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,))
            if cur.fetchone() is None:
                cur.execute(f'CREATE DATABASE "{name}"')
                created.append(name)
    return created


def purge(config: ServicesConfig) -> None:
    """Drop the stack's databases and its broker keys (the stack must be stopped)."""
    import redis

    with _admin_connection(config) as cur:
        for name in (config.airflow_db, config.mlflow_db):
            cur.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    host, _, port = config.redis.partition(":")
    r = redis.Redis(host=host, port=int(port or 6379), db=config.redis_db)
    try:
        keys = list(r.scan_iter(match=f"{config.broker_prefix}*", count=1000))
        if keys:
            r.delete(*keys)
    finally:
        r.close()


# Commands ------------------------------------------------------------------------------------------------------


def _bin(name: str) -> str:
    """A console script of this environment (the same interpreter, the same packages)."""
    return str(Path(sys.executable).with_name(name))


def _mlflow_cmd(config: ServicesConfig) -> list[str]:
    return [
        _bin("mlflow"),
        "server",
        "--host",
        "127.0.0.1",
        "--port",
        str(config.mlflow_port),
        "--workers",
        str(config.mlflow_workers),
        "--backend-store-uri",
        config.db_url(config.mlflow_db),
        "--artifacts-destination",
        str(config.artifacts),
        "--serve-artifacts",
    ]


def _airflow_cmds(config: ServicesConfig) -> Iterable[tuple[str, list[str], dict[str, str]]]:
    """Name, command and extra environment of each Airflow component.

    Logs stay on this machine's disk, where the api-server reads them: no component serves its logs over HTTP,
    so N workers need no N log-server ports.
    """
    airflow = _bin("airflow")
    yield "api-server", [airflow, "api-server", "--host", "127.0.0.1", "--port", str(config.airflow_port)], {}
    yield "scheduler", [airflow, "scheduler", "--skip-serve-logs"], {}
    yield "dag-processor", [airflow, "dag-processor"], {}
    yield "triggerer", [airflow, "triggerer", "--skip-serve-logs"], {}
    for i in range(1, config.workers + 1):
        name = f"worker-{i}"
        cmd = [
            airflow,
            "celery",
            "worker",
            "--celery-hostname",
            f"{name}@%h",
            "--concurrency",
            str(config.worker_concurrency),
            "--skip-serve-logs",
        ]
        yield name, cmd, {WORKER_NAME_ENV: name}


def _spawn(name: str, cmd: list[str], env: Mapping[str, str], config: ServicesConfig) -> Process:
    log = config.logs / f"{name}.log"
    with log.open("ab") as out:
        out.write(f"\n--- {datetime.now(UTC).isoformat()} {' '.join(cmd)}\n".encode())
        out.flush()
        popen = subprocess.Popen(
            cmd, env=dict(env), stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    return Process(name=name, pid=popen.pid, cmd=cmd, log=log, since=_start_time(popen.pid), popen=popen)


def _run_once(name: str, cmd: list[str], env: Mapping[str, str], config: ServicesConfig) -> None:
    """A one-off command (migration, pool), waited for in polls; its whole process group is stopped on failure."""
    proc = _spawn(name, cmd, env, config)
    try:
        for _ in range(config.polls * 2):
            code = proc.exit_code()
            if code == 0:
                return
            if code is not None:
                raise ServiceError(f"{name} failed (exit {code}):\n{_tail(proc.log)}")
            time.sleep(_POLL_S)
        raise ServiceError(f"{name} did not finish in {config.polls * 2} polls:\n{_tail(proc.log)}")
    finally:
        if proc.alive():
            _terminate([proc], polls=20)


# Health --------------------------------------------------------------------------------------------------------


def _wait_healthy(stack: Stack) -> None:
    """Poll every component until all are healthy; a dead one fails at once, naming it, with its log."""
    config = stack.config
    checks: dict[str, Callable[[], bool]] = {
        "mlflow": lambda: _mlflow_health(config.mlflow_url) == "healthy",
        "airflow": lambda: all(v == "healthy" for v in _airflow_health(config.airflow_url).values()),
        "workers": lambda: _workers_answering(config) >= config.workers,
    }
    pending = dict(checks)
    for _ in range(config.polls):
        for proc in stack.processes.values():
            if not proc.alive():
                raise ServiceError(
                    f"{proc.name} exited (code {proc.exit_code()}); end of {proc.log}:\n{_tail(proc.log)}"
                )
        for name, check in list(pending.items()):
            if check():
                del pending[name]
        if not pending:
            return
        time.sleep(_POLL_S)
    detail = {"airflow": _airflow_health(config.airflow_url), "mlflow": _mlflow_health(config.mlflow_url)}
    raise ServiceError(f"not healthy after {config.polls} polls: {sorted(pending)}; health: {detail}")


def _mlflow_health(url: str) -> str:
    import httpx

    try:
        return "healthy" if httpx.get(f"{url}/health", timeout=5).status_code == 200 else "unhealthy"
    except httpx.HTTPError:
        return "unreachable"


def _airflow_health(url: str) -> dict[str, str]:
    """Status of Airflow's metadatabase, scheduler, triggerer and dag-processor as the api-server reports it."""
    import httpx

    try:
        r = httpx.get(f"{url}/api/v2/monitor/health", timeout=5)
        doc = r.json() if r.status_code == 200 else {}
    except (httpx.HTTPError, ValueError):
        doc = {}
    parts = ("metadatabase", "scheduler", "triggerer", "dag_processor")
    return {k: str((doc.get(k) or {}).get("status") or "unreachable") for k in parts}


def _workers_answering(config: ServicesConfig) -> int:
    """Celery workers of this stack that answer a ping on its broker."""
    from celery import Celery

    app = Celery(
        broker=config.broker_url,
        broker_transport_options={"global_keyprefix": config.broker_prefix},
        set_as_current=False,
    )
    try:
        replies = app.control.ping(timeout=1.0) or []
    except Exception:  # noqa: BLE001 - a broker hiccup is one failed poll, not a failed start
        return 0
    finally:
        app.close()
    names = {name for reply in replies for name in reply}
    return sum(any(n.startswith(f"worker-{i}@") for n in names) for i in range(1, config.workers + 1))


# Processes -----------------------------------------------------------------------------------------------------


def _terminate(procs: list[Process], polls: int) -> None:
    """SIGTERM the processes' groups and every descendant's group; SIGKILL what is left after ``polls`` checks.

    Airflow runs each task in a process group of its own, so a worker's group alone would leave a running task.
    """
    targets = {p.pid for p in procs} | {d for p in procs for d in _descendants(p.pid)}
    own = os.getpgrp()
    for sig in (signal.SIGTERM, signal.SIGKILL):
        groups = {g for g in map(_pgid, targets) if g is not None and g != own}
        for pgid in groups:
            _signal(os.killpg, pgid, sig)
        for pid in targets:
            _signal(os.kill, pid, sig)
        for _ in range(polls):
            for p in procs:
                p.exit_code()  # reap our own children
            targets = {pid for pid in targets if _pid_alive(pid)}
            if not targets:
                return
            time.sleep(0.25)
    for p in procs:
        if p.popen is not None:
            p.popen.wait(timeout=10)


def _signal(send: Callable[[int, int], None], target: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        send(target, sig)


def _proc_stat(pid: int) -> list[str] | None:
    """Fields of ``/proc/<pid>/stat`` after the command name (state, ppid, pgrp, ...); None without it."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return raw[raw.rfind(")") + 2 :].split()


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    stat = _proc_stat(pid)
    return stat is None or stat[0] != "Z"


def _pgid(pid: int) -> int | None:
    try:
        return os.getpgid(pid)
    except ProcessLookupError:
        return None


def _descendants(pid: int) -> set[int]:
    """Every process below ``pid`` (Linux ``/proc``; elsewhere none: the process groups are all that is stopped)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").glob("[0-9]*"):
        stat = _proc_stat(int(entry.name))
        if stat is not None:
            children.setdefault(int(stat[1]), []).append(int(entry.name))
    out: set[int] = set()
    todo = [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in out:
                out.add(child)
                todo.append(child)
    return out


def _start_time(pid: int) -> str | None:
    """When ``pid`` started, in clock ticks since boot (``/proc``), to tell our process from a recycled pid.

    Not the command line: Airflow and Celery retitle their processes.
    """
    stat = _proc_stat(pid)
    return stat[19] if stat is not None and len(stat) > 19 else None


def _listening(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1):
            return True
    except OSError:
        return False


def _tail(path: Path, lines: int = 40) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


# Databases, secrets --------------------------------------------------------------------------------------------


def _require_postgres_and_redis(config: ServicesConfig) -> None:
    from sqlalchemy.engine import make_url

    pg = make_url(config.db_url("postgres"))
    host, _, port = config.redis.partition(":")
    for what, h, p in (("PostgreSQL", pg.host or "127.0.0.1", pg.port or 5432), ("Redis", host, int(port or 6379))):
        if not _listening(h, p):
            raise ServiceError(
                f"{what} is not reachable on {h}:{p}; start it first (the stack uses it, it does not run it)"
            )


@contextlib.contextmanager
def _admin_connection(config: ServicesConfig) -> Iterator[Any]:
    """An autocommit cursor on the server's ``postgres`` database (CREATE/DROP DATABASE cannot run in a transaction)."""
    import psycopg2
    from sqlalchemy.engine import make_url

    url = make_url(config.db_url("postgres"))
    kwargs = {"host": url.host, "port": url.port, "user": url.username or "postgres", "password": url.password}
    conn = psycopg2.connect(dbname="postgres", **{k: v for k, v in kwargs.items() if v is not None})
    try:
        conn.autocommit = True
        yield conn.cursor()
    finally:
        conn.close()


def _write_private(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)


def _secrets(config: ServicesConfig) -> dict[str, str]:
    """Keys every Airflow component must share (JWT, API session, Fernet); made once, kept across restarts."""
    path = config.folder / "secrets.json"
    if path.exists():
        return dict(json.loads(path.read_text()))
    from cryptography.fernet import Fernet

    keys = {
        "jwt_secret": secrets.token_urlsafe(48),
        "secret_key": secrets.token_urlsafe(48),
        "fernet_key": Fernet.generate_key().decode(),
    }
    _write_private(path, json.dumps(keys))
    return keys


def _admin_password(config: ServicesConfig, create: bool) -> str:
    """The admin's password: ``$CITYML_AIRFLOW_ADMIN_PASSWORD``, else the one generated once in the services folder.

    Written in the simple auth manager's own passwords file (``{user: password}``), which it reads.
    """
    path = config.passwords_file
    users: dict[str, str] = json.loads(path.read_text()) if path.exists() else {}
    given = os.environ.get(ADMIN_PASSWORD_ENV)
    password = given or users.get(config.admin_user) or ""
    if create and (not password or users.get(config.admin_user) != password):
        password = password or secrets.token_urlsafe(16)
        _write_private(path, json.dumps({**users, config.admin_user: password}))
    return password


def _runner_password(config: ServicesConfig) -> str:
    """The password of :data:`RUNNER_USER`, generated once beside the admin's in the simple auth manager's file."""
    path = config.passwords_file
    users: dict[str, str] = json.loads(path.read_text()) if path.exists() else {}
    if not users.get(RUNNER_USER):
        users[RUNNER_USER] = secrets.token_urlsafe(16)
        _write_private(path, json.dumps(users))
    return users[RUNNER_USER]


def _user_env(stack: Stack) -> list[tuple[str, str]]:
    """What a shell exports to use the stack from cityml commands, the Airflow CLI and the MLflow CLI."""
    keep = ("CITYML_", "AIRFLOW_HOME", "AIRFLOW__")
    pairs = [(k, v) for k, v in sorted(stack.env.items()) if k.startswith(keep) and k != WORKER_NAME_ENV]
    return [*pairs, ("MLFLOW_TRACKING_URI", stack.mlflow_url)]


def _shell_quote(value: str) -> str:
    import shlex

    return shlex.quote(value)
