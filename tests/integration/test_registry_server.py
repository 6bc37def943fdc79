"""Loading a version from an MLflow server's proxied artifacts (``mlflow-artifacts:/``): what a team's stack uses."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from cityml.registry import client, load_version, self_test
from cityml.settings import Settings
from tests.conftest import SMALL_CATALOG
from tests.integration.test_hot_swap import _register
from tests.unit.test_serving_routes import _booster

pytestmark = pytest.mark.integration


def test_a_load_downloads_mlmodel_the_booster_and_its_self_test_alone(
    tmp_path: Path, mlflow_server: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The model folder also holds environment files and input examples a load never reads: fetching the folder
    cost a listing and 7 downloads a version, through a server that 2,000 loads share at startup."""
    from mlflow.store.artifact.http_artifact_repo import HttpArtifactRepository

    settings = Settings(home=tmp_path / "var", catalog_path=SMALL_CATALOG, mlflow_tracking_uri=mlflow_server)
    booster = _booster(0)
    version = _register(settings, booster)
    c = client(settings)
    mv = c.get_model_version("eta-alpha", version)
    fetched: list[str] = []
    real = HttpArtifactRepository._download_file

    def spy(self: Any, remote_file_path: str, local_path: str) -> None:
        fetched.append(remote_file_path)
        real(self, remote_file_path, local_path)

    monkeypatch.setattr(HttpArtifactRepository, "_download_file", spy)
    loaded = load_version(c, mv)
    assert self_test(loaded) is None
    assert sorted(Path(f).name for f in fetched) == ["MLmodel", "model.lgb", "selftest.json"]
    x = np.random.default_rng(0).uniform(0, 10, (5, booster.num_feature()))
    np.testing.assert_array_equal(loaded.booster.predict(x), booster.predict(x))
