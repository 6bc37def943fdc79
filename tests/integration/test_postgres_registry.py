"""MLflow's registry on Postgres (the services environment): train, register, load the champion."""

from __future__ import annotations

import os
from collections.abc import Iterator
from datetime import date, timedelta

import pytest
import sqlalchemy as sa

from cityml.catalog import load_catalog
from cityml.data.synth import generate_city
from cityml.data.trips import write_trips
from cityml.features.feature_tables import build_feature_tables
from cityml.features.featurestore import apply
from cityml.fleet import list_models
from cityml.registry import client, load_champion
from cityml.settings import Settings
from tests.conftest import require_service

pytestmark = pytest.mark.integration


@pytest.fixture
def postgres_uri() -> Iterator[str]:
    require_service("PostgreSQL", "127.0.0.1", 5432)
    name = f"cityml_test_{os.getpid()}"
    admin = sa.create_engine("postgresql+psycopg2://postgres@127.0.0.1:5432/postgres", isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}"'))
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    try:
        yield f"postgresql+psycopg2://postgres@127.0.0.1:5432/{name}"
    finally:
        with admin.connect() as conn:
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def test_train_register_and_serve_from_a_postgres_registry(small_settings: Settings, postgres_uri: str) -> None:
    from training.city import train_city
    from training.context import RunContext

    s = small_settings.model_copy(update={"mlflow_tracking_uri": postgres_uri})
    city = load_catalog(s.catalog_path).get("alpha")
    write_trips(s.trips_dir, generate_city(city, date.today() - timedelta(days=10), 10, seed=5))
    build_feature_tables(s.trips_dir, s.features_dir)
    apply(s)
    (result,) = train_city(RunContext.open(s), "alpha", ["eta"])
    assert result.status == "promoted" and result.version == "1"
    loaded = load_champion(client(s), "eta-alpha")
    assert loaded is not None and loaded.version == "1"
    assert loaded.tags["feature_service"] == "eta_v2"
    (row,) = list_models(s)
    assert row["name"] == "eta-alpha" and row["metrics"]["mae"] < row["metrics"]["baseline_mae"]
