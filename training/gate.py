"""The fleet-wide promotion gate: when a challenger may become ``@champion``.

A challenger is promoted only if every check passes:

(a) it beats the current champion on the same fresh test window by ``gate_margin`` (relative);
(b) it beats the global model on that city's test window;
(c) the city has at least ``gate_min_train_rows`` training rows;
(d) the training/serving parity check found no mismatch;
(e) it has skill: its MAE is at least ``gate_min_skill`` better than predicting the training
    median — a model fitted on a bad data day (labels scrambled, a broken join) learns nothing
    and must not replace anything, even when the models it is compared with are just as bad.

Checks without something to compare with (no champion yet, no global model, parity disabled)
pass and say so. Every reason is kept, passed or failed, so the gate report explains itself.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from cityml.settings import Settings


@dataclass
class GateInputs:
    challenger_mae: float
    median_mae: float
    train_rows: int
    champion_mae: float | None = None
    global_mae: float | None = None
    parity_mismatches: int | None = None


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
    skill = 1 - x.challenger_mae / x.median_mae if x.median_mae > 0 else 0.0
    check(
        skill >= settings.gate_min_skill,
        f"skill {skill:.0%} over the median predictor",
        f"no skill: MAE {x.challenger_mae:.4g} vs {x.median_mae:.4g} predicting the median ({skill:.0%} better, "
        f"needs {settings.gate_min_skill:.0%})",
    )
    return d
