"""Drift: live features (from the prediction log) against the champion's reference profile; the monitoring run.

Each feature is scored by the statistics of ``monitoring.stats`` against the profile's quantile sketch (numbers) or
category shares (zones, city), and judged by ``drift_method`` at ``drift_threshold``. Calendar features
(weekday, weekend) are scored but not judged: a window shorter than a week differs in them by design. So are the
28-day trip-history medians: a reference from a city's first weeks holds medians of a few trips, spread wide, and
live medians of a full window sit tighter, which PSI reads as drift while nothing moved (seen in `make demo`).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from cityml.features.featurestore import is_history_feature
from cityml.features.request_features import CALENDAR_FEATURES
from cityml.naming import GLOBAL, model_name
from cityml.prediction_log import read_predictions
from cityml.profile import build_profile, pick_segment
from cityml.registry import champion, choose_serving, client, fleet_version_learned, read_profile, version_scale
from cityml.reports import report_stem, write_text_atomic
from cityml.settings import Settings
from monitoring.accuracy import AccuracyFlag
from monitoring.stats import categorical_score, category_counts, judge, numeric_score

log = logging.getLogger(__name__)

MISSING_RISE = 0.2


def verdict(score: float) -> str:
    """The PSI reading: below 0.1 stable, 0.1-0.25 watch, 0.25 and above drift."""
    return judge("psi", score)


def feature_scores(
    reference: dict[str, Any], current: pd.DataFrame, method: str = "auto", threshold: float | None = None
) -> dict[str, dict[str, Any]]:
    """Drift statistics and a verdict per feature of ``reference['features']`` found in ``current``.

    Numeric features get PSI, KS (statistic, p-value and both sample sizes), Wasserstein in reference standard
    deviations and Jensen-Shannon; categorical ones PSI, chi-square and Jensen-Shannon (``monitoring.stats``).
    ``method`` picks the statistic that decides (``auto``: as Evidently's preset) and ``threshold``, if given,
    replaces that statistic's default threshold. They are computed over the
    non-missing values; missing values are judged on their own: a live missing share more than ``MISSING_RISE``
    above the reference's is drift (fewer missing values than in training, e.g. after a warm-up, is not).
    """
    out: dict[str, dict[str, Any]] = {}
    for name, ref in reference["features"].items():
        if name not in current.columns:
            continue
        column = current[name]
        if ref.get("kind") == "categorical":
            present = column.dropna()
            missing = 1 - len(present) / len(column) if len(column) else 0.0
            score = categorical_score(ref, present.to_numpy(), method, threshold) if len(present) else None
        else:
            values = pd.to_numeric(column, errors="coerce").to_numpy(dtype="float64")
            ok = np.isfinite(values)
            missing = float(1 - ok.mean()) if values.size else 0.0
            score = numeric_score(ref, values[ok], method, threshold) if ok.any() else None
        judged = score.verdict if score is not None else "stable"
        if missing - ref["missing_share"] > MISSING_RISE:
            judged = "drift"
        if ref["missing_share"] >= 0.99:
            judged = "no reference"  # training never saw a value: nothing to compare with
        shown = judged in ("drift", "watch") and score is not None
        out[name] = {
            **({"distribution": _distribution(ref, column)} if shown else {}),
            "method": score.method if score is not None else None,
            "score": score.value if score is not None else None,
            **(score.stats if score is not None else {"psi": 0.0}),
            "missing_share": round(missing, 4),
            "reference_missing_share": round(ref["missing_share"], 4),
            "verdict": "calendar" if name in CALENDAR_FEATURES else "history" if is_history_feature(name) else judged,
        }
    return out


def _distribution(reference: dict[str, Any], column: pd.Series) -> dict[str, Any]:
    """Reference and live distributions of a feature worth a look, for the report's plots."""
    if reference.get("kind") == "categorical":
        live = category_counts(reference, column.dropna().to_numpy())
        n = max(sum(live.values()), 1)
        return {"kind": "categorical", "reference": reference["shares"], "live": {k: v / n for k, v in live.items()}}
    values = pd.to_numeric(column, errors="coerce").to_numpy(dtype="float64")
    values = values[np.isfinite(values)]
    grid = np.linspace(0, 1, len(reference.get("quantiles") or []) or 101)
    return {
        "kind": "numeric",
        "reference": reference.get("quantiles") or [],
        "live": np.quantile(values, grid).round(6).tolist() if values.size else [],
    }


def _summary(scores: dict[str, dict[str, Any]], rows: int, min_rows: int) -> dict[str, Any]:
    if rows < min_rows:
        return {"verdict": "insufficient data", "rows": rows, "drifted": [], "features": scores}
    drifted = sorted(n for n, s in scores.items() if s["verdict"] == "drift")
    watch = any(s["verdict"] == "watch" for s in scores.values())
    overall = "drift" if drifted else "watch" if watch else "stable"
    return {"verdict": overall, "rows": rows, "drifted": drifted, "features": scores}


def _once(memo: dict[tuple[str, ...], Any], key: tuple[str, ...], read: Callable[[], Any]) -> Any:
    """``read()`` the first time ``key`` is asked for in a run, the kept answer after."""
    if key not in memo:
        memo[key] = read()
    return memo[key]


def drift_model(
    settings: Settings,
    city: str,
    target: str,
    since: datetime,
    c: Any | None = None,
    memo: dict[tuple[str, ...], Any] | None = None,
) -> dict[str, Any]:
    """Drift of the model serving a city: logged live features vs the profile saved with it.

    A city without a champion is served by the global model; its live traffic is then compared
    with that city's slice of the global model's reference. ``memo``: what a run has read already (the global
    model's champion, label scale and profile, the same for every city it serves: read once per run, not per
    city — its profile holds a segment per city).
    """
    name = model_name(target, city)
    c = c or client(settings)
    memo = {} if memo is None else memo
    own = champion(c, name)
    fleet_name = model_name(target, GLOBAL)
    fleet = _once(memo, ("champion", fleet_name), lambda: champion(c, fleet_name)) if own is None else None

    def scale_of(mv: Any) -> Any:
        return _once(memo, ("scale", mv.name, str(mv.version)), lambda: version_scale(c, mv))

    mv, _ = choose_serving(target, city, own, fleet, fleet_version_learned(c, city, scale_of))
    serving = name if own is not None else model_name(target, GLOBAL)
    base = {"city": city, "target": target, "model": serving}
    if mv is None or mv.run_id is None:
        return {**base, "verdict": "no champion", "rows": 0, "drifted": [], "features": {}}
    # Only what this version served: after a swap, the older version's traffic belongs to another reference.
    version = str(mv.version)
    records = [
        r
        for r in read_predictions(settings.predictions_dir, city, target, since)
        if r["model"] == serving and str(r["version"]) == version
    ]
    live = pd.DataFrame([r["features"] for r in records])
    # The global model's profile is kept for the next city it serves; a city model's is read once, by its city.
    profile = (
        _once(memo, ("profile", mv.name, version), lambda: read_profile(c, mv)) if own is None else read_profile(c, mv)
    )
    if serving != name and f"city={city}" in profile.get("segments", {}):
        segment, reference = f"city={city}", profile["segments"][f"city={city}"]
    elif "is_weekend" in live:
        segment, reference = pick_segment(profile, live["is_weekend"])
    else:
        segment, reference = "all", profile
    method, threshold = settings.drift_method, settings.drift_threshold
    scores = feature_scores(reference, live, method, threshold) if len(live) else {}
    if len(live):
        pred = pd.Series([r["prediction"] for r in records])
        scores["prediction"] = feature_scores(
            {"features": {"prediction": reference["prediction"]}}, pd.DataFrame({"prediction": pred}), method, threshold
        )["prediction"]
    return {
        **base,
        "version": str(mv.version),
        "reference": segment,
        **_summary(scores, len(live), settings.drift_min_rows),
    }


@dataclass(frozen=True)
class Retrained:
    """A city's newest registered version: when, which, and what the gate said of it."""

    at: datetime
    model: str
    version: str
    outcome: str


def last_retrain(c: Any, city: str, targets: list[str]) -> Retrained | None:
    """The newest version of any of the city's models (None: never trained)."""
    newest: Retrained | None = None
    for target in targets:
        name = model_name(target, city)
        for mv in c.search_model_versions(f"name='{name}'", max_results=1, order_by=["creation_timestamp DESC"]):
            at = datetime.fromtimestamp(mv.creation_timestamp / 1000, tz=UTC)
            if newest is None or at > newest.at:
                outcome = mv.tags.get("promotion") or mv.tags.get("gate") or "unknown"
                newest = Retrained(at, name, str(mv.version), outcome)
    return newest


def cooldown(
    drifted: list[str], requested: dict[str, datetime], now: datetime, hours: float
) -> tuple[list[str], dict[str, dict[str, str]]]:
    """Which drifting cities to retrain now, and which wait: those whose retrain the drift job asked for less
    than ``hours`` ago.

    A city whose retrain did not fix its drift (the gate refused the new version, or the new one drifts too) is
    asked for again once its cooldown is over, never in a loop.
    """
    retrain, waiting = [], {}
    for city in drifted:
        asked = requested.get(city)
        if asked is not None and now - asked < timedelta(hours=hours):
            until = asked + timedelta(hours=hours)
            waiting[city] = {
                "requested_at": asked.isoformat(timespec="seconds"),
                "until": until.isoformat(timespec="seconds"),
            }
        else:
            retrain.append(city)
    return retrain, waiting


REQUESTS_FILE = "retrain_requests.json"


def _requested(settings: Settings) -> dict[str, datetime]:
    """When the drift job last asked for each city's retrain."""
    path = settings.reports_dir / "drift" / REQUESTS_FILE
    if not path.exists():
        return {}
    try:
        return {str(city): datetime.fromisoformat(at) for city, at in json.loads(path.read_text()).items()}
    except (OSError, ValueError, TypeError, AttributeError) as exc:
        # Cooldowns forgotten (a retrain may be asked for again) rather than no drift job at all.
        log.error("%s is unreadable (%s): cooldowns start over", path, exc)
        return {}


def _record_requests(settings: Settings, cities: list[str], now: datetime) -> None:
    path = settings.reports_dir / "drift" / REQUESTS_FILE
    done = {city: at.isoformat() for city, at in _requested(settings).items()}
    done.update({city: now.isoformat() for city in cities})
    write_text_atomic(path, json.dumps(done, indent=2, sort_keys=True))


def reasons(
    results: list[dict[str, Any]], flagged: list[AccuracyFlag], threshold: float | None = None
) -> dict[str, list[str]]:
    """Why each city should be retrained: its drifting models with their drifted features (worst first), and its
    accuracy flags."""
    from monitoring.report import severity

    why: dict[str, list[str]] = {}
    for r in results:
        if r["verdict"] == "drift":
            scores = r.get("features", {})
            drifted = sorted(r.get("drifted", []), key=lambda n: -(severity(scores.get(n, {}), threshold) or 0.0))
            names = ", ".join(drifted[:4]) + (", ..." if len(drifted) > 4 else "")
            why.setdefault(r["city"], []).append(f"{r['target']} drift" + (f": {names}" if names else ""))
    for f in flagged:
        why.setdefault(f.city, []).append(f.why)
    return why


def run_drift(
    settings: Settings,
    cities: list[str],
    targets: list[str],
    window: timedelta = timedelta(days=7),
    *,
    request: bool = False,
) -> dict[str, Any]:
    """Drift and realized accuracy for every (city, target) over the last ``window``; writes the JSON and HTML report.

    The default window is a week: it covers the weekly cycle, so a quiet Sunday or one rainy day
    does not read as drift. Shorter windows compare with the matching weekday/weekend reference.
    Realized accuracy (``monitoring.accuracy``) joins the trips completed in the window to the predictions.

    Returns the report. ``flagged`` lists the cities with a drifting model or a realized-accuracy flag, ``reasons``
    says why for each; ``retrain`` those the job did not ask for within ``settings.drift_cooldown_h``; the others
    are in ``cooling_down`` with the outcome of their newest version (a retrain the gate refused shows here). With
    ``request`` (the ``monitor_drift`` DAG, which then triggers the retrain) the request is recorded and starts the
    city's cooldown.
    """
    from monitoring import history
    from monitoring.accuracy import run_labels
    from monitoring.report import write_html

    now = datetime.now(UTC)
    c = client(settings)
    memo: dict[tuple[str, ...], Any] = {}
    results = [drift_model(settings, city, t, now - window, c, memo=memo) for city in cities for t in targets]
    labels = run_labels(settings, cities, targets, now - window, client=c)
    drifted = sorted({r["city"] for r in results if r["verdict"] == "drift"})
    why = reasons(results, labels.flagged, settings.drift_threshold)
    flagged = sorted(why)
    retrain, waiting = cooldown(flagged, _requested(settings), now, settings.drift_cooldown_h)
    for city, entry in waiting.items():
        newest = last_retrain(c, city, targets)
        if newest is not None:
            entry.update(last_version=f"{newest.model} v{newest.version}", last_outcome=newest.outcome[:200])
    if request and retrain:
        _record_requests(settings, retrain, now)
    report = {
        "generated_at": now.isoformat(),
        "window_start": (now - window).isoformat(),
        "method": settings.drift_method,
        "threshold": settings.drift_threshold,
        "models": results,
        "drifted": drifted,
        "accuracy": labels.to_json(),
        "flagged": flagged,
        "reasons": {city: "; ".join(lines) for city, lines in why.items()},
        "retrain": retrain,
        "cooling_down": waiting,
    }
    report["history_rows"] = history.record(settings.metadata_db, report)
    path = settings.reports_dir / "drift" / f"{report_stem('drift', now)}.json"
    html_path = write_html(report, path.parent, path.stem, labels.history)
    write_text_atomic(path, json.dumps(report, indent=2))
    report["report_path"], report["html_path"] = str(path), str(html_path)
    return report


def retrain_conf(report: dict[str, Any]) -> dict[str, Any]:
    """The ``retrain_city_models`` conf a drift run asks for: its cities, and why, as the run's trigger form shows."""
    reasons_ = report.get("reasons", {})
    return {
        "cities": list(report["retrain"]),
        "reason": " | ".join(f"{city}: {reasons_.get(city, 'drift')}" for city in report["retrain"])[:2000],
    }


def compare_files(
    reference: Path, current: Path, min_rows: int = 50, method: str = "auto", threshold: float | None = None
) -> dict[str, Any]:
    """Ad-hoc drift between two parquet tables, over the columns they share: numbers, and categories
    (object, string, category or boolean columns)."""
    ref = _read_table(reference)
    cur = _read_table(current)
    shared = [c for c in ref.columns if c in cur.columns]
    if not shared:
        raise ValueError(f"{reference} and {current} share no column")
    profile = build_profile(ref[shared], np.zeros(len(ref)))
    scores = feature_scores(profile, cur[shared], method, threshold)
    return {
        "reference": str(reference),
        "current": str(current),
        "reference_rows": len(ref),
        "method": method,
        **_summary(scores, len(cur), min_rows),
    }


def _read_table(path: Path) -> pd.DataFrame:
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist")
    import pyarrow.parquet as pq

    try:
        # By path, not through a Python file object: pyarrow may release such a file from a scan thread after the
        # interpreter has shut down, which aborts the process (exit 134) once in ten runs.
        return pq.read_table(str(path)).to_pandas()
    except Exception as exc:
        raise ValueError(f"{path} is not a readable parquet file: {exc}") from exc
