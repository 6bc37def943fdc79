"""Writing to the MLflow registry: log a fitted booster, register it, tag it, move ``@champion``."""

from __future__ import annotations

import functools
import json
import os
import subprocess
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from cityml.naming import CHAMPION
from cityml.settings import PROJECT_ROOT, Settings

if TYPE_CHECKING:
    import lightgbm as lgb
    import pandas as pd
    from mlflow import MlflowClient

    from cityml.modeling import LabelScale


@functools.cache
def git_sha() -> str:
    """The commit the training code runs from: ``CITYML_GIT_SHA`` (set by the image), else git, else 'unknown'."""
    if sha := os.environ.get("CITYML_GIT_SHA", "").strip():
        return sha
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short=12", "HEAD"], cwd=PROJECT_ROOT, capture_output=True, text=True, check=True
        )
        return out.stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


#: Test MAE on the test window's weekdays and weekend days (version tags): realized accuracy compares a day with the
#: kind of day it is, since a test window of mostly weekend days says little about a weekday's error.
DAY_KIND_MAE = ("mae_weekday", "mae_weekend")
MIN_DAY_KIND_ROWS = 30  # fewer test trips of a kind give no test MAE for it


def day_kind_mae(errors: np.ndarray, weekend: np.ndarray) -> dict[str, float]:
    """``mae_weekday`` / ``mae_weekend`` of absolute test errors, for the kinds with enough trips."""
    out = {}
    for name, mask in zip(DAY_KIND_MAE, (~weekend, weekend), strict=True):
        if int(mask.sum()) >= MIN_DAY_KIND_ROWS:
            out[name] = float(np.mean(errors[mask]))
    return out


def experiment_id(c: MlflowClient, settings: Settings) -> str:
    """The cityml experiment, created with its artifact folder on first use."""
    exp = c.get_experiment_by_name(settings.mlflow_experiment)
    if exp is not None:
        return str(exp.experiment_id)
    from mlflow.exceptions import MlflowException

    try:
        return str(c.create_experiment(settings.mlflow_experiment, artifact_location=settings.artifact_root))
    except MlflowException as exc:  # two first fits at once (two Celery workers): the other one created it
        exp = c.get_experiment_by_name(settings.mlflow_experiment)
        if exp is None:
            raise exc
        return str(exp.experiment_id)


def set_champion(c: MlflowClient, name: str, version: str, reason: str) -> None:
    """Point ``@champion`` at ``version`` and record why on the version."""
    c.set_registered_model_alias(name, CHAMPION, version)
    c.set_model_version_tag(name, version, "promotion", reason)


def feast_registry_version(settings: Settings) -> str:
    """When the Feast registry the features came from was last applied (its lineage stamp)."""
    from cityml.features.featurestore import get_store

    try:
        updated = get_store(settings).registry.proto().last_updated
        return str(updated.ToJsonString())
    except Exception:  # noqa: BLE001 - lineage must not fail a training run
        return "unknown"


def log_version(
    c: MlflowClient,
    experiment: str,
    name: str,
    members: list[tuple[lgb.Booster, LabelScale]],
    example_frame: pd.DataFrame,
    features: list[str],
    metrics: dict[str, float],
    tags: dict[str, Any],
    profile: dict[str, Any],
    params: dict[str, Any],
    version_tags: dict[str, Any] | None = None,
    selftest: dict[str, Any] | None = None,
) -> str:
    """One MLflow run holding the model, its metrics, tags and reference profile; registered as ``name``.

    The booster is saved by ``mlflow.lightgbm`` in LightGBM's text format. Requirements are given
    explicitly: inferring them would export the whole project lock for every model. The version
    is created with all its tags (``tags``, MAE, the label scale, then ``version_tags``) in one
    registry call. The run holds the reference profile; the files a server needs go with the model,
    in its ``cityml/`` folder, listed in its MLmodel (``cityml.registry.VersionFiles``): the self-test
    rows, a fleet model's per-city rates (``label_scale.json``), and a blend's other members as
    LightGBM text files without training statistics (``cityml.modeling.prediction_text``,
    ``MEMBER_FILE``; the first member is the MLflow model, whole),
    their scales in the ``blend`` tag.
    """
    import lightgbm
    import mlflow
    import mlflow.lightgbm
    from mlflow.entities import Metric, Param, RunTag
    from mlflow.models import infer_signature

    from cityml.modeling import (
        BLEND_TAG,
        CATEGORICAL_FEATURES,
        MEMBER_FILE,
        SCALE_FILE,
        SCALE_TAG,
        model_frame,
        prediction_text,
    )
    from cityml.profile import PROFILE_FILE
    from cityml.registry import MODEL_FILES_DIR, MODEL_FILES_KEY, SELFTEST_FILE

    (booster, scale), others = members[0], members[1:]
    example = example_frame.head(5)
    x = model_frame(example, features)
    with mlflow.start_run(experiment_id=experiment, run_name=name) as run:
        run_id = run.info.run_id
        c.log_batch(
            run_id,
            params=[Param(k, str(v)) for k, v in {**params, "features": ",".join(features)}.items()],
            tags=[RunTag(k, str(v)) for k, v in tags.items()],
        )
        mlflow.log_dict(profile, PROFILE_FILE)
        serving_files: dict[str, str] = {}  # logged with the model: a server reads them with no run
        if scale.city_rates:
            serving_files[SCALE_FILE] = json.dumps(scale.to_json())
        if selftest is not None:
            serving_files[SELFTEST_FILE] = json.dumps(selftest)
        for i, (member, _) in enumerate(others, start=1):
            serving_files[MEMBER_FILE.format(i=i)] = prediction_text(member)
        info = mlflow.lightgbm.log_model(
            booster,
            name="model",
            signature=infer_signature(x, booster.predict(x)),
            input_example=x,
            pip_requirements=[f"lightgbm=={lightgbm.__version__}", f"mlflow=={mlflow.__version__}"],
            # MLflow checks that the example survives its JSON serving format. A city or a zone is
            # a pandas categorical, which that round trip turns into text, so the check can only
            # fail there; cityml's server builds the frame itself (cityml.modeling).
            validate_serving_input=not CATEGORICAL_FEATURES & set(features),
            metadata={MODEL_FILES_KEY: sorted(serving_files)},
        )
        with tempfile.TemporaryDirectory(prefix="cityml-files-") as tmp:
            for file, text in serving_files.items():  # an empty folder uploads nothing
                (Path(tmp) / file).parent.mkdir(parents=True, exist_ok=True)
                (Path(tmp) / file).write_text(text)
            c.log_model_artifacts(info.model_id, tmp, artifact_path=MODEL_FILES_DIR)
        # Logged after the model and linked to it in the same request: metrics logged before it are linked by
        # MLflow reading each one's history back, one request per metric (a fleet model logs one per city).
        stamp = int(time.time() * 1000)
        finite = {k: float(v) for k, v in metrics.items() if np.isfinite(v)}
        c.log_batch(run_id, metrics=[Metric(k, v, stamp, 0, model_id=info.model_id) for k, v in finite.items()])
    mae: dict[str, float] = {k: metrics[k] for k in ("mae", *DAY_KIND_MAE, "baseline_mae") if k in metrics}
    all_tags: dict[str, Any] = {**tags, **mae, SCALE_TAG: scale.kind, **(version_tags or {})}
    if others:
        all_tags[BLEND_TAG] = ",".join(s.kind for _, s in members)
    registered = mlflow.register_model(info.model_uri, name, tags={k: str(v) for k, v in all_tags.items()})
    return str(registered.version)


def rollback(settings: Settings, name: str, version: str, who: str = "cli") -> dict[str, Any]:
    """Point ``@champion`` of ``name`` back at ``version``, recorded on both versions."""
    from datetime import UTC, datetime

    from mlflow.exceptions import MlflowException

    from cityml.registry import champion, client

    c = client(settings)
    try:
        target = c.get_model_version(name, version)
    except MlflowException as exc:
        raise LookupError(f"{name} has no version {version!r}") from exc
    current = champion(c, name)
    previous = str(current.version) if current is not None else None
    when = datetime.now(UTC).isoformat(timespec="seconds")
    c.set_registered_model_alias(name, CHAMPION, str(target.version))
    c.set_model_version_tag(name, str(target.version), "promotion", f"rollback by {who} at {when} (was v{previous})")
    if previous is not None and previous != str(target.version):
        c.set_model_version_tag(name, previous, "demoted", f"rollback to v{target.version} by {who} at {when}")
    c.set_registered_model_tag(name, "last_rollback", f"v{previous} -> v{target.version} by {who} at {when}")
    return {"model": name, "champion_version": str(target.version), "previous_version": previous, "at": when}
