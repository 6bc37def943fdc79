"""``cityml demo --drift-scenario``: one city's traffic slows, the monitoring loop notices and retrains only that city.

The story, every stage a real process as in ``cityml demo``:

1. Trips for the cities, where the first city's central zones slow to 70% of their speed from the first day of
   the last week (``cityml data generate --slow-city``); the other cities stay as they were.
2. ``retrain_city_models`` (Airflow) trains every city on the trips before that day.
3. The server answers the week's first four days of traffic; the first city's live zone features and its realized
   errors move.
4. ``cityml drift --request`` (what ``monitor_drift`` runs): drift and realized accuracy flag the city, say why,
   start its cooldown; ``retrain_city_models`` (Airflow) runs with the conf the drift job asks for.
5. A new server answers the last three days; the drift job runs again: the new champion serves, its realized
   error is back near its test error, and the city is cooling down instead of being retrained again.

The terminal gets a before/after table; ``<home>/demo/scenario.json`` keeps what the test asserts on, and the
drift report (HTML) shows the realized MAE of both versions day by day.
"""

from __future__ import annotations

import json
import sys
from collections import defaultdict
from datetime import UTC, datetime, timedelta
from typing import Any

import pandas as pd

from cityml.cli.demo import Runner, StageFailed, say, serve_and_replay
from cityml.naming import split_model_name
from cityml.prediction_log import read_predictions
from cityml.settings import Settings

LIVE_DAYS = 7
BEFORE_DAYS = 4  # live days served by the first champions before the drift job looks
SHARE = 0.3  # of each hour's trips sent as requests: ~130 a day in a small city, enough to judge a day


def _champions(runner: Runner) -> dict[str, str | None]:
    fleet = json.loads(runner.run("models", "cityml", "models", "list", "--json"))
    return {f"{r['target']}-{r['city']}": r["champion_version"] for r in fleet}


def _served(settings: Settings, slugs: list[str], since: datetime) -> dict[str, list[str]]:
    """Which versions answered each city's requests since a time, from the prediction log."""
    served: dict[str, set[str]] = defaultdict(set)
    for city in slugs:
        for r in read_predictions(settings.predictions_dir, city, since=since):
            served[f"{r['target']}-{city}"].add(f"{r['model']} v{r['version']}")
    return {k: sorted(v) for k, v in served.items()}


def _ratios(report: dict[str, Any], model: str, days: list[str]) -> float | None:
    """Mean realized / test MAE of a model over some days (any version)."""
    values = [
        d["ratio"]
        for d in report["accuracy"]["days"]
        if f"{d['target']}-{d['city']}" == model and d["day"] in days and d["ratio"] is not None
    ]
    return sum(values) / len(values) if values else None


def run_scenario(settings: Settings, runner: Runner, slugs: list[str], days: int, port: int, key: str) -> int:
    """Run the scenario, print its table, write ``scenario.json``; 0 when only the slowed city was flagged and
    retrained and its new champion served."""
    if len(slugs) < 2:
        print("the drift scenario needs 2 cities or more: one slows, the others show it is only that one")
        return 2
    city, cities = slugs[0], ",".join(slugs)
    end = datetime.now(UTC).date()
    slowed = end - timedelta(days=LIVE_DAYS)
    start = pd.Timestamp(slowed, tz="UTC")
    middle, stop = start + pd.Timedelta(days=BEFORE_DAYS), pd.Timestamp(end, tz="UTC")
    before_days = [d.date().isoformat() for d in pd.date_range(start, middle, inclusive="left")]
    after_days = [d.date().isoformat() for d in pd.date_range(middle, stop, inclusive="left")]
    try:
        gen = json.loads(
            runner.run(
                "generate",
                "cityml",
                "data",
                "generate",
                "--cities",
                cities,
                "--days",
                str(days),
                "--end",
                end.isoformat(),
                "--slow-city",
                city,
                "--slow-from",
                slowed.isoformat(),
                "--json",
            )
        )
        say(f"{city} slows to 70% in zones {', '.join(gen['slowdown']['zones'])} from {slowed}")
        runner.run("apply", "cityml", "features", "apply")
        runner.run("materialize", "cityml", "features", "materialize", "--end", start.isoformat())
        runner.run("airflow-db", "airflow", "db", "migrate")
        first_conf = {"cities": slugs, "until": slowed.isoformat()}
        runner.run("retrain-dag", "airflow", "dags", "test", "retrain_city_models", "-c", json.dumps(first_conf))
        champions_before = _champions(runner)
        serve_and_replay(runner, settings, slugs, port, key, (start, middle), share=SHARE, stage="serve-before")
        before = json.loads(runner.run("drift-before", "cityml", "drift", "--cities", cities, "--request", "--json"))
        conf = {**before["retrain_conf"], "until": middle.isoformat()}
        if before["retrain"]:
            say(f"drift job asks to retrain {conf['cities']}: {conf['reason']}")
            runner.run("retrain-drift", "airflow", "dags", "test", "retrain_city_models", "-c", json.dumps(conf))
        champions_after = _champions(runner)
        after_started = datetime.now(UTC)
        serve_and_replay(runner, settings, slugs, port, key, (middle, stop), share=SHARE, stage="serve-after")
        served_after = _served(settings, slugs, after_started)
        after = json.loads(runner.run("drift-after", "cityml", "drift", "--cities", cities, "--request", "--json"))
    except StageFailed as exc:
        print(str(exc), file=sys.stderr)
        return 1

    verdicts = {(m["city"], m["target"]): m["verdict"] for m in before["models"]}
    verdicts_after = {(m["city"], m["target"]): m["verdict"] for m in after["models"]}
    changed = sorted(m for m in champions_after if champions_after[m] != champions_before.get(m))
    own_changed = [m for m in changed if m.endswith(f"-{city}")]
    others_changed = [m for m in changed if not m.endswith(f"-{city}") and not m.endswith("-global")]
    new_served = all(
        served_after.get(m) == [f"{m} v{champions_after[m]}"] for m in own_changed
    )  # the new champion answered every request of the last days
    summary = {
        "city": city,
        "slowdown": gen["slowdown"],
        "flagged_before": before["flagged"],
        "reasons": before["reasons"],
        "retrain_conf": conf if before["retrain"] else None,
        "champions_before": champions_before,
        "champions_after": champions_after,
        "served_after": served_after,
        "flagged_after": after["flagged"],
        "retrain_after": after["retrain"],
        "cooling_down_after": sorted(after["cooling_down"]),
        "realized": after["accuracy"]["days"],
        "report": after["html_path"],
    }
    (runner.logs / "scenario.json").write_text(json.dumps(summary, indent=2, default=str))

    print(
        f"\n{'model':<18} {'champion':>12} {'drift before':>13} {'realized/test before':>21} "
        f"{'realized/test after':>20} {'drift after':>12}"
    )
    for model in sorted(m for m in champions_before if not m.endswith("-global")):
        target, c = split_model_name(model)
        versions = f"v{champions_before[model]}" + (
            f" -> v{champions_after[model]}" if champions_after.get(model) != champions_before[model] else ""
        )
        r0, r1 = _ratios(after, model, before_days), _ratios(after, model, after_days)
        print(
            f"{model:<18} {versions:>12} {verdicts.get((c, target), '-'):>13} "
            f"{r0 if r0 is not None else float('nan'):>21.2f} {r1 if r1 is not None else float('nan'):>20.2f} "
            f"{verdicts_after.get((c, target), '-'):>12}"
        )
    for c, why in sorted(before["reasons"].items()):
        print(f"flagged {c}: {why}")
    print(f"retrained through Airflow: {', '.join(before['retrain']) or 'none'}; new champions: {changed or 'none'}")
    print(f"after: retrain asked for {after['retrain'] or 'none'}, cooling down {sorted(after['cooling_down'])}")
    print(f"report: {after['html_path']}")
    ok = before["flagged"] == [city] and before["retrain"] == [city] and bool(own_changed) and new_served
    ok &= not others_changed and city not in after["retrain"]
    return 0 if ok else 1
