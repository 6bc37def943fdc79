"""Bad command-line values are refused naming the option, before any work: no traceback, nothing written."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from cityml.cli import app
from cityml.settings import Settings, get_settings
from tests.conftest import FIXTURES


@pytest.mark.parametrize(
    ("args", "named"),
    [
        (["drift", "--hours", "nan"], "--hours nan"),
        (["drift", "--hours", "1e300"], "--hours"),
        (["drift", "--hours", "-5"], "--hours -5"),
        (["monitor", "labels", "--hours", "1e300"], "--hours 1e+300"),
        (["train", "--train-days", "99999999"], "--train-days"),
    ],
)
def test_a_value_out_of_range_is_refused_naming_the_option(env_settings: Settings, args: list[str], named: str) -> None:
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2, result.output
    assert named in result.output and "Traceback" not in result.output
    assert not env_settings.trips_dir.exists()


def test_generating_trips_for_a_city_whose_trips_are_imported_is_refused(
    env_settings: Settings, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("CITYML_CATALOG_PATH", str(FIXTURES / "cities_real.yaml"))
    get_settings.cache_clear()
    result = CliRunner().invoke(app, ["data", "generate", "--cities", "nyc", "--days", "1"])
    assert result.exit_code == 2 and "--cities: nyc has no synthetic: block" in result.output, result.output
    assert not env_settings.trips_dir.exists()


def test_routes_written_where_no_folder_can_be_are_refused_naming_out(env_settings: Settings, tmp_path: Path) -> None:
    a_file = tmp_path / "a-file"
    a_file.write_text("")
    result = CliRunner().invoke(app, ["serve-routes", "--out", str(a_file / "routes.conf")])
    assert result.exit_code == 2 and f"--out {a_file / 'routes.conf'}" in result.output, result.output
    assert "Traceback" not in result.output
