"""Writing to the MLflow registry: log a fitted booster, register it, tag it, move ``@champion``."""

from __future__ import annotations

import subprocess
from typing import TYPE_CHECKING, Any

from cityml.naming import CHAMPION
from cityml.settings import PROJECT_ROOT, Settings

if TYPE_CHECKING:
    from mlflow import MlflowClient


def git_sha() -> str:
    """The commit the training code runs from ('unknown' outside a git checkout)."""
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short=12", "HEAD"], cwd=PROJECT_ROOT, capture_output=True, text=True, check=True
        )
        return out.stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def experiment_id(c: MlflowClient, settings: Settings) -> str:
    """The cityml experiment, created with its artifact folder on first use."""
    exp = c.get_experiment_by_name(settings.mlflow_experiment)
    if exp is not None:
        return str(exp.experiment_id)
    return str(c.create_experiment(settings.mlflow_experiment, artifact_location=settings.artifact_root))


def set_champion(c: MlflowClient, name: str, version: str, reason: str) -> None:
    """Point ``@champion`` at ``version`` and record why on the version."""
    c.set_registered_model_alias(name, CHAMPION, version)
    c.set_model_version_tag(name, version, "promotion", reason)


def tag_version(c: MlflowClient, name: str, version: str, tags: dict[str, Any]) -> None:
    for key, value in tags.items():
        c.set_model_version_tag(name, version, key, str(value))
