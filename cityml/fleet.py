"""The registered fleet as users see it: one row per model with its champion, metrics and tags."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from cityml.naming import GLOBAL, MODEL_PREFIX, TARGETS, model_name, split_model_name
from cityml.registry import champion, client
from cityml.settings import Settings

METRIC_TAGS = ("mae", "baseline_mae")


def _float(value: str | None) -> float | None:
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None


def list_models(settings: Settings) -> list[dict[str, Any]]:
    """``name, city, target, champion_version, champion_age_h, fallback, metrics, tags`` per model."""
    c = client(settings)
    names: list[str] = []
    token = None
    while True:
        page = c.search_registered_models(max_results=1000, page_token=token)
        names.extend(m.name for m in page)
        token = page.token
        if not token:
            break
    names.sort()
    rows = []
    for name in names:
        target, city = split_model_name(name)
        if target not in TARGETS and not MODEL_PREFIX.fullmatch(target):
            continue
        mv = champion(c, name)
        # Without a champion, show the newest version: its tags say why the gate kept it out.
        shown = mv or max(c.search_model_versions(f"name='{name}'"), key=lambda v: int(v.version), default=None)
        tags = dict(shown.tags) if shown is not None else {}
        if target not in TARGETS and tags.get("target") != target:
            continue  # another team's model in a shared registry, not a cityml model added in a DAG file
        fallback = None
        if mv is None:
            fallback = (
                f"no champion: {model_name(target, GLOBAL)} serves"
                if model_name(target, GLOBAL) in names and city != GLOBAL
                else "no champion"
            )
        age_h = None
        if mv is not None and mv.creation_timestamp:
            age_h = round((datetime.now(UTC).timestamp() * 1000 - mv.creation_timestamp) / 3.6e6, 2)
        rows.append(
            {
                "name": name,
                "city": tags.get("city", city),
                "target": target,
                "champion_version": str(mv.version) if mv is not None else None,
                "latest_version": str(shown.version) if shown is not None else None,
                "champion_age_h": age_h,
                "fallback": fallback,
                "metrics": {k: _float(tags.get(k)) for k in METRIC_TAGS},
                "tags": {k: v for k, v in tags.items() if k not in METRIC_TAGS},
            }
        )
    return rows
