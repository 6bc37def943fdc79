"""Import a batch of real trip files: read and validate all of them, then store.

Nothing is written until every file has been read, mapped and validated, so a refused file (unreadable, wrong
columns) leaves the trip store exactly as it was. The batch is then published at once (``cityml.data.trips``): a reader,
or an import killed midway, never leaves half of it visible. Trip ids come from the trips' content, so importing
the same trips again, from any file, stores them once.
"""

from __future__ import annotations

import logging
from pathlib import Path
from types import ModuleType
from typing import Any, Literal

import pandas as pd

from cityml.catalog import City, load_catalog
from cityml.data.importers import chicago, nyc_tlc
from cityml.data.importers.common import read_table
from cityml.data.trips import write_trips
from cityml.data.validation import (
    REASONS,
    ValidationResult,
    quarantine_path,
    validate_trips,
    with_malformed_lines,
    write_quarantine,
)
from cityml.settings import Settings

Source = Literal["nyc-tlc", "chicago"]
IMPORTERS: dict[str, ModuleType] = {nyc_tlc.SOURCE: nyc_tlc, chicago.SOURCE: chicago}
log = logging.getLogger(__name__)


def _drop_seen(result: ValidationResult, seen: set[str], source: str) -> ValidationResult:
    """Move rows whose trip id an earlier file of the batch already had to the quarantine."""
    repeated = result.clean["trip_id"].isin(seen)
    seen.update(result.clean["trip_id"][~repeated])
    if not repeated.any():
        return result
    moved = result.clean[repeated].assign(source=source, reason="duplicate_trip_id")
    counts = dict(result.counts)
    counts["duplicate_trip_id"] = counts.get("duplicate_trip_id", 0) + int(repeated.sum())
    clean = result.clean[~repeated].reset_index(drop=True)
    return ValidationResult(
        clean=clean,
        quarantine=pd.concat([result.quarantine, moved], ignore_index=True),
        counts={r: counts[r] for r in REASONS if r in counts},
        rows_read=result.rows_read,
        rows_kept=len(clean),
    )


def _has_fare(df: pd.DataFrame) -> bool:
    return bool(df["fare"].notna().any())


def _file_report(path: Path, variant: str, period: Any, result: ValidationResult) -> dict[str, Any]:
    return {
        "file": str(path),
        "variant": variant,
        "period": [period[0].isoformat(), period[1].isoformat()] if period is not None else None,
        "rows_read": result.rows_read,
        "rows_kept": result.rows_kept,
        "rows_quarantined": result.rows_quarantined,
        "quarantined_by_reason": result.counts,
        "has_fare": _has_fare(result.clean),
        "quarantine_file": None,
    }


def _kept_as(path: Path) -> str:
    """The name a file's quarantine is kept under (its name, made safe)."""
    return quarantine_path(Path(), "", path.name).name


def _check_names(files: list[Path]) -> None:
    """Refuse two different files whose quarantines would share a name (kept by the file's name, made safe:
    ``a b.csv`` and ``a_b.csv`` are both ``a_b.csv.parquet``)."""
    by_name: dict[str, Path] = {}
    for path in files:
        kept_as = _kept_as(path)
        other = by_name.setdefault(kept_as, path)
        if other.resolve() != path.resolve():
            raise ValueError(f"{other} and {path} would share the quarantine {kept_as!r}; rename one")


def _check_timezone(city: City, source: ModuleType) -> None:
    if city.timezone != source.SOURCE_TZ:
        # The source's own clock decides how its times are read; the catalog's zone only drives local features.
        log.warning("city %s is in %s but %s times are %s", city.slug, city.timezone, source.SOURCE, source.SOURCE_TZ)


def import_files(settings: Settings, source: Source, files: list[Path], city: str) -> dict[str, Any]:
    """Read, validate and store real trip files of one city.

    Every file is read and validated first; only then are the clean rows stored (merged into any trips already
    stored for the same days) and the quarantined rows written under ``settings.quarantine_dir``. If any file is
    refused, nothing is written.

    Args:
        settings: Where the trip store, the quarantine and the catalog are.
        source: ``"nyc-tlc"`` or ``"chicago"``.
        files: CSV or parquet files in one of the source's public layouts.
        city: Catalog slug the trips are stored under.

    Returns:
        A JSON-safe report: ``source``, ``city``, ``files`` (per file: ``file, variant, period, rows_read,
        rows_kept, rows_quarantined, quarantined_by_reason, has_fare, quarantine_file``), ``total`` (``rows_read,
        rows_kept, rows_quarantined, quarantined_by_reason``), ``has_fare`` (False: no kept trip has a fare, so
        only the ETA model can be trained), ``trip_files_written`` and ``quarantine_files_written``.

    Raises:
        KeyError: Unknown source or city.
        ValueError: Two different files of the batch have the same name.
        TripFileError: A file cannot be read (named in the message).
        TripSchemaError: A file's columns match none of the source's layouts (file and columns named).
    """
    if source not in IMPORTERS:
        raise KeyError(f"unknown trip source {source!r} (known: {', '.join(IMPORTERS)})")
    importer = IMPORTERS[source]
    target = load_catalog(settings.catalog_path).get(city)
    _check_timezone(target, importer)
    _check_names(files)

    seen: set[str] = set()
    checked: list[tuple[Path, ValidationResult, dict[str, Any]]] = []
    for path in files:
        raw = read_table(path)
        mapped = importer.to_trips(raw.frame, target, path.name)
        period = importer.period_for(path)
        result = validate_trips(mapped.trips, target, str(path), period=period)
        result = with_malformed_lines(_drop_seen(result, seen, str(path)), str(path), raw.malformed)
        checked.append((path, result, _file_report(path, mapped.variant, period, result)))
        log.info("%s: %d rows read, %d kept", path, result.rows_read, result.rows_kept)

    # Everything validated: from here on, write.
    clean = [r.clean for _, r, _ in checked if not r.clean.empty]
    written: list[Path] = []
    if clean:
        written = write_trips(settings.trips_dir, pd.concat(clean), merge=True)
    quarantined: list[str] = []
    # One quarantine per file: a file given twice keeps both reads' rows (the second's are its duplicates).
    by_file: dict[str, list[pd.DataFrame]] = {}
    for path, result, _ in checked:
        by_file.setdefault(_kept_as(path), []).append(result.quarantine)
    for name, parts in by_file.items():
        rows = pd.concat(parts, ignore_index=True) if len(parts) > 1 else parts[0]
        q = write_quarantine(settings.quarantine_dir, target.slug, name, rows)
        for path, _, report in checked:
            if _kept_as(path) == name:
                report["quarantine_file"] = str(q) if q is not None else None
        if q is not None:
            quarantined.append(str(q))

    by_reason: dict[str, int] = {}
    for _, result, _ in checked:
        for reason, n in result.counts.items():
            by_reason[reason] = by_reason.get(reason, 0) + n
    return {
        "source": source,
        "city": target.slug,
        "files": [report for _, _, report in checked],
        "total": {
            "rows_read": sum(r.rows_read for _, r, _ in checked),
            "rows_kept": sum(r.rows_kept for _, r, _ in checked),
            "rows_quarantined": sum(r.rows_quarantined for _, r, _ in checked),
            "quarantined_by_reason": {r: by_reason[r] for r in REASONS if r in by_reason},
        },
        "has_fare": any(_has_fare(r.clean) for _, r, _ in checked),
        "trip_files_written": [str(p) for p in written],
        "quarantine_files_written": quarantined,
    }
