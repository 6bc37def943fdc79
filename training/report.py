"""The gate report of a training run: one row per model, JSON and markdown, kept and logged to MLflow."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

from cityml.registry import client
from cityml.settings import Settings
from training.registry import experiment_id

COLUMNS = ("city", "target", "version", "challenger", "champion", "global", "baseline", "decision", "reason")


def _fmt(value: Any) -> str:
    return "—" if value is None else f"{value:.4g}" if isinstance(value, float) else str(value)


def rows(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for r in results:
        m = r.get("metrics", {})
        decision = r["status"] if not r.get("forced") else "promoted (forced)"
        out.append(
            {
                "city": r["city"],
                "target": r["target"],
                "version": r.get("version"),
                "challenger": m.get("mae"),
                "champion": m.get("champion_mae"),
                "global": m.get("global_mae"),
                "baseline": m.get("baseline_mae"),
                "decision": decision,
                "reason": r.get("reason", ""),
            }
        )
    return out


def markdown(results: list[dict[str, Any]]) -> str:
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    for row in rows(results):
        lines.append("| " + " | ".join(_fmt(row[c]) for c in COLUMNS) + " |")
    return "\n".join(lines)


def write_gate_report(
    settings: Settings, results: list[dict[str, Any]], run_label: str, reason: str = ""
) -> dict[str, Any]:
    """Write the report under ``<home>/reports/gate/`` and log it to MLflow as run ``gate-report``.

    ``reason``: why the run was asked for (the drift job's flags), kept in the report and as a tag of its run.
    """
    import mlflow

    now = datetime.now(UTC)
    doc = {
        "generated_at": now.isoformat(),
        "run": run_label,
        "reason": reason,
        "models": rows(results),
        "results": results,
    }
    folder = settings.reports_dir / "gate"
    folder.mkdir(parents=True, exist_ok=True)
    stem = f"gate-{now:%Y%m%dT%H%M%SZ}"
    (folder / f"{stem}.json").write_text(json.dumps(doc, indent=2, default=str))
    table = markdown(results)
    why = f"Asked for: {reason}\n\n" if reason else ""
    (folder / f"{stem}.md").write_text(f"# Gate report {now:%Y-%m-%d %H:%M} UTC ({run_label})\n\n{why}{table}\n")
    c = client(settings)
    with mlflow.start_run(experiment_id=experiment_id(c, settings), run_name="gate-report") as run:
        tags = {"dag_run_id": run_label, "kind": "gate-report", **({"reason": reason[:5000]} if reason else {})}
        mlflow.set_tags(tags)
        mlflow.log_dict(doc, "gate_report.json")
        mlflow.log_text(table, "gate_report.md")
        counts: dict[str, int] = {}
        for r in results:
            counts[r["status"]] = counts.get(r["status"], 0) + 1
        mlflow.log_metrics({f"models_{k}": float(v) for k, v in counts.items()})
    return {"path": str(folder / f"{stem}.json"), "markdown": table, "mlflow_run_id": run.info.run_id}
