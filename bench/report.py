"""``bench/RESULTS.md`` with one section per benchmark, plus raw JSON under ``bench/out/``.

Each benchmark owns the text between ``<!-- bench:<key> -->`` and ``<!-- /bench:<key> -->``.
Writing a section replaces only that block, so ``python -m bench.run --only pit`` keeps the
online numbers (and any section another benchmark added) as they were. A new key is appended.
"""

from __future__ import annotations

import fcntl
import json
import os
import platform
import re
import resource
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
RESULTS = BENCH_DIR / "RESULTS.md"
OUT_DIR = BENCH_DIR / "out"

HEADER = """# cityml benchmarks

Written by `make bench` (`python -m bench.run`). Each `##` section belongs to one benchmark and
says when, on what machine and with which command it was measured; `python -m bench.run --only <key>`
rewrites that section only. Raw numbers of the last run are in `bench/out/<key>.json` (not committed).
"""

_BLOCK = re.compile(r"<!-- bench:(?P<key>[\w-]+) -->\n.*?<!-- /bench:(?P=key) -->\n?", re.S)
_PACKAGES = ("feast", "duckdb", "ibis-framework", "dask", "pandas", "pyarrow", "redis")


@dataclass
class Section:
    """What a benchmark hands back: its markdown (under one ``##`` title) and its raw numbers."""

    key: str
    title: str
    body: str
    raw: dict[str, Any] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)  # checks that failed: the run exits non-zero


def machine() -> dict[str, Any]:
    """CPU count and model, RAM, load and package versions: what a number needs to be compared."""
    info = _proc_kv(Path("/proc/cpuinfo"))
    mem = _proc_kv(Path("/proc/meminfo"))
    ram_kb = int(mem.get("MemTotal", "0 kB").split()[0])
    versions: dict[str, str | None] = {}
    for name in _PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return {
        "nproc": len(os.sched_getaffinity(0)),
        "cpu_model": info.get("model name", platform.processor() or "unknown"),
        "ram_gib": round(ram_kb / 2**20, 1),
        "loadavg_1m": round(os.getloadavg()[0], 2),
        "python": platform.python_version(),
        "versions": versions,
    }


def busy_cpu_s() -> float:
    """CPU seconds all processes of the machine have used (user, system, interrupts)."""
    import psutil

    t = psutil.cpu_times()
    return t.user + t.nice + t.system + getattr(t, "irq", 0.0) + getattr(t, "softirq", 0.0)


def own_cpu_s() -> float:
    """CPU seconds of this process and of its children that have finished."""
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def _proc_kv(path: Path) -> dict[str, str]:
    """First value of each ``key: value`` line of a /proc file (empty where there is none)."""
    out: dict[str, str] = {}
    if not path.exists():
        return out
    for line in path.read_text().splitlines():
        key, sep, value = line.partition(":")
        if sep and key.strip() not in out:
            out[key.strip()] = value.strip()
    return out


def run_line(m: dict[str, Any], command: str, started: datetime) -> str:
    """The line under a section title: date, machine, command."""
    v = m["versions"]
    return (
        f"_Measured {started:%Y-%m-%d %H:%M} UTC on {m['nproc']} CPUs ({m['cpu_model']}), {m['ram_gib']} GiB RAM, "
        f"load average {m['loadavg_1m']} at start; Python {m['python']}, Feast {v['feast']}, DuckDB {v['duckdb']}. "
        f"Command: `{command}`._"
    )


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A markdown table; numbers right-aligned."""
    align = ["---:" if rows and isinstance(rows[0][i], int | float) else "---" for i in range(len(headers))]
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join(align) + "|"]
    lines += ["| " + " | ".join(_cell(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def _cell(value: Any) -> str:
    if value is None:
        return "—"
    if isinstance(value, float):
        return f"{value:,.3g}" if abs(value) < 100 else f"{value:,.0f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value).replace("|", "\\|")


def write_section(section: Section, path: Path = RESULTS) -> None:
    """Replace (or append) ``section``'s block in ``path``, leaving every other block as it was."""
    block = (
        f"<!-- bench:{section.key} -->\n## {section.title}\n\n{section.body.strip()}\n<!-- /bench:{section.key} -->\n"
    )
    # Two runs (say, --only pit and --only throughput) may finish together: one at a time.
    with path.with_name(f".{path.name}.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        text = path.read_text() if path.exists() else HEADER
        blocks = {m["key"]: m for m in _BLOCK.finditer(text)}
        if section.key in blocks:
            m = blocks[section.key]
            text = text[: m.start()] + block + text[m.end() :]
        else:
            text = text.rstrip("\n") + "\n\n" + block
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_text(text)
        tmp.replace(path)


def write_raw(section: Section, meta: dict[str, Any], out_dir: Path = OUT_DIR) -> Path:
    """``out/<key>.json`` (the last run) and a time-stamped copy."""
    out_dir.mkdir(parents=True, exist_ok=True)
    doc = {**meta, "section": section.key, "results": section.raw}
    payload = json.dumps(doc, indent=2, default=str)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    (out_dir / f"{section.key}-{stamp}.json").write_text(payload)
    latest = out_dir / f"{section.key}.json"
    latest.write_text(payload)
    return latest
