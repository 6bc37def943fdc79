"""Report files of runs (the gate's, the drift job's): named by the time they were made, written whole.

Two runs finishing in the same second (the two retrain DAGs, a drift run and a manual one) each keep
their report: names carry microseconds, and still sort in time order. A reader never sees half a file:
each is written to a temporary name and renamed.
"""

from __future__ import annotations

import os
from datetime import datetime
from pathlib import Path


def report_stem(prefix: str, now: datetime) -> str:
    """``<prefix>-<UTC time to the microsecond>Z``, e.g. ``drift-20261207T101500123456Z``."""
    return f"{prefix}-{now:%Y%m%dT%H%M%S%f}Z"


def write_text_atomic(path: Path, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` through a temporary file and a rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path
