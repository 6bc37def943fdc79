from pathlib import Path

import pytest

from cityml.catalog import CatalogError, load_catalog
from cityml.settings import Settings
from tests.conftest import SMALL_CATALOG


def test_shipped_catalog_is_valid() -> None:
    catalog = load_catalog(Settings().catalog_path)
    assert len([c for c in catalog.cities if c.synthetic is not None]) >= 4  # the demo's cities
    assert {"nyc", "chicago"} <= set(catalog.slugs)  # the importers' cities


def test_bad_entries_are_named(tmp_path: Path) -> None:
    bad = tmp_path / "cities.yaml"
    bad.write_text("cities:\n  - {slug: Bad_Slug, timezone: Mars/Olympus, currency: EUR, bbox: [1, 2, 3, 4]}\n")
    with pytest.raises(CatalogError) as err:
        load_catalog(bad)
    assert "cities.0.slug" in str(err.value) and "cities.0.timezone" in str(err.value)
    assert str(bad) in str(err.value)


def test_a_slug_ending_in_a_newline_is_refused(tmp_path: Path) -> None:
    """It would name folders (city=nyc\\n) and models: the whole slug must match, not all but a final newline."""
    bad = tmp_path / "cities.yaml"
    bad.write_text('cities:\n  - {slug: "nyc\\n", timezone: UTC, currency: EUR, bbox: [1, 2, 3, 4]}\n')
    with pytest.raises(CatalogError, match=r"cities\.0\.slug"):
        load_catalog(bad)


@pytest.mark.parametrize(
    ("code", "message"), [("XX", "unknown holiday country 'XX'"), ("US-ZZ", "US has no subdivision 'ZZ'")]
)
def test_an_unknown_holiday_calendar_is_named(tmp_path: Path, code: str, message: str) -> None:
    path = tmp_path / "cities.yaml"
    path.write_text(f"cities:\n  - {{slug: a, timezone: UTC, holidays: {code}, currency: EUR, bbox: [1, 2, 3, 4]}}\n")
    with pytest.raises(CatalogError) as err:
        load_catalog(path)
    assert "cities.0.holidays" in str(err.value) and message in str(err.value)


def test_duplicate_city_is_refused(tmp_path: Path) -> None:
    entry = "  - {slug: a, timezone: UTC, currency: EUR, bbox: [1, 2, 3, 4]}\n"
    path = tmp_path / "cities.yaml"
    path.write_text("cities:\n" + entry + entry)
    with pytest.raises(CatalogError, match="listed twice"):
        load_catalog(path)


def test_missing_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(CatalogError, match="does not exist"):
        load_catalog(tmp_path / "nope.yaml")
    with pytest.raises(CatalogError, match="cannot be read"):
        load_catalog(tmp_path)  # a folder
    (tmp_path / "latin1.yaml").write_bytes(b"cities:\n  - {slug: caf\xe9}\n")
    with pytest.raises(CatalogError, match="cannot be read"):
        load_catalog(tmp_path / "latin1.yaml")


CITY = "slug: a, timezone: UTC, currency: EUR, bbox: [1, 2, 3, 4]"
TARIFF = "tariff: {base: 1, per_km: 1, per_min: 0, surge: 0}"
SYNTH = "grid: 3, trips_per_day: 10, base_speed_kmh: 20, rush_slowdown: 0.1, weekend_speedup: 1.1, noise: 0.1"


@pytest.mark.parametrize(
    ("entry", "field"),
    [
        (f"{{{CITY}, fare: {{base: 1, per_km: .inf, per_min: 0}}}}", "cities.0.fare.per_km"),
        (f"{{{CITY}, zones: ['1', '2', '1']}}", "zone ids listed twice: 1"),
        (f"{{{CITY}, zones: ['1', ' ']}}", "cities.0.zones"),
        (f"{{{CITY}, zones: ['a:b', 'c']}}", "cities.0.zones"),  # zone pairs are keyed city:a>b
        (f"{{{CITY}, zones: ['a>b', 'c']}}", "cities.0.zones"),
        (f"{{{CITY}, zones: ['a', 'b'], zone_areas: {{a: 'x>y'}}}}", "cities.0.zone_areas"),
        (f"{{{CITY}, synthetic: {{{SYNTH}, rush_hours: [30, -5], {TARIFF}}}}}", "cities.0.synthetic.rush_hours"),
    ],
)
def test_values_no_city_can_have_are_refused_naming_the_field(tmp_path: Path, entry: str, field: str) -> None:
    path = tmp_path / "cities.yaml"
    path.write_text(f"cities:\n  - {entry}\n")
    with pytest.raises(CatalogError) as err:
        load_catalog(path)
    assert field in str(err.value) and str(path) in str(err.value)


def test_zone_of_grid_and_outside() -> None:
    city = load_catalog(SMALL_CATALOG).get("alpha")
    assert city.zone_of(38.691, -9.229) == "z00"
    assert city.zone_of(38.799, -9.091) == "z15"
    assert city.zone_of(0.0, 0.0) is None


def test_select_names_unknown_city() -> None:
    with pytest.raises(KeyError, match="gotham"):
        load_catalog(SMALL_CATALOG).select("alpha,gotham")


def test_an_unknown_city_error_names_it_without_printing_a_large_catalog() -> None:
    from cityml.catalog import Catalog
    from cityml.data.synth import random_catalog

    catalog = Catalog.model_validate(random_catalog([f"c{i:04d}" for i in range(1000)], trips_per_day=10))
    assert catalog.unknown(["c0001", "c0999"]) is None
    message = catalog.unknown(["gotham", "c0001", "metropolis"])
    assert message is not None and message.startswith("unknown cities 'gotham', 'metropolis' (catalog has 'c0000',")
    assert message.endswith("and 980 more)") and len(message) < 400
    with pytest.raises(KeyError, match="unknown city 'gotham'"):
        catalog.get("gotham")
