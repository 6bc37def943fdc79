"""From a fitted model to a registered version: what it carries (profile, self-test, gate tags) and the one
place that registers it and moves ``@champion``."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from cityml.modeling import CITY_FEATURE, LabelScale
from cityml.naming import CHAMPION
from cityml.profile import build_profile, day_segments, feature_profile
from cityml.registry import selftest_doc
from training.fit import DEFAULT_PARAMS, Fitted, Split
from training.gate import Decision, label_reference
from training.registry import log_version, set_champion
from training.results import TrainResult

if TYPE_CHECKING:
    import lightgbm as lgb
    from mlflow import MlflowClient

    from training.context import RunContext

log = logging.getLogger(__name__)

PROFILE_ROWS = 100_000  # training rows a reference profile is computed from, at most
SELFTEST_ROWS = 20

#: ``promotion`` tag of a version the gate passed, until ``@champion`` points at it. A run that dies in between
#: leaves it so; the next run of the model reports and closes it (:func:`close_abandoned`).
PENDING = "pending"


@dataclass
class Registration:
    """Everything a fitted model needs to become a registered version, and what the gate decided.

    Built where the model was fitted (a pool worker, maybe) and published by :func:`publish` in the process that
    runs the retrain, so that a worker left behind by a dead parent can never register or promote.
    """

    name: str
    members: list[tuple[lgb.Booster, LabelScale]]  # one booster and its scale, or a blend's (cityml.modeling)
    example: pd.DataFrame
    features: list[str]
    metrics: dict[str, float]
    tags: dict[str, Any]
    profile: dict[str, Any]
    params: dict[str, Any]
    gate_tags: dict[str, Any]
    selftest: dict[str, Any]
    promote: bool
    why: str


def registration(
    name: str,
    fitted: Fitted,
    split: Split,
    features: list[str],
    m: dict[str, float],
    tags: dict[str, Any],
    decision: Decision,
    forced_by: str,
    params: dict[str, Any],
    label: str,
    test_pred: np.ndarray,
) -> Registration:
    """What registering a fitted model needs: its reference profile, self-test and gate tags. ``test_pred``: the
    model's predictions of ``split.test``, which the caller made for its metrics (a fleet model's half a million
    test rows take minutes to predict again)."""
    # Quantile bins need a sample, not every row: a fleet model's million rows would cost more
    # to predict than to fit.
    train = split.train
    if len(train) > PROFILE_ROWS:
        train = train.sample(n=PROFILE_ROWS, random_state=0)
    train_pred = fitted.predict(train)
    segments = day_segments(train["is_weekend"])
    if CITY_FEATURE in features:  # the fleet model: one reference per city, for cities it serves
        segments.update({f"city={c}": (train[CITY_FEATURE] == c).to_numpy() for c in train[CITY_FEATURE].unique()})
    # Numbers get a quantile sketch, categories (zones, the fleet model's city) their shares.
    profile = build_profile(train[features], train_pred, segments)
    profile["rows"], profile["profiled_rows"] = len(split.train), len(train)
    # What the next challenger's labels are compared with (training/gate.py, check f).
    if "distance_km" in split.train.columns:  # a trip model (a model of city-hours has no km to compare per)
        profile["label"] = label_reference(split.train[label].to_numpy(), split.train["distance_km"].to_numpy())
    # The model's absolute errors on its test window: what realized errors on completed trips are read against.
    if len(split.test):
        errors = np.abs(test_pred - split.test[label].to_numpy())
        profile["test_error"] = feature_profile(pd.Series(errors))
    forced = bool(forced_by) and not decision.promote
    promote = decision.promote or forced
    gate_tags = {"gate": "passed" if decision.promote else "failed", "gate_reasons": "; ".join(decision.reasons)[:4900]}
    if forced_by:  # who asked, whether or not the gate would have promoted it anyway
        gate_tags["force_promote_by"] = forced_by[:250]
    if forced:
        gate_tags["force_promoted"] = "true"
    gate_tags["promotion"] = PENDING if promote else f"rejected: {decision.summary}"
    # What the server must repeat before this version serves (cityml.registry.self_test).
    example = split.test.head(SELFTEST_ROWS)
    inputs = [f for f in dict.fromkeys([*features, "distance_km", CITY_FEATURE]) if f in example.columns]
    selftest = selftest_doc({f: example[f].to_numpy() for f in inputs}, fitted.predict(example))
    return Registration(
        name=name,
        members=fitted.members,
        example=split.test.head(5),
        features=features,
        metrics=m,
        tags=tags,
        profile=profile,
        params={**DEFAULT_PARAMS, **params},
        gate_tags=gate_tags,
        selftest=selftest,
        promote=promote,
        why=f"forced by {forced_by} (gate: {decision.summary})" if forced else decision.summary,
    )


def close_abandoned(c: MlflowClient, name: str) -> list[str]:
    """Versions of ``name`` a dead run left ``pending`` (registered, never made champion): tagged and listed."""
    try:
        held = c.get_registered_model(name)
    except Exception:  # noqa: BLE001 - a model not registered yet has nothing abandoned
        return []
    champion_version = (held.aliases or {}).get(CHAMPION)
    closed = []
    for mv in c.search_model_versions(f"name='{name}'"):
        if mv.tags.get("promotion") == PENDING and str(mv.version) != str(champion_version):
            c.set_model_version_tag(
                name, str(mv.version), "promotion", "abandoned: its run died before @champion moved"
            )
            closed.append(str(mv.version))
    if closed:
        log.warning("%s: versions %s were left pending by a run that died; tagged abandoned", name, closed)
    return closed


def publish(ctx: RunContext, result: TrainResult, reg: Registration | None) -> TrainResult:
    """Register ``reg`` and, if the gate (or ops) said so, move ``@champion`` to it; the result with its version
    (or with why registering failed). Without a registration (skipped, failed) the result is returned as is."""
    if reg is None:
        return result
    c = ctx.client
    try:
        result.abandoned_versions = close_abandoned(c, reg.name)
        result.version = log_version(
            c,
            ctx.experiment,
            reg.name,
            reg.members,
            reg.example,
            reg.features,
            reg.metrics,
            reg.tags,
            reg.profile,
            reg.params,
            reg.gate_tags,
            reg.selftest,
        )
        if reg.promote:
            set_champion(c, reg.name, result.version, reg.why)
    except Exception as exc:
        log.exception("registering %s failed", reg.name)
        result.status, result.reason = "failed", f"registration: {type(exc).__name__}: {exc}"
    return result
