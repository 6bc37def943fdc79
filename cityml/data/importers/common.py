"""What the trip importers share: reading a file, matching column variants, parsing times and numbers."""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from cityml.data.validation import TripSchemaError

MILE_KM = 1.609344
# Formats tried, in order, for timestamps given as text. The second is the Socrata data portals' export format
# (Chicago's "Taxi Trips", older NYC exports).
ISO = "ISO8601"
PORTAL_FORMAT = "%m/%d/%Y %I:%M:%S %p"
_EPOCH = pd.Timestamp("1970-01-01", tz="UTC")


class TripFileError(ValueError):
    """A file that cannot be read as a table; the message names the file."""


class Mapped(NamedTuple):
    """A source file mapped to canonical trip rows."""

    trips: pd.DataFrame
    variant: str


@dataclass(frozen=True)
class Variant:
    """One public column layout of a source.

    Attributes:
        name: Short name reported back (e.g. ``"tlc"``).
        required: Role -> accepted column names (any one of them), matched case-insensitively.
        optional: Same, for roles that may be absent (e.g. a fare).
        any_of: Groups of optional roles of which the file must hold at least one whole group (e.g. the zones, or
            the coordinates); empty when the required roles are enough.
    """

    name: str
    required: dict[str, tuple[str, ...]]
    optional: dict[str, tuple[str, ...]] = field(default_factory=dict)
    any_of: tuple[tuple[str, ...], ...] = ()

    def missing(self, columns: dict[str, str]) -> list[str]:
        def has(names: tuple[str, ...]) -> bool:
            return any(n.lower() in columns for n in names)

        lacks = ["/".join(names) for names in self.required.values() if not has(names)]
        if self.any_of and not any(all(has(self.optional[role]) for role in group) for group in self.any_of):
            groups = ("+".join("/".join(self.optional[role]) for role in group) for group in self.any_of)
            lacks.append(" or ".join(groups))
        return lacks

    def resolve(self, columns: dict[str, str]) -> dict[str, str]:
        """Role -> actual column name in the file, for the roles the file has."""
        out = {}
        for role, names in {**self.required, **self.optional}.items():
            for n in names:
                if n.lower() in columns:
                    out[role] = columns[n.lower()]
                    break
        return out


def _key(column: object) -> str:
    return " ".join(str(column).split()).lower()


def match_variant(raw: pd.DataFrame, variants: list[Variant], source: str, what: str) -> tuple[Variant, dict[str, str]]:
    """The first variant whose required columns the file has, with role -> column.

    Raises:
        TripSchemaError: No variant matches; the message names the file and what each variant lacks.
    """
    columns = {_key(c): str(c) for c in raw.columns}
    keys = [_key(c) for c in raw.columns]
    twice = {k for k in keys if keys.count(k) > 1}
    lacks = []
    for variant in variants:
        missing = variant.missing(columns)
        if not missing:
            resolved = variant.resolve(columns)
            # A column the layout reads, named twice: which one holds the values? (Unread ones may repeat:
            # a spreadsheet's empty trailing headers.)
            ambiguous = sorted(name for name in resolved.values() if _key(name) in twice)
            if ambiguous:
                raise TripSchemaError(f"{source}: column {', '.join(map(repr, ambiguous))} appears more than once")
            return variant, resolved
        lacks.append(f"{variant.name} variant lacks {', '.join(missing)}")
    raise TripSchemaError(f"{source}: columns match no {what} layout ({'; '.join(lacks)})")


class RawFile(NamedTuple):
    """A source file as read: its rows, and the CSV lines that did not parse.

    Attributes:
        frame: The rows, columns as named in the file.
        malformed: (line number in the file, the line's text) of every line with a wrong number of fields; such a
            line is quarantined on its own, the rest of the file is kept.
    """

    frame: pd.DataFrame
    malformed: list[tuple[int | None, str]]


LARGE_BLOCK = 64 << 20  # the parse block of a second try: a field up to this long is read

#: A file where more than this share of the lines do not parse is not a CSV of any layout: refused whole.
MAX_MALFORMED_SHARE = 0.5


def _read_csv(path: Path) -> RawFile:
    """A CSV (compressed or not) through Arrow's parser, single-threaded so that every bad line has its number."""
    import pyarrow.csv as pcsv
    from pandas.io.common import get_handle

    def parse(
        source: Any, names: list[str] | None = None, block: int = 1 << 20
    ) -> tuple[pa.Table, list[tuple[int | None, str]]]:
        malformed: list[tuple[int | None, str]] = []

        def bad_line(row: pcsv.InvalidRow) -> str:
            malformed.append((row.number, row.text))
            return "skip"

        table = pcsv.read_csv(
            source,
            read_options=pcsv.ReadOptions(use_threads=False, column_names=names, block_size=block),
            parse_options=pcsv.ParseOptions(invalid_row_handler=bad_line, newlines_in_values=True),
            # Empty fields are missing values, in text columns too, as pandas reads them.
            convert_options=pcsv.ConvertOptions(strings_can_be_null=True),
        )
        return table, malformed

    try:
        if path.suffix.lower() in (".zip", ".xz"):  # compressions Arrow does not read itself
            with get_handle(path, "rb", compression="infer", is_text=False) as handle:
                table, malformed = parse(pa.py_buffer(handle.handle.read()))
        else:  # plain, or gzip/bz2/zstd/lz4, which Arrow infers from the suffix
            table, malformed = parse(str(path))
    except pa.ArrowInvalid:
        # Once more, from text made whole: a bad line whose bytes are not UTF-8 cannot be handed to the bad-line
        # handler (Arrow fails decoding it first), and a field longer than a parse block (1 MB) straddles two.
        # Invalid bytes become U+FFFD; blocks are 64 MB. A file this does not help is refused as before.
        with get_handle(path, "rb", compression="infer", is_text=False) as handle:
            text = handle.handle.read().decode("utf-8", errors="replace").encode()
        table, malformed = parse(pa.py_buffer(text), block=LARGE_BLOCK)
    tables = [table]
    i = 0
    while i < len(malformed):
        number, text = malformed[i]
        line, newline, rest = text.partition("\n")
        if newline and number is not None and rest.strip() and text.count('"') % 2:
            # A quote never closed (an odd count: a bad row that merely holds a quoted line break has an even
            # one) ran on to the end of the file as one bad "line": that line alone is bad, the lines after it
            # are read again (their own bad lines join the list, and are looked at too).
            malformed[i] = (number, line)
            more, later = parse(pa.py_buffer(rest.encode()), table.column_names)
            tables.append(more)
            malformed += [(n + number if n is not None else None, t) for n, t in later]
        i += 1
    frame = pd.concat([t.to_pandas() for t in tables], ignore_index=True) if len(tables) > 1 else table.to_pandas()
    if malformed and len(malformed) > MAX_MALFORMED_SHARE * (len(frame) + len(malformed)):
        first = malformed[0]
        raise TripFileError(
            f"{path}: {len(malformed)} of {len(frame) + len(malformed)} lines do not parse as CSV rows of its header "
            f"(line {first[0]}: {first[1][:80]!r})"
        )
    return RawFile(frame, malformed)


def read_table(path: Path) -> RawFile:
    """A CSV (optionally compressed) or parquet file as a frame, with the CSV lines that did not parse.

    Raises:
        TripFileError: The file is missing, empty or not a readable table, or most of its lines do not parse.
    """
    name = path.name.lower()
    try:
        if name.endswith((".parquet", ".pq")):
            return RawFile(pq.read_table(path).to_pandas(), [])
        # Everything else is taken as CSV; gzip/zip/bz2/xz/zstd are inferred from the suffix.
        return _read_csv(path)
    except FileNotFoundError as exc:
        raise TripFileError(f"{path}: file not found") from exc
    except TripFileError:
        raise
    except (OSError, ValueError, UnicodeDecodeError, pa.ArrowInvalid) as exc:
        if "Empty CSV file" in str(exc):
            raise TripFileError(f"{path}: file is empty") from exc
        raise TripFileError(f"{path}: cannot read as {'parquet' if 'parq' in name else 'CSV'}: {exc}") from exc


#: Text that says "no value" in exported tables: read as missing, not as a value that failed to parse.
MISSING_TEXT = frozenset({"", "nan", "na", "n/a", "#n/a", "null", "none", "nil", "-", "--"})


def numbers(s: pd.Series, unparsed: float = np.nan) -> pd.Series:
    """Floats from a column that may hold text such as ``"$1,234.50"`` (portal exports format numbers).

    ``unparsed``: what a value written but not a number (``abc``, ``=1+1``) becomes; missing by default.
    """
    if pd.api.types.is_numeric_dtype(s) and not pd.api.types.is_bool_dtype(s):
        return s.astype("float64")
    text = s.astype("string").str.replace(r"[\s$,]", "", regex=True)
    values = pd.to_numeric(text, errors="coerce").astype("float64")
    if not np.isnan(unparsed):
        written = text.notna() & ~text.str.lower().isin(MISSING_TEXT).fillna(False).astype(bool)
        values = values.mask(written & values.isna(), unparsed)
    return values


#: A fare written but not a number: infinite, which the fare check quarantines (as ``fare``), where reading it as
#: missing would keep the trip as one without a fare, and a file of them as one with no fares at all.
UNPARSED_FARE = np.inf


def zone_ids(s: pd.Series, unknown: frozenset[str] = frozenset()) -> pd.Series:
    """Integer-valued zone ids as strings (``8.0`` -> ``"8"``); missing, non-integer or ``unknown`` ids -> None."""
    values = numbers(s)
    # Beyond 2**53 a float is no exact integer, nor an id of any zone table (and would not fit an Int64).
    whole = values.notna() & (values.abs() < 2.0**53) & (values == values.round())
    text = values.where(whole).astype("Int64").astype("string")
    text = text.where(~text.isin(list(unknown)))
    return text.astype(object).where(text.notna(), None)


#: A time written with its offset (``Z``, ``+01:00``, ``-0500``): placed by it, not read as the source's clock.
_OFFSET = r"\d{2}:\d{2}(?::\d{2}(?:\.\d+)?)?\s?(?:Z|[+-]\d{2}(?::?\d{2})?)$"  # after a time: 2023-01-15 has none
_EARLIEST, _LATEST = pd.Timestamp("1678-01-01"), pd.Timestamp("2261-12-31")  # what nanosecond timestamps hold


def utc_times(s: pd.Series, tz: str, formats: tuple[str, ...] = (ISO, PORTAL_FORMAT)) -> pd.Series:
    """UTC timestamps from a column of datetimes or text, naive ones read as wall-clock times in ``tz``.

    Text is tried against ``formats`` in order; a value written with an offset is placed by its offset, whatever
    the other rows hold. What nothing parses, or what lies outside what a timestamp holds (a reader's year 9999),
    becomes NaT: that row is quarantined, the file is not refused for it.
    """
    if isinstance(s.dtype, pd.DatetimeTZDtype) or pd.api.types.is_datetime64_dtype(s):
        return local_to_utc(in_time_range(s), tz)
    text = s.astype("string").str.strip()
    aware = text.str.contains(_OFFSET, regex=True, na=False)
    local = pd.Series(pd.NaT, index=s.index, dtype="datetime64[ns]")
    for fmt in formats:
        todo = local.isna() & text.notna() & ~aware
        if not todo.any():
            break
        local.loc[todo] = pd.to_datetime(text[todo], format=fmt, errors="coerce")
    out = local_to_utc(local, tz).copy()  # a .dt result: writes into it would be discarded
    if aware.any():
        out.loc[aware] = pd.to_datetime(text[aware], format=ISO, utc=True, errors="coerce")
    return out


def in_time_range(s: pd.Series) -> pd.Series:
    """Datetimes (a parquet or CSV reader's, at any unit) as nanosecond ones; NaT where they cannot be."""
    if s.dt.unit == "ns":
        return s
    aware = isinstance(s.dtype, pd.DatetimeTZDtype)
    lo, hi = (_EARLIEST.tz_localize("UTC"), _LATEST.tz_localize("UTC")) if aware else (_EARLIEST, _LATEST)
    return s.where((s >= lo) & (s <= hi)).dt.as_unit("ns")


def local_to_utc(ts: pd.Series, tz: str) -> pd.Series:
    """Local wall-clock times in ``tz`` to UTC.

    The hour repeated when clocks go back cannot be placed, so it becomes NaT (and the row is quarantined as a bad
    pickup time); times in the hour skipped when clocks go forward are moved to its end.
    """
    if isinstance(ts.dtype, pd.DatetimeTZDtype):
        return ts.dt.tz_convert("UTC")
    return ts.dt.tz_localize(tz, ambiguous="NaT", nonexistent="shift_forward").dt.tz_convert("UTC")


def content_ids(prefix: str, parts: dict[str, pd.Series]) -> pd.Series:
    """Deterministic trip ids ``<prefix>-<hash of the row's values>`` for sources without ids or a stable row order.

    The same row gets the same id whichever file or position it comes from, so importing it again replaces the
    trip instead of doubling it; rows differing in any part get different ids (80-bit hash). Pass parsed values
    (floats, UTC times, zone strings) rather than raw text, so ``780`` and ``780.0`` are the same value.

    Args:
        prefix: Source prefix, e.g. ``"chi"``.
        parts: Name -> column of values, all on one index. Floats and times are hashed as little-endian float64
            bytes (far faster than formatting them), everything else as text; missing values count as empty.
    """
    index = next(iter(parts.values())).index
    floats, texts = [], [pd.Series("", index=index, dtype="string")]
    for values in parts.values():
        if isinstance(values.dtype, pd.DatetimeTZDtype):
            values = (values.dt.tz_convert("UTC") - _EPOCH).dt.total_seconds()
        if pd.api.types.is_float_dtype(values):
            floats.append(values.to_numpy(dtype="<f8"))
        else:
            texts.append(values.astype("string").fillna(""))
    grid = np.column_stack(floats).astype("<f8") + 0.0 if floats else np.zeros((len(index), 0), "<f8")  # -0.0 -> 0.0
    grid[np.isnan(grid)] = np.nan  # one NaN bit pattern
    packed = np.ascontiguousarray(grid).view(np.dtype((np.void, 8 * grid.shape[1]))).ravel().tolist()
    # Text parts joined by a byte no value holds, so ("1", "23") and ("12", "3") differ; the packed floats have a
    # fixed length, so they cannot run into the text either.
    text = texts[0].str.cat(texts[1:], sep="\x1f")
    digests = [
        hashlib.blake2b(t.encode() + b"\x1f" + f, digest_size=10).hexdigest() for t, f in zip(text, packed, strict=True)
    ]
    return pd.Series([f"{prefix}-{d}" for d in digests], index=index, dtype=object)


_MONTH = re.compile(r"(?<!\d)(20\d\d)-(0[1-9]|1[0-2])(?![-\d])")


def month_period(name: str, tz: str, slack: timedelta = timedelta(days=1)) -> tuple[pd.Timestamp, pd.Timestamp] | None:
    """The UTC window a monthly file covers, from a ``YYYY-MM`` in its name (``yellow_tripdata_2019-03.parquet``).

    Monthly files hold trips that straddle the month's edges, so ``slack`` is allowed on both sides. None when the
    name carries no month.
    """
    found = _MONTH.search(Path(name).name)
    if found is None:
        return None
    start = pd.Timestamp(int(found[1]), int(found[2]), 1).tz_localize(tz)
    end = start + pd.DateOffset(months=1)
    return (start - slack).tz_convert("UTC"), (end + slack).tz_convert("UTC")
