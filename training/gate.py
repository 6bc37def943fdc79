"""The fleet-wide promotion gate: when a challenger may become ``@champion``.

A challenger is promoted only if every check passes:

(a) it beats the current champion on the same fresh test window by ``gate_margin`` (relative);
(b) it beats the global model on that city's test window;
(c) the city has at least ``gate_min_train_rows`` training rows;
(d) the training/serving parity check found no mismatch;
(e) it has skill: its MAE is at least ``gate_min_skill`` better than predicting the training
    median — a model fitted on a bad data day (labels scrambled, a broken join) learns nothing
    and must not replace anything, even when the models it is compared with are just as bad;
(f) its data looks like the champion's: the median label per km of its training labels, its test
    labels and its test predictions each lies within ``gate_max_label_shift`` of the champion's
    training data (saved in its reference profile). Fares multiplied by ten, seconds stored as
    milliseconds, or a city's trips mixed with another's move it far beyond a real tariff change;
    ops who know the change is real force the promotion;
(g) it is not worse than the champion, by more than ``gate_clean_tolerance``, on the champion's own
    test window, read again now. A challenger's test window comes from the same data it learned from:
    where that data is poisoned both look alike there, and only a window the champion was judged on
    shows the damage.

Checks without something to compare with (no champion yet, no global model, parity disabled)
pass and say so. Every reason is kept, passed or failed, so the gate report explains itself.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from cityml.settings import Settings

MIN_PER_KM_ROWS = 50  # a median per km from fewer trips is noise


def median_per_km(labels: np.ndarray, km: np.ndarray) -> float | None:
    """The median of label / distance over trips longer than 100 m; None with too few of them."""
    labels, km = np.asarray(labels, dtype="float64"), np.asarray(km, dtype="float64")
    ok = (km > 0.1) & np.isfinite(labels) & np.isfinite(km)
    if int(ok.sum()) < MIN_PER_KM_ROWS:
        return None
    return float(np.median(labels[ok] / km[ok]))


def label_reference(labels: np.ndarray, km: np.ndarray) -> dict[str, Any]:
    """What a version's training labels looked like, saved in its reference profile for the next gate."""
    return {"median_per_km": median_per_km(labels, km), "rows": len(labels)}


@dataclass(frozen=True)
class LabelShift:
    """The median label per km of one side of a challenger (training labels, test labels, predictions) against
    the champion's training labels."""

    what: str
    value: float
    reference: float

    @property
    def ratio(self) -> float:
        return self.value / self.reference if self.reference > 0 else math.inf

    def too_far(self, limit: float) -> bool:
        return not (1 / (1 + limit) <= self.ratio <= 1 + limit)


def label_shifts(reference: dict[str, Any] | None, sides: dict[str, tuple[np.ndarray, np.ndarray]]) -> list[LabelShift]:
    """Each side's (values, km) median per km against the reference's; empty without a usable reference."""
    ref = (reference or {}).get("median_per_km")
    if ref is None or not ref > 0:
        return []
    out = []
    for what, (values, km) in sides.items():
        value = median_per_km(values, km)
        if value is not None:
            out.append(LabelShift(what, value, float(ref)))
    return out


@dataclass(frozen=True)
class CleanWindow:
    """Challenger and champion scored on the champion's own test window, as the store holds it now."""

    start: str
    end: str
    rows: int
    challenger_mae: float
    champion_mae: float


@dataclass
class GateInputs:
    challenger_mae: float
    median_mae: float
    train_rows: int
    champion_mae: float | None = None
    global_mae: float | None = None
    parity_mismatches: int | None = None
    label_shifts: list[LabelShift] = field(default_factory=list)
    clean_window: CleanWindow | None = None


@dataclass
class Decision:
    promote: bool
    reasons: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)

    @property
    def summary(self) -> str:
        return "; ".join(self.failed) if self.failed else "all checks passed"


def decide(x: GateInputs, settings: Settings) -> Decision:
    d = Decision(promote=True)

    def check(ok: bool, passed: str, failed: str) -> None:
        d.reasons.append(passed if ok else failed)
        if not ok:
            d.failed.append(failed)
            d.promote = False

    margin = settings.gate_margin
    if x.champion_mae is None:
        d.reasons.append("no champion yet")
    else:
        bar = x.champion_mae * (1 - margin)
        check(
            x.challenger_mae <= bar,
            f"beats champion: MAE {x.challenger_mae:.4g} <= {bar:.4g}",
            f"does not beat champion: MAE {x.challenger_mae:.4g} > {bar:.4g} (champion {x.champion_mae:.4g}, "
            f"margin {margin:.0%})",
        )
    if x.global_mae is None:
        d.reasons.append("no global model to compare with")
    else:
        check(
            x.challenger_mae <= x.global_mae,
            f"beats global: MAE {x.challenger_mae:.4g} <= {x.global_mae:.4g}",
            f"global model is better here: MAE {x.challenger_mae:.4g} > {x.global_mae:.4g}",
        )
    check(
        x.train_rows >= settings.gate_min_train_rows,
        f"{x.train_rows} training rows",
        f"too little data: {x.train_rows} training rows < {settings.gate_min_train_rows}",
    )
    if x.parity_mismatches is None:
        d.reasons.append("parity check disabled")
    else:
        check(
            x.parity_mismatches == 0,
            "parity: 0 mismatches",
            f"training/serving parity: {x.parity_mismatches} mismatches",
        )
    if x.label_shifts:
        limit = settings.gate_max_label_shift
        for shift in x.label_shifts:
            check(
                not shift.too_far(limit),
                f"{shift.what}: median per km {shift.value:.4g}, x{shift.ratio:.2f} the champion's training data",
                f"data shift: {shift.what} median per km {shift.value:.4g} is x{shift.ratio:.2f} the champion's "
                f"training data ({shift.reference:.4g}); beyond x{1 + limit:.2f} it is more likely a data fault than "
                f"a real change (force the promotion if it is real)",
            )
    else:
        d.reasons.append("no label reference to compare with")
    if x.clean_window is None:
        d.reasons.append("no champion test window to re-score")
    else:
        w, tolerance = x.clean_window, settings.gate_clean_tolerance
        bar = w.champion_mae * (1 + tolerance)
        window = f"the champion's test window {w.start[:10]}..{w.end[:10]} ({w.rows} trips)"
        check(
            w.challenger_mae <= bar,
            f"on {window}: MAE {w.challenger_mae:.4g} vs champion {w.champion_mae:.4g}",
            f"worse on {window}: MAE {w.challenger_mae:.4g} > {bar:.4g} (champion {w.champion_mae:.4g}, "
            f"tolerance {tolerance:.0%})",
        )
    skill = 1 - x.challenger_mae / x.median_mae if x.median_mae > 0 else 0.0
    check(
        skill >= settings.gate_min_skill,
        f"skill {skill:.0%} over the median predictor",
        f"no skill: MAE {x.challenger_mae:.4g} vs {x.median_mae:.4g} predicting the median ({skill:.0%} better, "
        f"needs {settings.gate_min_skill:.0%})",
    )
    return d


def decide_global(challenger_mae: float, champion_mae: float | None, settings: Settings) -> Decision:
    """The fleet model's gate: at least as good as its champion, by ``gate_margin``, on the union of the test
    windows of the cities both serve (the caller scores both on those rows). No champion yet: promoted."""
    if champion_mae is None:
        return Decision(promote=True, reasons=["no champion yet"])
    bar = champion_mae * (1 - settings.gate_margin)
    d = Decision(promote=challenger_mae <= bar, reasons=[f"MAE {challenger_mae:.4g} vs champion {champion_mae:.4g}"])
    if not d.promote:
        d.failed.append(f"does not beat champion: MAE {challenger_mae:.4g} > {bar:.4g}")
    return d
