"""The gate report of a training run: one row per model, JSON and markdown, kept and logged to MLflow."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

from cityml.registry import client
from cityml.reports import report_stem, write_text_atomic
from cityml.settings import Settings
from training.registry import experiment_id
from training.results import TrainResult

COLUMNS = ("city", "target", "version", "challenger", "champion", "global", "baseline", "decision", "reason")


def _fmt(value: Any) -> str:
    return "—" if value is None else f"{value:.4g}" if isinstance(value, float) else str(value)


def rows(results: list[TrainResult]) -> list[dict[str, Any]]:
    out = []
    for r in results:
        m = r.metrics
        decision = r.status if not r.forced else f"promoted (forced by {r.forced_by})"
        out.append(
            {
                "city": r.city,
                "target": r.target,
                "version": r.version,
                "challenger": m.get("mae"),
                "champion": m.get("champion_mae"),
                "global": m.get("global_mae"),
                "baseline": m.get("baseline_mae"),
                "decision": decision,
                "reason": r.reason,
            }
        )
    return out


def counts(results: list[TrainResult]) -> dict[str, int]:
    """Models per status, in the order a reader looks for them."""
    out = {status: 0 for status in ("promoted", "rejected", "skipped", "failed")}
    for r in results:
        out[r.status] += 1
    return out


def markdown(results: list[TrainResult]) -> str:
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    for row in rows(results):
        lines.append("| " + " | ".join(_fmt(row[c]) for c in COLUMNS) + " |")
    return "\n".join(lines)


#: Airflow keeps a run's note in 1,000 characters.
NOTE_LIMIT = 1000


def run_note(results: list[TrainResult], window: str, report: str, limit: int = NOTE_LIMIT) -> str:
    """The run in a few markdown lines for its note in the Airflow UI: the counts, then one line per model that
    needs a look (failed, kept, skipped) before the promoted ones, cut to ``limit`` with where the full report is."""
    c = counts(results)
    head = (
        f"**{c['promoted']} promoted · {c['rejected']} kept the champion · {c['skipped']} skipped · "
        f"{c['failed']} failed** — {window}"
    )
    tail = f"\n\nFull gate report: `{report}`"
    order = {"failed": 0, "rejected": 1, "skipped": 2, "promoted": 3}
    lines = []
    for r in sorted(results, key=lambda r: (order[r.status], r.model)):
        mae = r.metrics.get("mae")
        score = f" (MAE {mae:.4g})" if mae is not None else ""
        what = (
            "promoted" if r.status == "promoted" else {"rejected": "kept", "skipped": "skipped"}.get(r.status, "FAILED")
        )
        why = "" if r.status == "promoted" and not r.forced else f": {r.reason[:120]}"
        lines.append(f"- `{r.model}` {what}{score}{why}")
    body: list[str] = []
    used = len(head) + len(tail) + len("\n- … and 9999 more") + 2
    for i, line in enumerate(lines):
        if used + len(line) + 1 > limit:
            body.append(f"- … and {len(lines) - i} more")
            break
        body.append(line)
        used += len(line) + 1
    note = head + "\n\n" + "\n".join(body) + tail
    return note if len(note) <= limit else note[: limit - 1] + "…"


def write_gate_report(
    settings: Settings, results: list[TrainResult], run_label: str, reason: str = "", window: str = ""
) -> dict[str, Any]:
    """Write the report under ``<home>/reports/gate/`` and log it to MLflow as run ``gate-report``.

    ``reason``: why the run was asked for (the drift job's flags), kept in the report and as a tag of its run;
    ``window``: the run's data window in words.
    """
    import mlflow

    now = datetime.now(UTC)
    doc = {
        "generated_at": now.isoformat(),
        "run": run_label,
        "reason": reason,
        "window": window,
        "counts": counts(results),
        "models": rows(results),
        "results": [r.to_dict() for r in results],
    }
    folder = settings.reports_dir / "gate"
    stem = report_stem("gate", now)
    write_text_atomic(folder / f"{stem}.json", json.dumps(doc, indent=2, default=str))
    table = markdown(results)
    why = f"Asked for: {reason}\n\n" if reason else ""
    why += f"Data: {window}\n\n" if window else ""
    write_text_atomic(folder / f"{stem}.md", f"# Gate report {now:%Y-%m-%d %H:%M} UTC ({run_label})\n\n{why}{table}\n")
    c = client(settings)
    with mlflow.start_run(experiment_id=experiment_id(c, settings), run_name="gate-report") as run:
        tags = {"dag_run_id": run_label, "kind": "gate-report", **({"reason": reason[:5000]} if reason else {})}
        mlflow.set_tags(tags)
        mlflow.log_dict(doc, "gate_report.json")
        mlflow.log_text(table, "gate_report.md")
        mlflow.log_metrics({f"models_{k}": float(v) for k, v in counts(results).items()})
    return {"path": str(folder / f"{stem}.json"), "markdown": table, "mlflow_run_id": run.info.run_id}
