"""Reading the MLflow registry: the client for the configured tracking URI, champions, profiles.

Writes (logging, registering, promoting) live in ``training.registry``; serving and monitoring
only read, through these functions.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cityml.modeling import BASE_TAG, CITY_FEATURE, SCALE_FILE, SCALE_TAG, LabelScale
from cityml.modeling import predict as predict_with
from cityml.naming import CHAMPION
from cityml.profile import PROFILE_FILE
from cityml.settings import Settings

if TYPE_CHECKING:
    import lightgbm as lgb
    import numpy as np
    import pandas as pd
    from mlflow import MlflowClient
    from mlflow.entities.model_registry import ModelVersion

log = logging.getLogger(__name__)


def client(settings: Settings) -> MlflowClient:
    """An MLflow client on the settings' tracking and registry URI (also made the process default)."""
    import mlflow
    from mlflow import MlflowClient

    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    if settings.tracking_uri.startswith("sqlite:///"):
        settings.home.mkdir(parents=True, exist_ok=True)
    mlflow.set_tracking_uri(settings.tracking_uri)
    mlflow.set_registry_uri(settings.tracking_uri)
    return MlflowClient(tracking_uri=settings.tracking_uri, registry_uri=settings.tracking_uri)


def champion(c: MlflowClient, name: str) -> ModelVersion | None:
    """The version holding ``@champion``, or None when the model or the alias does not exist."""
    from mlflow.exceptions import MlflowException

    try:
        return c.get_model_version_by_alias(name, CHAMPION)
    except MlflowException:
        return None


@dataclass
class LoadedModel:
    name: str
    version: str
    booster: lgb.Booster
    tags: dict[str, str]
    run_id: str | None
    scale: LabelScale = field(default_factory=LabelScale)
    base: LoadedModel | None = None  # a pooled city model's base (the fleet model version it learned on)

    @property
    def features(self) -> list[str]:
        return list(self.booster.feature_name())

    def predict(self, frame: pd.DataFrame) -> np.ndarray:
        """Predictions in the label's units (``cityml.modeling.predict``), the base's added in for a pooled model."""
        base = None
        if self.base is not None:
            rows = frame if CITY_FEATURE in frame.columns else frame.assign(**{CITY_FEATURE: self.tags.get("city")})
            base = self.base.predict(rows)
        return predict_with(self.booster, self.scale, frame, base)

    def serves(self, city: str) -> bool:
        """Whether this model can answer for ``city`` (a fleet model only for cities it learned)."""
        return self.scale.covers(city) and (self.base is None or self.base.serves(city))


#: Loaded base models by (name, version): every pooled city model of a run shares one fleet version.
Bases = dict[tuple[str, str], "LoadedModel"]


def load_champion(c: MlflowClient, name: str, bases: Bases | None = None) -> LoadedModel | None:
    """Load ``models:/<name>@champion`` as a LightGBM booster (native text format, no pickle)."""
    mv = champion(c, name)
    if mv is None:
        return None
    return load_version(c, mv, bases)


def load_version(c: MlflowClient, mv: ModelVersion, bases: Bases | None = None) -> LoadedModel:
    """Load one registered version as a LightGBM booster (by number: an alias may move meanwhile).

    A pooled version also loads the base version its tag names (from ``bases`` when held there,
    and kept there for the next one): that exact version, not today's fleet champion.
    """
    import mlflow.artifacts

    base = None
    if BASE_TAG in mv.tags:
        base_name, _, base_version = str(mv.tags[BASE_TAG]).rpartition("/")
        key = (base_name, base_version)
        cache: Bases = bases if bases is not None else {}
        if key not in cache:
            cache[key] = load_version(c, c.get_model_version(base_name, base_version), cache)
        base = cache[key]
    booster = _native_booster(mv.name, str(mv.version))
    tags = dict(mv.tags)
    rates = None
    if tags.get(SCALE_TAG) == "per_km_city" and mv.run_id:
        rates = mlflow.artifacts.download_artifacts(run_id=mv.run_id, artifact_path=SCALE_FILE)
    scale = LabelScale.from_tags(tags, rates)
    return LoadedModel(
        name=mv.name, version=str(mv.version), booster=booster, tags=tags, run_id=mv.run_id, scale=scale, base=base
    )


class UnsafeModelError(ValueError):
    """A registered version that is not a LightGBM Booster in LightGBM's text format: never loaded."""


def _native_booster(name: str, version: str) -> lgb.Booster:
    """The version's booster, read from LightGBM's own text file, never through a pickle.

    ``mlflow.lightgbm.load_model`` unpickles the sklearn-API flavor (``LGBMRegressor``), so a
    version registered that way could run code in whatever loads it. Here the MLmodel file is read
    first: only ``model_class: lightgbm.basic.Booster`` with its data file (what cityml registers)
    is accepted, and that file is parsed by LightGBM itself.
    """
    import lightgbm as lgb
    import mlflow.artifacts
    import yaml

    folder = Path(mlflow.artifacts.download_artifacts(artifact_uri=f"models:/{name}/{version}"))
    try:
        flavor = (yaml.safe_load((folder / "MLmodel").read_text()) or {}).get("flavors", {}).get("lightgbm")
    except (OSError, yaml.YAMLError) as exc:
        raise UnsafeModelError(f"{name} v{version}: no readable MLmodel file ({exc})") from exc
    if not isinstance(flavor, dict) or flavor.get("model_class") != "lightgbm.basic.Booster":
        got = flavor.get("model_class") if isinstance(flavor, dict) else "no lightgbm flavor"
        raise UnsafeModelError(f"{name} v{version}: {got} is not a LightGBM Booster in text format; refused")
    data = (folder / str(flavor.get("data", ""))).resolve()
    if folder.resolve() not in data.parents or not data.is_file():
        raise UnsafeModelError(f"{name} v{version}: model file {flavor.get('data')!r} is not inside the model")
    return lgb.Booster(model_file=str(data))


def read_profile(c: MlflowClient, run_id: str) -> dict[str, Any]:
    """The reference profile saved with a model version's training run."""
    import mlflow.artifacts

    del c  # the client set the process tracking URI this download uses
    path = mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=PROFILE_FILE)
    with open(path) as fh:
        return dict(json.load(fh))
