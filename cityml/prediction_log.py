"""The prediction log: every served prediction with its features, one JSON line each.

Serving writes it; the drift job reads it. Both go through this module, so the format lives here.

Files: ``<predictions_dir>/city=<slug>/date=<YYYY-MM-DD>.jsonl``. The drift job reads them.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any


class PredictionLogger:
    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self._lock = threading.Lock()

    def write(self, records: Iterable[dict[str, Any]]) -> None:
        """Append records (each with a ``city``) to today's file of their city."""
        day = datetime.now(UTC).date().isoformat()
        by_city: dict[str, list[str]] = {}
        for r in records:
            by_city.setdefault(r["city"], []).append(json.dumps(r, default=str))
        with self._lock:
            for city, lines in by_city.items():
                path = self.folder / f"city={city}" / f"date={day}.jsonl"
                path.parent.mkdir(parents=True, exist_ok=True)
                with path.open("a") as fh:
                    fh.write("\n".join(lines) + "\n")


def read_predictions(
    folder: Path, city: str, target: str | None = None, since: datetime | None = None
) -> list[dict[str, Any]]:
    """Logged predictions of a city (optionally one target, optionally since a time)."""
    files = sorted((folder / f"city={city}").glob("date=*.jsonl"))
    if since is not None:
        files = [f for f in files if f.stem[5:] >= since.date().isoformat()]
    out = []
    for f in files:
        for line in f.read_text().splitlines():
            if not line.strip():
                continue
            r = json.loads(line)
            if target is not None and r.get("target") != target:
                continue
            if since is not None and datetime.fromisoformat(r["ts"]) < since:
                continue
            out.append(r)
    return out
