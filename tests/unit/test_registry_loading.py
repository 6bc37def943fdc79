"""Loading a registered version never unpickles: only a LightGBM Booster in text format is read."""

from pathlib import Path

import lightgbm as lgb
import numpy as np
import pytest

from cityml.registry import UnsafeModelError, client, load_version
from cityml.settings import Settings


def _register(settings: Settings, name: str, model: object) -> object:
    import mlflow
    import mlflow.lightgbm

    from training.registry import experiment_id

    c = client(settings)
    with mlflow.start_run(experiment_id=experiment_id(c, settings)):
        info = mlflow.lightgbm.log_model(model, name="model")
    version = mlflow.register_model(info.model_uri, name)
    return c.get_model_version(name, version.version)


def test_a_booster_loads_and_an_sklearn_pickle_is_refused(tmp_path: Path) -> None:
    settings = Settings(home=tmp_path / "var")
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(200, 3)), rng.normal(size=200)
    booster = lgb.train({"verbosity": -1, "num_threads": 1}, lgb.Dataset(x, y), num_boost_round=5)

    ok = _register(settings, "eta-safe", booster)
    loaded = load_version(client(settings), ok)  # type: ignore[arg-type]
    np.testing.assert_allclose(loaded.booster.predict(x), booster.predict(x))

    pickled = _register(settings, "eta-pickled", lgb.LGBMRegressor(n_estimators=5, verbosity=-1).fit(x, y))
    with pytest.raises(UnsafeModelError, match=r"eta-pickled v1: lightgbm\.sklearn\.LGBMRegressor"):
        load_version(client(settings), pickled)  # type: ignore[arg-type]
