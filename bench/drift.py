"""Drift detection against Evidently's ``DataDriftPreset`` on the same tables, in the same run.

500,000 reference and 500,000 current rows x 12 columns: 10 numeric (3 of them shifted by half a standard
deviation) and 2 categorical (one re-weighted). cityml builds its reference profile (what training saves with a
model) and scores the current rows against it; Evidently computes its preset from the two raw tables, in a venv of
its own (it needs an older pandas than cityml's), created on first use under ``~/.cache/cityml``. Both are timed
in-process on frames already in memory, best of ``REPEATS``; the verdicts of both are listed per column.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from bench.report import Section, table

ROWS = 500_000
QUICK_ROWS = 20_000
REPEATS = 3
SHIFTED = ("x0", "x1", "x2")
REWEIGHTED = "zone"
EVIDENTLY = ("evidently==0.7.23", "pandas==2.2.3")
VENV = Path.home() / ".cache" / "cityml" / "bench-evidently-venv"

_EVIDENTLY_SCRIPT = """
import json, sys, time
import pandas as pd
from evidently import DataDefinition, Dataset, Report
from evidently.presets import DataDriftPreset

ref, cur = pd.read_parquet(sys.argv[1]), pd.read_parquet(sys.argv[2])
categorical = [c for c in ref.columns if ref[c].dtype == object]
definition = DataDefinition(
    numerical_columns=[c for c in ref.columns if c not in categorical], categorical_columns=categorical
)
best, snapshot = float("inf"), None
for _ in range(int(sys.argv[3])):
    started = time.perf_counter()
    snapshot = Report([DataDriftPreset()]).run(
        Dataset.from_pandas(cur, data_definition=definition), Dataset.from_pandas(ref, data_definition=definition)
    )
    best = min(best, time.perf_counter() - started)
columns = {}
for metric in snapshot.dict()["metrics"]:
    config = metric["config"]
    if config.get("type", "").endswith("ValueDrift"):
        columns[config["column"]] = {
            "method": config["method"], "score": metric["value"], "threshold": config["threshold"]
        }
print(json.dumps({"seconds": best, "columns": columns}))
"""


def tables(rows: int, seed: int = 0) -> tuple[pd.DataFrame, pd.DataFrame]:
    rng = np.random.default_rng(seed)

    def one(shifted: bool) -> pd.DataFrame:
        cols: dict[str, Any] = {}
        for i in range(10):
            name = f"x{i}"
            base = rng.lognormal(1, 0.5, rows) if i % 2 else rng.normal(10 * i, 1 + i, rows)
            sd = float(np.std(base))
            cols[name] = base + (0.5 * sd if shifted and name in SHIFTED else 0.0)
        weights = [0.2, 0.2, 0.3, 0.3] if shifted else [0.4, 0.3, 0.2, 0.1]
        cols[REWEIGHTED] = rng.choice(["a", "b", "c", "d"], rows, p=weights)
        cols["city"] = rng.choice(["lisbon", "porto", "faro"], rows, p=[0.5, 0.3, 0.2])
        return pd.DataFrame(cols)

    return one(False), one(True)


def _cityml(ref: pd.DataFrame, cur: pd.DataFrame) -> tuple[float, float, dict[str, dict[str, Any]]]:
    from cityml.profile import build_profile
    from monitoring.drift import feature_scores

    best_profile = best_score = float("inf")
    scores: dict[str, dict[str, Any]] = {}
    for _ in range(REPEATS):
        started = time.perf_counter()
        profile = build_profile(ref, np.zeros(len(ref)))
        profiled = time.perf_counter()
        scores = feature_scores(profile, cur, "auto")
        best_profile = min(best_profile, profiled - started)
        best_score = min(best_score, time.perf_counter() - profiled)
    return best_profile, best_score, scores


def _venv() -> Path:
    python = VENV / "bin" / "python"
    if not python.exists():
        subprocess.run([shutil.which("python3") or "python3", "-m", "venv", str(VENV)], check=True)
        subprocess.run([str(VENV / "bin" / "pip"), "install", "--quiet", *EVIDENTLY], check=True)
    return python


def _evidently(ref_path: Path, cur_path: Path) -> dict[str, Any]:
    out = subprocess.run(
        [str(_venv()), "-c", _EVIDENTLY_SCRIPT, str(ref_path), str(cur_path), str(REPEATS)],
        capture_output=True,
        text=True,
        check=True,
    )
    result: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def _cli(ref_path: Path, cur_path: Path) -> float:
    started = time.perf_counter()
    subprocess.run(
        [shutil.which("cityml") or "cityml", "drift", "compare", str(ref_path), str(cur_path), "--json"],
        capture_output=True,
        check=True,
    )
    return time.perf_counter() - started


def run(quick: bool, tmp: Path) -> Section:
    rows = QUICK_ROWS if quick else ROWS
    ref, cur = tables(rows)
    ref_path, cur_path = tmp / "drift-ref.parquet", tmp / "drift-cur.parquet"
    ref.to_parquet(ref_path)
    cur.to_parquet(cur_path)

    profile_s, score_s, ours = _cityml(ref, cur)
    theirs = _evidently(ref_path, cur_path)
    cli_s = _cli(ref_path, cur_path)
    ours_s = profile_s + score_s
    ratio = theirs["seconds"] / ours_s

    expected = {*SHIFTED, REWEIGHTED}
    ours_drifted = {c for c, s in ours.items() if s["verdict"] == "drift"}
    theirs_drifted = {c for c, s in theirs["columns"].items() if s["score"] >= s["threshold"]}
    timing = table(
        ["what", "seconds", "vs Evidently"],
        [
            ["Evidently `DataDriftPreset` (from both raw tables)", round(theirs["seconds"], 3), "1.0x"],
            [
                "cityml: reference profile + scores (from the raw tables, like Evidently)",
                round(ours_s, 3),
                f"**{ratio:.1f}x faster**",
            ],
            [
                "cityml: scores only (the profile is saved with the model at training)",
                round(score_s, 3),
                f"{theirs['seconds'] / score_s:.1f}x faster",
            ],
            [
                "`cityml drift compare REF CUR --json` (process start, parquet reads, all of it)",
                round(cli_s, 3),
                f"{theirs['seconds'] / cli_s:.1f}x faster",
            ],
        ],
    )
    verdicts = table(
        [
            "column",
            "moved",
            "cityml method",
            "cityml score",
            "cityml verdict",
            "Evidently method",
            "Evidently score",
            "Evidently verdict",
        ],
        [
            [
                col,
                "yes" if col in expected else "no",
                ours[col]["method"],
                ours[col]["score"],
                ours[col]["verdict"],
                theirs["columns"][col]["method"],
                round(theirs["columns"][col]["score"], 4),
                "drift" if col in theirs_drifted else "stable",
            ]
            for col in ref.columns
        ],
    )
    agree = ours_drifted == theirs_drifted == expected
    failures = [] if agree else [f"drift: cityml flagged {sorted(ours_drifted)}, Evidently {sorted(theirs_drifted)}"]
    if not quick and ratio < 20:
        failures.append(f"drift: cityml is {ratio:.1f}x Evidently's speed, the goal is 20x")
    body = (
        f"{rows:,} reference and {rows:,} current rows x 12 columns (10 numeric, {', '.join(SHIFTED)} shifted by 0.5 "
        f"sd; 2 categorical, `{REWEIGHTED}` re-weighted). Best of {REPEATS}, frames in memory. Evidently "
        f"{EVIDENTLY[0].split('==')[1]} with pandas {EVIDENTLY[1].split('==')[1]} in its own venv; cityml with "
        f"`method=auto`, which judges as the preset does (Wasserstein / Jensen-Shannon at 0.1 past 1,000 rows).\n\n"
        f"{timing}\n\n{verdicts}\n\n"
        f"Flagged as drift: cityml {sorted(ours_drifted)}, Evidently {sorted(theirs_drifted)}: "
        f"{'the same columns, the ones that moved' if agree else 'they differ'}."
    )
    raw = {
        "rows": rows,
        "evidently_s": theirs["seconds"],
        "cityml_profile_s": profile_s,
        "cityml_score_s": score_s,
        "cli_s": cli_s,
        "ratio": ratio,
        "cityml": ours,
        "evidently": theirs["columns"],
    }
    return Section("drift", "Drift detection vs Evidently", body, raw, failures)
