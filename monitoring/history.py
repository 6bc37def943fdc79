"""The monitoring history, in tables of the metadata database: drift scores and realized accuracy.

SQLite under ``CITYML_HOME`` by default, Postgres (or any SQLAlchemy URL) with ``CITYML_METADATA_URL``.
``drift_scores``: one row per (run, model, feature); a run's rows are written in one transaction, so a reader sees a
run whole or not at all. ``realized_accuracy``: one row per (city, target, model version, day), replaced in one
transaction when the day is measured again (late trips arrive; a rerun changes nothing).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, date, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa

if TYPE_CHECKING:
    from monitoring.accuracy import RealizedDay

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

REALIZED_ACCURACY = sa.Table(
    "realized_accuracy",
    METADATA,
    sa.Column("city", sa.String(64), primary_key=True),
    sa.Column("target", sa.String(32), primary_key=True),
    sa.Column("model", sa.String(128), primary_key=True),
    sa.Column("version", sa.String(32), primary_key=True),
    sa.Column("day", sa.Date, primary_key=True),
    sa.Column("trips", sa.Integer, nullable=False),
    sa.Column("mae", sa.Float, nullable=False),
    sa.Column("test_mae", sa.Float),
    sa.Column("measured_at", sa.DateTime(timezone=True), nullable=False),
)


def _engine(url: str) -> sa.Engine:
    """An engine on the metadata database; a SQLite file's folder is made first (a new home has none)."""
    parsed = sa.make_url(url)
    if parsed.get_backend_name() == "sqlite" and parsed.database not in (None, "", ":memory:"):
        Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
    return sa.create_engine(url)


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
    engine = _engine(url)
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
    engine = _engine(url)
    try:
        METADATA.create_all(engine)
        query = sa.select(DRIFT_SCORES).order_by(DRIFT_SCORES.c.run_at, DRIFT_SCORES.c.model, DRIFT_SCORES.c.feature)
        if city is not None:
            query = query.where(DRIFT_SCORES.c.city == city)
        with engine.connect() as conn:
            return [dict(r._mapping) for r in conn.execute(query)]
    finally:
        engine.dispose()


def record_accuracy(url: str, days: Sequence[RealizedDay]) -> int:
    """Store realized MAEs, each replacing an earlier measure of the same (city, target, version, day)."""
    engine = _engine(url)
    t = REALIZED_ACCURACY
    now = datetime.now(UTC)
    try:
        METADATA.create_all(engine)
        with engine.begin() as conn:
            for d in days:
                conn.execute(
                    t.delete().where(
                        (t.c.city == d.city)
                        & (t.c.target == d.target)
                        & (t.c.model == d.model)
                        & (t.c.version == d.version)
                        & (t.c.day == d.day)
                    )
                )
            if days:
                rows = [
                    {
                        "city": d.city,
                        "target": d.target,
                        "model": d.model,
                        "version": d.version,
                        "day": d.day,
                        "trips": d.trips,
                        "mae": d.mae,
                        "test_mae": d.test_mae,
                        "measured_at": now,
                    }
                    for d in days
                ]
                conn.execute(t.insert(), rows)
    finally:
        engine.dispose()
    return len(days)


def read_accuracy(url: str, cities: Sequence[str] | None = None, since: date | None = None) -> list[RealizedDay]:
    """The stored realized MAEs (of some cities, from a day on), oldest day first."""
    from monitoring.accuracy import RealizedDay

    t = REALIZED_ACCURACY
    engine = _engine(url)
    try:
        METADATA.create_all(engine)
        query = sa.select(t).order_by(t.c.day, t.c.city, t.c.target, t.c.version)
        if cities is not None:
            query = query.where(t.c.city.in_(list(cities)))
        if since is not None:
            query = query.where(t.c.day >= since)
        with engine.connect() as conn:
            return [
                RealizedDay(r.city, r.target, r.model, r.version, r.day, r.trips, r.mae, r.test_mae)
                for r in conn.execute(query)
            ]
    finally:
        engine.dispose()
