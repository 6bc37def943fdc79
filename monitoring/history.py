"""The drift history: every run's score per model and feature, in a table of the metadata database.

SQLite under ``CITYML_HOME`` by default, Postgres (or any SQLAlchemy URL) with ``CITYML_METADATA_URL``. One row per
(run, model, feature); a run's rows are written in one transaction, so a reader sees a run whole or not at all.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import sqlalchemy as sa

METADATA = sa.MetaData()
DRIFT_SCORES = sa.Table(
    "drift_scores",
    METADATA,
    sa.Column("run_at", sa.DateTime(timezone=True), nullable=False, index=True),
    sa.Column("city", sa.String(64), nullable=False, index=True),
    sa.Column("target", sa.String(32), nullable=False),
    sa.Column("model", sa.String(128), nullable=False),
    sa.Column("version", sa.String(32)),
    sa.Column("feature", sa.String(128), nullable=False),
    sa.Column("method", sa.String(16)),
    sa.Column("score", sa.Float),
    sa.Column("verdict", sa.String(24), nullable=False),
    sa.Column("rows", sa.Integer),
)


def record(url: str, report: dict[str, Any]) -> int:
    """Write a drift run's per-feature scores; returns the rows written."""
    run_at = datetime.fromisoformat(report["generated_at"])
    rows = [
        {
            "run_at": run_at,
            "city": m["city"],
            "target": m["target"],
            "model": m["model"],
            "version": m.get("version"),
            "feature": name,
            "method": f.get("method"),
            "score": f.get("score"),
            "verdict": f["verdict"],
            "rows": m.get("rows"),
        }
        for m in report["models"]
        for name, f in m.get("features", {}).items()
    ]
    engine = sa.create_engine(url)
    try:
        METADATA.create_all(engine)
        if rows:
            with engine.begin() as conn:
                conn.execute(DRIFT_SCORES.insert(), rows)
    finally:
        engine.dispose()
    return len(rows)


def read(url: str, city: str | None = None) -> list[dict[str, Any]]:
    """The recorded scores (of one city), oldest run first."""
    engine = sa.create_engine(url)
    try:
        METADATA.create_all(engine)
        query = sa.select(DRIFT_SCORES).order_by(DRIFT_SCORES.c.run_at, DRIFT_SCORES.c.model, DRIFT_SCORES.c.feature)
        if city is not None:
            query = query.where(DRIFT_SCORES.c.city == city)
        with engine.connect() as conn:
            return [dict(r._mapping) for r in conn.execute(query)]
    finally:
        engine.dispose()
