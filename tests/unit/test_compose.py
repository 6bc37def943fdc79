"""docker-compose.yml describes a stack that would start, checked without a Docker engine.

``docker-compose config`` validates and interpolates the file: skipped on a laptop without the binary, installed
with apt-get when ``CI=true`` (as tests/e2e does for Chromium). The YAML itself is checked for what ``config``
cannot see: healthchecks and restart policies, secrets without defaults, MLflow kept off the host, one image,
Airflow option names against the installed Airflow, Airflow and cityml commands against their parsers.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

from cityml.settings import PROJECT_ROOT
from tests.conftest import debian_package

COMPOSE_FILE = PROJECT_ROOT / "docker-compose.yml"
DOCKERFILE = PROJECT_ROOT / "Dockerfile"
DOCKER_DIR = PROJECT_ROOT / "docker"

#: Every variable the stack refuses to start without (``${VAR:?message}``); none has a default.
REQUIRED = {
    "GIT_SHA": "0123456789ab",
    "POSTGRES_PASSWORD": "pgpass0123",
    "AIRFLOW_ADMIN_PASSWORD": "admin-pass",
    "AIRFLOW_RUNNER_PASSWORD": "runner-pass",
    "AIRFLOW_FERNET_KEY": "fernet-key",
    "AIRFLOW_JWT_SECRET": "jwt-secret",
    "AIRFLOW_SECRET_KEY": "api-secret",
    "MLFLOW_WEBHOOK_SECRET_ENCRYPTION_KEY": "webhook-fernet",
    "CITYML_API_KEYS": "client-key",
    "CITYML_ADMIN_KEY": "admin-key",
    "CITYML_WEBHOOK_SECRET": "hmac-secret",
}
SECRET_NAME = re.compile(r"PASSWORD|SECRET|KEY|TOKEN")


# The file as written ----------------------------------------------------------------------------------------


@cache
def raw() -> dict[str, Any]:
    """docker-compose.yml parsed as YAML (anchors and ``<<`` merges resolved, ``${...}`` left as written)."""
    doc = yaml.safe_load(COMPOSE_FILE.read_text())
    assert isinstance(doc, dict)
    return doc


def services() -> dict[str, dict[str, Any]]:
    return dict(raw()["services"])


def interpolate(text: str) -> str:
    """``text`` as docker-compose passes it on: ``$$`` to ``$``; defaults, and the test's values of required ones."""

    def value(m: re.Match[str]) -> str:
        if m.group(0) == "$$":
            return "$"
        name, op, arg = m.group(1), m.group(2) or "", m.group(3) or ""
        if op.endswith("?"):
            return REQUIRED.get(name, "x")
        return arg if op.endswith("-") else ""  # the file's defaults, whatever this shell has set

    return re.sub(r"\$\$|\$\{(\w+)(?:(:?[-?])([^}]*))?\}", value, text)


def command_text(service: dict[str, Any]) -> str:
    """The service's command, interpolated; with the lines of a docker/ script it runs (``"$@"``: its arguments)."""
    command = service.get("command", "")
    if isinstance(command, list) and command[:1] in (["sh"], ["bash"]) and re.fullmatch(r"-\w*c", command[1]):
        command = command[2]  # the script of `bash -euc SCRIPT`, line by line
    text = interpolate(command if isinstance(command, str) else shlex.join(str(c) for c in command))
    for script, args in re.findall(r"/app/(docker/\S+\.sh)(.*)", text):
        text += "\n" + (PROJECT_ROOT / script).read_text().replace('"$@"', args.strip())
    return text


def invocations(text: str, program: str) -> Iterator[list[str]]:
    """Each run of ``program`` in a command or a script's lines: its arguments (``exec`` and ``env ...`` skipped)."""
    for line in text.splitlines():
        if line.lstrip().startswith("#"):
            continue
        segment: list[str] = []
        for token in [*shlex.split(line), ";"]:
            if token not in ("&&", "||", ";", "|"):
                segment.append(token)
                continue
            while segment and segment[0] in ("exec", "env"):
                if segment.pop(0) == "env":
                    while segment and (segment[0].startswith("-") or "=" in segment[0]):
                        segment = segment[2:] if segment[0] in ("-u", "--unset") else segment[1:]
            if segment and segment[0] == program:
                yield segment[1:]
            segment = []


def env_of(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment") or {}
    assert isinstance(env, dict), "environment as a mapping, so anchors can merge"
    return {str(k): str(v) for k, v in env.items()}


def dockerignore() -> set[str]:
    lines = (PROJECT_ROOT / ".dockerignore").read_text().splitlines()
    return {line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")}


def cityml_image_services() -> dict[str, dict[str, Any]]:
    return {name: s for name, s in services().items() if str(s.get("image", "")).startswith("cityml:")}


# docker-compose config -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def compose() -> list[str]:
    """``docker-compose`` (Debian's package, installed on CI), else the ``docker compose`` plugin."""
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    docker = shutil.which("docker")
    if docker and subprocess.run([docker, "compose", "version"], capture_output=True, check=False).returncode == 0:
        return [docker, "compose"]
    debian_package("docker-compose")  # without the engine it recommends
    return ["docker-compose"]


def run_config(compose: list[str], env: dict[str, str], tmp_path: Path) -> subprocess.CompletedProcess[str]:
    """``config`` with exactly ``env``: an empty env file, so a developer's .env cannot fill a missing secret."""
    env_file = tmp_path / "empty.env"
    env_file.write_text("")
    cmd = [*compose, "--env-file", str(env_file), "-f", str(COMPOSE_FILE), "--project-directory", str(PROJECT_ROOT)]
    base = {k: os.environ[k] for k in ("PATH", "HOME") if k in os.environ}
    return subprocess.run(
        [*cmd, "config"], env={**base, **env}, capture_output=True, text=True, check=False, timeout=120
    )


@pytest.fixture(scope="module")
def rendered(compose: list[str], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    proc = run_config(compose, REQUIRED, tmp_path_factory.mktemp("compose"))
    assert proc.returncode == 0, proc.stderr
    doc = yaml.safe_load(proc.stdout)
    assert isinstance(doc, dict)
    return doc


@pytest.mark.parametrize("missing", sorted(REQUIRED))
def test_config_refuses_to_start_without_each_secret(compose: list[str], tmp_path: Path, missing: str) -> None:
    env = {k: v for k, v in REQUIRED.items() if k != missing}
    proc = run_config(compose, env, tmp_path)
    assert proc.returncode != 0, f"docker-compose config accepted a stack without {missing}"
    assert missing in proc.stderr, proc.stderr


def test_config_renders_with_every_secret_set(rendered: dict[str, Any]) -> None:
    assert set(rendered["services"]) == set(services())
    api = rendered["services"]["api"]
    assert api["environment"]["CITYML_ADMIN_KEY"] == REQUIRED["CITYML_ADMIN_KEY"]
    assert rendered["services"]["mlflow"]["build"]["args"]["GIT_SHA"] == REQUIRED["GIT_SHA"]


def test_every_service_has_a_healthcheck_and_a_restart_policy(rendered: dict[str, Any]) -> None:
    all_services = rendered["services"]
    completed = {
        dep
        for s in all_services.values()
        for dep, cond in (s.get("depends_on") or {}).items()
        if isinstance(cond, dict) and cond.get("condition") == "service_completed_successfully"
    }
    for name, s in all_services.items():
        assert s.get("restart"), f"{name}: no restart policy"
        check = s.get("healthcheck")
        assert check, f"{name}: no healthcheck"
        disabled = check.get("disable") is True or check.get("test") == ["NONE"]
        if disabled:
            # Only a one-shot others wait for to exit 0, and which is not restarted in a loop.
            assert name in completed, f"{name}: healthcheck disabled on a long-running service"
            assert s["restart"] == "no", f"{name}: a one-shot restarted {s['restart']}"
        else:
            assert check.get("test"), f"{name}: healthcheck without a test"
            assert s["restart"] != "no", f"{name}: a long-running service that is never restarted"


def test_mlflow_is_not_published_beyond_the_loopback(rendered: dict[str, Any]) -> None:
    for port in rendered["services"]["mlflow"].get("ports") or []:
        host_ip = port.get("host_ip") if isinstance(port, dict) else str(port).rsplit(":", 2)[0]
        assert host_ip == "127.0.0.1", f"MLflow (no auth) published on {port}"


def test_every_airflow_service_runs_the_one_built_image(rendered: dict[str, Any]) -> None:
    all_services = rendered["services"]
    built = [n for n, s in all_services.items() if "build" in s]
    assert len(built) == 1, f"one service builds the image, not {built}"
    image = all_services[built[0]]["image"]
    airflow = [n for n, s in all_services.items() if "AIRFLOW_HOME" in (s.get("environment") or {})]
    assert {"airflow-api-server", "airflow-scheduler", "airflow-dag-processor", "airflow-triggerer"} <= set(airflow)
    images = {n: all_services[n]["image"] for n in [*airflow, "mlflow", "api"]}
    assert set(images.values()) == {image}, images


# The YAML as written ---------------------------------------------------------------------------------------


def test_no_placeholder_secrets_anywhere() -> None:
    files = [COMPOSE_FILE, DOCKERFILE, *sorted(p for p in DOCKER_DIR.rglob("*") if p.is_file())]
    for path in files:
        assert "change-me" not in path.read_text().lower(), f"{path.name} has a change-me default"


def test_secrets_are_required_never_defaulted() -> None:
    text = COMPOSE_FILE.read_text()
    refs = re.findall(r"(?<!\$)\$\{([A-Z0-9_]+)(:?[-?])?", text)
    assert refs
    for name, op in refs:
        if SECRET_NAME.search(name) or name in REQUIRED:
            assert op == ":?", f"${{{name}}} must be required (${{{name}:?message}}), not {op or 'bare'}"
    assert {name for name, op in refs if op == ":?"} == set(REQUIRED)


def test_scalable_services_have_no_fixed_names_or_host_ports() -> None:
    for name in ("airflow-worker", "api"):
        s = services()[name]
        assert "container_name" not in s, name
        assert not s.get("ports"), f"{name} replicas cannot share a host port"
    assert int(services()["api"]["deploy"]["replicas"]) == 2


def test_the_proxy_fronts_the_api_replicas() -> None:
    (serve,) = list(invocations(command_text(services()["api"]), "cityml"))
    port = serve[serve.index("--port") + 1]
    proxy = services()["api-proxy"]
    mount = next(v for v in proxy["volumes"] if "nginx.conf" in v)
    conf = (PROJECT_ROOT / mount.split(":")[0]).read_text()
    assert re.search(rf"server\s+api:{port}\s+resolve;", conf), "nginx must re-resolve every `api` replica"
    assert re.search(r"listen\s+8000;", conf) and any(str(p).endswith(":8000") for p in proxy["ports"])


def test_bind_mounts_and_scripts_exist_and_reach_the_image() -> None:
    ignored = dockerignore()
    for name, s in services().items():
        for volume in s.get("volumes") or []:
            source = str(volume).split(":")[0]
            if source.startswith("./"):
                assert (PROJECT_ROOT / source).is_file(), f"{name}: {source} missing"
        for path in re.findall(r"/app/(\S+\.sh)", command_text(s)):
            assert (PROJECT_ROOT / path).is_file(), f"{name}: {path} missing"
            assert not any(path.startswith(i.rstrip("/")) for i in ignored), f"{path} is not in the build context"


def test_urls_name_services_and_databases_that_exist() -> None:
    names = set(services())
    init_sql = (PROJECT_ROOT / "docker" / "postgres-init.sql").read_text()
    databases = set(re.findall(r"CREATE DATABASE (\w+)", init_sql)) | {env_of(services()["postgres"])["POSTGRES_DB"]}
    seen = set()
    for name, s in services().items():
        for key, value in env_of(s).items():
            if "://" not in value or key.endswith("BASE_URL"):
                continue
            if key.startswith("AIRFLOW_CONN_"):  # an Airflow connection as JSON: its host is the URL
                value = json.loads(interpolate(value))["host"]
            url = urlsplit(interpolate(value))
            assert url.hostname in names, f"{name}: {key} points at {url.hostname}, not a service"
            if url.scheme.startswith(("postgresql", "db+postgresql")):
                db = url.path.lstrip("/")
                assert db in databases, f"{name}: {key} uses database {db}, which nothing creates"
                seen.add(db)
    assert seen == databases
    # Feast's online store is Redis database 0 (CITYML_REDIS_URL names none): the broker keeps out of it.
    broker = urlsplit(env_of(services()["airflow-init"])["AIRFLOW__CELERY__BROKER_URL"])
    assert broker.path.strip("/") not in ("", "0"), "the Celery broker shares Feast's Redis database"


def test_the_image_is_built_before_anything_runs_on_it() -> None:
    """Compose creates services in dependency order: the one that builds the image must come first."""
    on_image = cityml_image_services()
    (builder,) = [n for n, s in on_image.items() if "build" in s]
    init = on_image["airflow-init"]
    assert init["depends_on"][builder]["condition"] == "service_healthy"
    for name, s in on_image.items():
        if name not in (builder, "airflow-init"):
            cond = (s.get("depends_on") or {}).get("airflow-init", {})
            assert cond.get("condition") == "service_completed_successfully", name


@cache
def airflow_options() -> set[tuple[str, str]]:
    """(section, option) pairs of the installed Airflow: its config.yml and every installed provider's config."""
    spec = importlib.util.find_spec("airflow")
    assert spec is not None and spec.origin is not None
    root = Path(spec.origin).parent
    sections = yaml.safe_load((root / "config_templates" / "config.yml").read_text())
    options = {(s, o) for s, body in sections.items() for o in (body.get("options") or {})}
    for info in sorted((root / "providers").glob("*/get_provider_info.py")):
        module_spec = importlib.util.spec_from_file_location(f"_provider_info_{info.parent.name}", info)
        assert module_spec is not None and module_spec.loader is not None
        module = importlib.util.module_from_spec(module_spec)
        module_spec.loader.exec_module(module)
        for s, body in (module.get_provider_info().get("config") or {}).items():
            options |= {(s, o) for o in (body.get("options") or {})}
    return options


def test_every_airflow_env_key_is_an_airflow_option() -> None:
    options = airflow_options()
    assert ("celery", "broker_url") in options, "the Celery provider is not installed"
    keys = {k for s in services().values() for k in env_of(s) if k.startswith("AIRFLOW__")}
    assert len(keys) > 10
    for key in sorted(keys):
        section, _, option = key.removeprefix("AIRFLOW__").lower().partition("__")
        base = re.sub(r"_(cmd|secret)$", "", option)
        assert (section, option) in options or (section, base) in options, f"{key}: no [{section}] {option}"


def test_airflow_dotted_paths_import() -> None:
    """The auth manager and the hostname callable named in the environment exist."""
    env = env_of(services()["airflow-scheduler"])
    for key in ("AIRFLOW__CORE__AUTH_MANAGER", "AIRFLOW__CORE__HOSTNAME_CALLABLE"):
        module, _, attr = env[key].rpartition(".")
        assert callable(getattr(importlib.import_module(module), attr)), key


def test_commands_name_real_cityml_subcommands_and_options() -> None:
    import typer

    from cityml.cli import app

    root = typer.main.get_command(app)  # typer's own click: groups are known by their `commands`
    calls = [(n, args) for n, s in services().items() for args in invocations(command_text(s), "cityml")]
    assert {n for n, _ in calls} >= {"airflow-init", "api"}
    for name, args in calls:
        cmd: Any = root
        words = list(args)
        path = ["cityml"]
        while hasattr(cmd, "commands") and words and not words[0].startswith("-"):
            sub = cmd.commands.get(words[0])
            assert sub is not None, f"{name}: `{' '.join([*path, words[0]])}` is no cityml command"
            path.append(words.pop(0))
            cmd = sub
        if hasattr(cmd, "commands"):
            assert cmd.invoke_without_command, f"{name}: `{' '.join(path)}` needs a subcommand"
        opts = {o for p in cmd.params for o in p.opts}
        for word in words:
            if word.startswith("--"):
                assert word.split("=")[0] in opts, f"{name}: `{' '.join(path)}` has no {word}"


AIRFLOW_PARSE = """
import json, sys
from airflow.cli.cli_parser import get_parser
parser = get_parser()
bad = []
for argv in json.loads(sys.argv[1]):
    try:
        parser.parse_args(argv)
    except SystemExit:
        bad.append(argv)
print(json.dumps(bad))
"""


def test_airflow_commands_parse(tmp_path: Path) -> None:
    """Every ``airflow ...`` of the commands and healthchecks, parsed by Airflow's own CLI parser."""
    calls = []
    for s in services().values():
        texts = [command_text(s)]
        test = (s.get("healthcheck") or {}).get("test")
        if isinstance(test, list):
            texts.append(shlex.join(str(t) for t in test[1:]) if test[0] == "CMD" else " ".join(test[1:]))
        calls += [args for text in texts for args in invocations(text, "airflow")]
    assert len(calls) >= 8
    # Celery's commands exist only under the CeleryExecutor the file configures.
    env = {**os.environ, "AIRFLOW_HOME": str(tmp_path), "AIRFLOW__CORE__EXECUTOR": "CeleryExecutor"}
    out = subprocess.run(
        [sys.executable, "-c", AIRFLOW_PARSE, json.dumps(calls)],
        env=env,
        capture_output=True,
        text=True,
        check=True,
        timeout=300,
    )
    assert json.loads(out.stdout.strip().splitlines()[-1]) == [], out.stderr[-3000:]


def test_the_worker_healthcheck_app_imports() -> None:
    test = services()["airflow-worker"]["healthcheck"]["test"]
    (app_path,) = re.findall(r"--app\s+(\S+)", " ".join(test))
    module, _, attr = app_path.rpartition(".")
    assert getattr(importlib.import_module(module), attr) is not None


def test_the_image_installs_from_the_lock_and_runs_as_a_user() -> None:
    text = DOCKERFILE.read_text()
    assert re.search(r"^FROM python:3\.11-slim\b", text, re.M)
    assert "uv sync --frozen --no-dev" in text
    assert re.search(r"^ARG GIT_SHA\s*$", text, re.M) and re.search(r"CITYML_GIT_SHA=\$\{?GIT_SHA\}?", text)
    users = re.findall(r"^USER\s+(\S+)", text, re.M)
    assert users and users[-1].split(":")[0] not in ("root", "0")
    ignored = dockerignore()
    assert {".venv", "var/", ".env", ".git"} <= ignored and ({"bench/", "bench/out/"} & ignored)


def test_the_image_sha_reaches_the_lineage_tag(monkeypatch: pytest.MonkeyPatch) -> None:
    from training.registry import git_sha

    git_sha.cache_clear()
    monkeypatch.setenv("CITYML_GIT_SHA", "feedc0ffee12")
    try:
        assert git_sha() == "feedc0ffee12"
    finally:
        git_sha.cache_clear()
