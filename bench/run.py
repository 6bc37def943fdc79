"""Run cityml's benchmarks and update ``bench/RESULTS.md`` (``make bench``).

    python -m bench.run                 # every benchmark at full size (about an hour on 2 cores)
    python -m bench.run --quick         # small sizes: a smoke test of the harness
    python -m bench.run --only pit      # one benchmark; the other sections stay as they are
    python -m bench.run --only fleet    # 10, 100 and 1,000 cities through the real stack (make bench-fleet; hours)
    python -m bench.run --only fleet --resume   # the sizes a stopped fleet run did not finish

Every benchmark owns one section of RESULTS.md (see `bench.report`). To add one, write a module
with a ``run(...) -> Section`` and register it in ``BENCHMARKS`` below; a benchmark that needs the
shared synthetic cityml home asks ``ctx.fixture`` for it (built on first use, once per run).
"""

from __future__ import annotations

import argparse
import logging
import shlex
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import cached_property
from pathlib import Path

from bench import report
from bench.fixture import Fixture, build

log = logging.getLogger("bench")

FULL_ROWS = 1_000_000
QUICK_ROWS = 20_000
FULL_DAYS = 60
QUICK_DAYS = 10


@dataclass
class Context:
    """What a benchmark gets: the command-line arguments and, on demand, the shared fixture."""

    args: argparse.Namespace
    tmp: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="cityml-bench-")))

    @cached_property
    def fixture(self) -> Fixture:
        log.info("building the fixture: 4 cities x %d days under %s", self.args.days, self.tmp)
        return build(self.tmp / "home", self.args.days)


def _pit(ctx: Context) -> report.Section:
    from bench import pit

    a = ctx.args
    return pit.run(ctx.fixture, a.rows, a.quick, a.mem_limit_gb, a.variants)


def _pit_range(ctx: Context) -> report.Section:
    from bench import pit_range

    return pit_range.run(ctx.args.quick)


def _train_sets(ctx: Context) -> report.Section:
    from bench import train_sets

    return train_sets.run(ctx.args.quick)


def _online(ctx: Context) -> report.Section:
    from bench import online

    return online.run(ctx.fixture, ctx.args.quick, ctx.args.redis)


def _throughput(ctx: Context) -> report.Section:
    from bench import throughput

    a = ctx.args
    cities = a.cities or (3 if a.quick else 50)
    sizes = a.trips_per_day or ([300] if a.quick else [300, 3000])
    return throughput.run(cities, days=7 if a.quick else 10, trips_per_day=sizes, workers=a.workers)


def _quality(ctx: Context) -> report.Section:
    from bench import quality

    return quality.run(ctx.args.quick, ctx.args.cities)


def _serve(ctx: Context) -> report.Section:
    from bench import serve

    return serve.run(ctx.args.quick)


def _drift(ctx: Context) -> report.Section:
    from bench import drift

    return drift.run(ctx.args.quick, ctx.tmp)


def _fleet(ctx: Context) -> report.Section:
    from bench import fleet

    a = ctx.args
    sizes = a.fleet_sizes or ([3] if a.quick else list(fleet.SIZES))
    return fleet.run(sizes, days=7 if a.quick else 30, trips_per_day=300, tmp=ctx.tmp, resume=a.resume)


#: key -> benchmark; the key names its RESULTS.md section and its bench/out/<key>.json.
BENCHMARKS: dict[str, Callable[[Context], report.Section]] = {
    "pit": _pit,
    "pit_range": _pit_range,
    "online": _online,
    "throughput": _throughput,
    "train_sets": _train_sets,
    "quality": _quality,
    "serve": _serve,
    "drift": _drift,
    "fleet": _fleet,
}
#: What `make bench` runs without --only: the fleet's hours of runs are `make bench-fleet`.
DEFAULT = [key for key in BENCHMARKS if key != "fleet"]


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, for smoke tests")
    parser.add_argument("--only", action="append", choices=sorted(BENCHMARKS), help="run only these (repeatable)")
    parser.add_argument("--rows", type=int, help=f"entity rows of the PIT join (default {FULL_ROWS:,}; quick 20k)")
    parser.add_argument("--days", type=int, help=f"days of synthetic trips per city (default {FULL_DAYS}; quick 10)")
    parser.add_argument("--variants", type=lambda s: s.split(","), help="PIT: only these variant keys (comma list)")
    parser.add_argument("--mem-limit-gb", type=float, default=8.0, help="PIT: stop a worker past this RSS")
    parser.add_argument("--redis", default="127.0.0.1:6379", help="Redis host:port for the online benchmark")
    parser.add_argument(
        "--cities", type=int, help="throughput: synthetic cities (default 50; quick 3); quality: per size (default 8)"
    )
    parser.add_argument(
        "--trips-per-day",
        type=lambda s: [int(n) for n in s.split(",")],
        help="throughput: city sizes to measure, trips a day for 10 days (default 300,3000; quick 300)",
    )
    parser.add_argument(
        "--workers",
        type=lambda s: [int(w) for w in s.split(",")],
        default=[2],
        help="throughput: worker counts to compare, e.g. 1,2 (default 2)",
    )
    parser.add_argument(
        "--fleet-sizes",
        type=lambda s: [int(n) for n in s.split(",")],
        help="fleet: numbers of cities to measure (default 10,100,1000; quick 3)",
    )
    parser.add_argument(
        "--resume",
        action="store_true",
        help="fleet: reuse the sizes a stopped run saved (bench/fleet-rows/fleet-<n>.json), measure the others",
    )
    parser.add_argument("--results", type=Path, default=report.RESULTS, help="markdown file to update")
    parser.add_argument("--out-dir", type=Path, default=report.OUT_DIR, help="raw JSON folder")
    parser.add_argument("--keep", action="store_true", help="keep the temporary cityml home (prints its path)")
    args = parser.parse_args(argv)
    args.rows = args.rows or (QUICK_ROWS if args.quick else FULL_ROWS)
    args.days = args.days or (QUICK_DAYS if args.quick else FULL_DAYS)
    return args


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    args = parse(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s", datefmt="%H:%M:%S")
    for noisy in ("feast", "cityml", "httpx"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    command = shlex.join(["python", "-m", "bench.run", *argv])
    ctx = Context(args)
    failures: list[str] = []
    try:
        for key in args.only or DEFAULT:
            started = datetime.now(UTC)
            machine = report.machine()
            t0 = time.perf_counter()
            section = BENCHMARKS[key](ctx)
            section.body = report.run_line(machine, command, started) + "\n\n" + section.body
            report.write_section(section, args.results)
            meta: dict[str, object] = {"command": command, "started": started.isoformat(), "machine": machine}
            meta["seconds"] = round(time.perf_counter() - t0, 1)
            path = report.write_raw(section, meta, args.out_dir)
            log.info("%s: section written to %s, raw numbers to %s", key, args.results, path)
            failures += section.failures
    finally:
        if args.keep:
            log.info("kept %s", ctx.tmp)
        else:
            shutil.rmtree(ctx.tmp, ignore_errors=True)
    if failures:
        sys.exit("FAILED:\n" + "\n".join(failures))


if __name__ == "__main__":
    main()
