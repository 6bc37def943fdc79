"""Shared fixtures. One embedded Airflow home per session, set before anything imports airflow."""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from cityml.settings import PROJECT_ROOT, Settings, get_settings

FIXTURES = Path(__file__).parent / "fixtures"
SMALL_CATALOG = FIXTURES / "cities_small.yaml"
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
CHROMIUM = "/usr/bin/chromium"


def pytest_configure(config: pytest.Config) -> None:
    home = Path(tempfile.mkdtemp(prefix="cityml-airflow-"))
    os.environ["AIRFLOW_HOME"] = str(home)
    os.environ["AIRFLOW__CORE__DAGS_FOLDER"] = str(PROJECT_ROOT / "dags")
    os.environ["AIRFLOW__CORE__LOAD_EXAMPLES"] = "False"
    os.environ["MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"] = "false"


def service_up(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=2):
            return True
    except OSError:
        return False


def require_service(name: str, host: str, port: int) -> None:
    """Skip on a laptop without the service; fail in CI, where it must be there."""
    if service_up(host, port):
        return
    if IN_CI:
        pytest.fail(f"{name} is not reachable on {host}:{port}, and CI=true requires it")
    pytest.skip(f"{name} not running on {host}:{port} (set CI=true to make this a failure)")


@contextlib.contextmanager
def postgres_schema() -> Iterator[str]:
    """A SQLAlchemy URL on a fresh schema of the local Postgres ``test`` database, dropped afterwards."""
    import uuid

    import sqlalchemy as sa

    require_service("postgres", "127.0.0.1", 5432)
    schema = f"t{uuid.uuid4().hex[:8]}"
    admin = sa.create_engine("postgresql+psycopg2://postgres@127.0.0.1:5432/test")
    with admin.begin() as conn:
        conn.execute(sa.text(f"CREATE SCHEMA {schema}"))
    try:
        yield f"postgresql+psycopg2://postgres@127.0.0.1:5432/test?options=-csearch_path%3D{schema}"
    finally:
        with admin.begin() as conn:
            conn.execute(sa.text(f"DROP SCHEMA {schema} CASCADE"))
        admin.dispose()


REAL_TLC_SAMPLE = PROJECT_ROOT.parent / "shared" / "data" / "nyc_tlc_sample_2019-03.csv"


def real_tlc_sample() -> Path:
    """The real TLC sample from ``shared/data`` beside the repo: a failure in CI, a skip on a laptop."""
    if REAL_TLC_SAMPLE.exists():
        return REAL_TLC_SAMPLE
    if IN_CI:
        pytest.fail(f"the real TLC sample {REAL_TLC_SAMPLE} is missing, and CI=true requires it")
    pytest.skip(f"{REAL_TLC_SAMPLE} not found (shared/data beside the repo; CI=true makes this a failure)")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_until_up(url: str, proc: subprocess.Popen[bytes], log: Path, ok: tuple[int, ...] = (200,)) -> None:
    """Poll ``url`` until it answers one of ``ok`` (a budget in polls); fail with the log if the process dies."""
    import time

    import httpx

    for _ in range(240):
        assert proc.poll() is None, log.read_text()[-3000:]
        try:
            if httpx.get(url, timeout=2).status_code in ok:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.5)
    pytest.fail(f"{url} never came up: {log.read_text()[-2000:]}")


def bin_path(name: str) -> str:
    return str(Path(sys.executable).with_name(name))


@pytest.fixture
def small_settings(tmp_path: Path) -> Settings:
    return Settings(home=tmp_path / "var", catalog_path=SMALL_CATALOG, reload_interval_s=0)


@pytest.fixture(scope="session")
def airflow_db() -> Path:
    """A migrated SQLite metadata database for dag.test()."""
    subprocess.run([bin_path("airflow"), "db", "migrate"], check=True, capture_output=True, env=os.environ.copy())
    return Path(os.environ["AIRFLOW_HOME"])


@pytest.fixture
def env_settings(monkeypatch: pytest.MonkeyPatch, small_settings: Settings) -> Iterator[Settings]:
    """Make ``get_settings()`` (used by DAG tasks and the CLI) return the small test world."""
    monkeypatch.setenv("CITYML_HOME", str(small_settings.home))
    monkeypatch.setenv("CITYML_CATALOG_PATH", str(small_settings.catalog_path))
    monkeypatch.setenv("CITYML_RELOAD_INTERVAL_S", "0")
    get_settings.cache_clear()
    yield get_settings()
    get_settings.cache_clear()


@pytest.fixture(scope="session")
def chromium() -> str:
    """Debian's Chromium for Playwright's ``executable_path`` (Playwright cannot download browsers here); installed
    with apt when missing on CI, a skip elsewhere."""
    if not Path(CHROMIUM).exists():
        debian_package("chromium")
    return CHROMIUM


def debian_package(package: str) -> None:
    """Install a Debian package a test needs (without what it only recommends): a skip on a laptop, an install
    when ``CI=true``, and there a failure when it cannot be installed, never a skip."""
    if not IN_CI:
        pytest.skip(f"{package} is not installed (apt-get install {package}; CI=true installs it)")
    if shutil.which("apt-get") is None:
        pytest.fail(f"{package} is missing and CI=true requires it, but there is no apt-get to install it")
    install = ["apt-get", "install", "-y", "-q", "--no-install-recommends", package]
    if subprocess.run(install, capture_output=True, check=False).returncode != 0:
        subprocess.run(["apt-get", "update", "-q"], capture_output=True, check=False)
        done = subprocess.run(install, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            pytest.fail(f"apt-get install {package} failed (CI=true requires it): {done.stderr[-1000:]}")
