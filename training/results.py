"""What one model's training produced: the typed row that training, the gate report, the CLI, the demo and the
DAG's summary all read."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any, Literal

Status = Literal["promoted", "rejected", "skipped", "failed"]


@dataclass
class TrainResult:
    """One model (``<target>-<city>`` or ``<target>-global``) of a retrain run.

    ``status``: promoted (``@champion`` moved to ``version``), rejected (registered, the gate kept the champion),
    skipped (too little data: nothing registered), failed (an error: nothing moved, ``reason`` says why).
    """

    model: str
    city: str
    target: str
    status: Status
    reason: str
    version: str | None = None
    forced: bool = False
    forced_by: str = ""
    pooled: bool = False
    checks: list[str] = field(default_factory=list)
    metrics: dict[str, float] = field(default_factory=dict)
    test_window: list[str] = field(default_factory=list)
    #: The global model's test MAE on each city's own test window (unrounded: the city models' gate compares).
    per_city_mae: dict[str, float] = field(default_factory=dict)
    abandoned_versions: list[str] = field(default_factory=list)
    tuning: dict[str, Any] | None = None
    seconds: float = 0.0
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.status in ("promoted", "rejected")

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe (an Airflow XCom, the gate report's ``results``, ``cityml train --json``)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, doc: dict[str, Any]) -> TrainResult:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in doc.items() if k in known})

    @classmethod
    def failure(cls, model: str, city: str, target: str, exc: BaseException | str) -> TrainResult:
        reason = exc if isinstance(exc, str) else f"{type(exc).__name__}: {exc}"
        return cls(model, city, target, "failed", reason)
