"""The drift report people read: one self-contained HTML file per drift run (plotly, its script inlined).

Sections: a heatmap of every model (target-city) by feature, coloured by how far each feature is past its
threshold; for each drifted or watched feature, its reference and live distributions (quantile curves for
numbers, shares for categories); the history of the last runs (drifted features per model); realized MAE per model
and day against the test MAE it was promoted with (``monitoring.accuracy``); the cities flagged and why, and those
waiting for their cooldown. It opens without a network, from a mail attachment or a CI artifact.
"""

from __future__ import annotations

import html
import json
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cityml.reports import write_text_atomic
from monitoring.stats import P_VALUE_METHODS, THRESHOLDS

if TYPE_CHECKING:
    from monitoring.accuracy import RealizedDay

MAX_DISTRIBUTIONS = 24  # plots of single features, worst first: beyond this a report is read as a table
HISTORY_RUNS = 60


def severity(feature: dict[str, Any], threshold: float | None) -> float | None:
    """How far a feature's deciding score is past its threshold: 1.0 is the threshold, above is drift."""
    method, score = feature.get("method"), feature.get("score")
    if method is None or score is None:
        return None
    limit = threshold if threshold is not None and method in THRESHOLDS else THRESHOLDS.get(method, 1.0)
    if method in P_VALUE_METHODS:  # small p is far past: compare on -log10
        return math.log10(max(float(score), 1e-300)) / math.log10(limit) if 0 < limit < 1 else None
    return float(score) / limit if limit else None


def _heatmap(report: dict[str, Any]) -> Any:
    import plotly.graph_objects as go

    models = [m for m in report["models"] if m.get("features")]
    features = sorted({f for m in models for f in m["features"]})
    threshold = report.get("threshold")
    z, text = [], []
    for m in models:
        row, notes = [], []
        for f in features:
            entry = m["features"].get(f)
            value = severity(entry, threshold) if entry is not None else None
            row.append(None if value is None else min(value, 3.0))
            notes.append("" if entry is None else f"{entry['verdict']}: {entry.get('method')}={entry.get('score')}")
        z.append(row)
        text.append(notes)
    fig = go.Figure(
        go.Heatmap(
            z=z,
            x=features,
            y=[f"{m['model']} ({m['verdict']})" for m in models],
            text=text,
            hovertemplate="%{y}<br>%{x}<br>%{text}<extra></extra>",
            colorscale=[[0, "#e8f5e9"], [1 / 3, "#fff59d"], [1 / 2, "#ffb74d"], [1, "#c62828"]],
            zmin=0,
            zmax=3,
            colorbar={"title": "score / threshold", "thickness": 12},
        )
    )
    fig.update_layout(title="Drift by model and feature (1 = threshold)", height=max(320, 180 + 28 * len(models)))
    return fig


def _distribution(model: str, name: str, entry: dict[str, Any]) -> Any:
    import plotly.graph_objects as go

    dist = entry["distribution"]
    fig = go.Figure()
    if dist["kind"] == "numeric":
        for side in ("reference", "live"):
            values = dist[side]
            probs = [i / max(len(values) - 1, 1) for i in range(len(values))]
            fig.add_trace(go.Scatter(x=values, y=probs, mode="lines", name=side))
        fig.update_layout(xaxis_title=name, yaxis_title="share of trips at or below")
    else:
        keys = sorted(set(dist["reference"]) | set(dist["live"]))
        for side in ("reference", "live"):
            fig.add_trace(go.Bar(x=keys, y=[dist[side].get(k, 0.0) for k in keys], name=side))
        fig.update_layout(xaxis_title=name, yaxis_title="share of trips", barmode="group")
    fig.update_layout(
        title=f"{model}: {name} — {entry['verdict']} ({entry.get('method')}={entry.get('score')})", height=320
    )
    return fig


def _history(runs: list[dict[str, Any]]) -> Any:
    import plotly.graph_objects as go

    fig = go.Figure()
    series: dict[str, tuple[list[str], list[int]]] = {}
    for run in runs:
        for m in run.get("models", []):
            xs, ys = series.setdefault(m["model"], ([], []))
            xs.append(run["generated_at"])
            ys.append(len(m.get("drifted", [])))
    for model, (xs, ys) in sorted(series.items()):
        fig.add_trace(go.Scatter(x=xs, y=ys, mode="lines+markers", name=model))
    fig.update_layout(title="Drifted features per model, run by run", yaxis_title="features in drift", height=360)
    return fig


def _realized(days: list[RealizedDay]) -> Any:
    """Realized MAE / test MAE per model, day by day (1 = as tested); a new version starts a new line."""
    import plotly.graph_objects as go

    fig = go.Figure()
    series: dict[str, tuple[list[str], list[float], list[str]]] = {}
    for d in days:
        if d.ratio is None:
            continue
        # A fleet model serves several cities: one line per city it served.
        name = f"{d.model} v{d.version}" + (f" ({d.city})" if not d.model.endswith(f"-{d.city}") else "")
        xs, ys, notes = series.setdefault(name, ([], [], []))
        xs.append(d.day.isoformat())
        ys.append(round(d.ratio, 3))
        notes.append(f"MAE {d.mae:.4g} (test {d.test_mae:.4g}) on {d.trips} trips")
    for name, (xs, ys, notes) in sorted(series.items()):
        fig.add_trace(
            go.Scatter(x=xs, y=ys, mode="lines+markers", name=name, text=notes, hovertemplate="%{x}: %{y}x<br>%{text}")
        )
    fig.update_layout(
        title="Realized MAE on completed trips / test MAE, per model version and day",
        yaxis_title="realized / test MAE",
        height=380,
    )
    return fig


def _worst(report: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    threshold = report.get("threshold")
    shown = [
        (m["model"], name, f)
        for m in report["models"]
        for name, f in m.get("features", {}).items()
        if "distribution" in f and f["verdict"] in ("drift", "watch")
    ]
    return sorted(shown, key=lambda t: -(severity(t[2], threshold) or 0.0))[:MAX_DISTRIBUTIONS]


def render(report: dict[str, Any], history: list[dict[str, Any]], realized: list[RealizedDay] | None = None) -> str:
    """The whole HTML document of one drift run, ``history`` being the earlier runs' reports, oldest first, and
    ``realized`` the stored realized accuracy of its cities."""
    from plotly.offline import get_plotlyjs

    figures = [_heatmap(report), *(_distribution(*w) for w in _worst(report)), _history([*history, report])]
    if realized:
        figures.append(_realized(realized))
    plots = "\n".join(
        f'<div class="plot">{fig.to_html(full_html=False, include_plotlyjs=False, div_id=f"plot{i}")}</div>'
        for i, fig in enumerate(figures)
    )
    waiting = report.get("cooling_down", {})
    rows = "".join(
        f"<tr><td>{html.escape(city)}</td><td>{html.escape(w.get('requested_at', ''))}</td>"
        f"<td>{html.escape(w.get('until', ''))}</td><td>{html.escape(w.get('last_outcome', ''))}</td></tr>"
        for city, w in sorted(waiting.items())
    )
    flagged = "".join(
        f"<tr><td>{html.escape(city)}</td><td>{html.escape(why)}</td></tr>"
        for city, why in sorted(report.get("reasons", {}).items())
    )
    acc = report.get("accuracy", {})
    matched = (
        f"{acc.get('predictions', 0)} predictions in the window: {acc.get('matched_by_trip_id', 0)} joined to their "
        f"trip by trip_id, {acc.get('matched_by_time_and_zones', 0)} by pickup time and zones, "
        f"{acc.get('unmatched', 0)} not (yet) matched."
    )
    summary = (
        f"Window from {html.escape(report['window_start'])} to {html.escape(report['generated_at'])}; "
        f"verdicts by {html.escape(str(report.get('method')))} at {html.escape(str(report.get('threshold')))}. "
        f"Drifting: {html.escape(', '.join(report.get('drifted', [])) or 'none')}. "
        f"Retrain asked for: {html.escape(', '.join(report.get('retrain', [])) or 'none')}."
    )
    return f"""<!doctype html>
<html><head><meta charset="utf-8"><title>cityml drift report {html.escape(report["generated_at"])}</title>
<script>{get_plotlyjs()}</script>
<style>body{{font-family:sans-serif;margin:24px}} .plot{{margin-bottom:24px}} td,th{{padding:4px 10px}}</style>
</head><body>
<h1>Drift report</h1>
<p id="summary">{summary}</p>
{plots}
<h2>Waiting for their cooldown</h2>
<table id="cooling"><tr><th>city</th><th>retrain asked at</th><th>asked again after</th><th>newest version</th></tr>
{rows or '<tr><td colspan="4">none</td></tr>'}</table>
<h2>Flagged cities</h2>
<table id="flagged"><tr><th>city</th><th>why</th></tr>
{flagged or '<tr><td colspan="2">none</td></tr>'}</table>
<h2>Realized accuracy</h2>
<p id="realized">{html.escape(matched)}</p>
</body></html>
"""


def write_html(report: dict[str, Any], folder: Path, name: str, realized: list[RealizedDay] | None = None) -> Path:
    """Write the report of a drift run beside its JSON, with the history of the earlier runs in ``folder``."""
    earlier = sorted(p for p in folder.glob("drift-*.json") if p.stem != name)[-HISTORY_RUNS:]
    history = []
    for path in earlier:
        try:
            history.append(json.loads(path.read_text()))
        except (OSError, ValueError):
            continue  # a report being written, or a broken one: the history skips it
    return write_text_atomic(folder / f"{name}.html", render(report, history, realized))
