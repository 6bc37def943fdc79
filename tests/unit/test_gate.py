import re

import numpy as np
import pytest

from cityml.settings import Settings
from training.gate import GateInputs, decide
from training.report import markdown

S = Settings(gate_margin=0.02, gate_min_train_rows=500, gate_min_skill=0.05)


def test_a_good_challenger_passes_every_check() -> None:
    d = decide(
        GateInputs(
            challenger_mae=90, median_mae=200, train_rows=5000, champion_mae=100, global_mae=95, parity_mismatches=0
        ),
        S,
    )
    assert d.promote and d.failed == [] and d.summary == "all checks passed"
    assert len(d.reasons) == 7  # the five checks, and no label reference or champion window to compare with


def test_each_check_fails_on_its_own_with_its_reason() -> None:
    base = {
        "challenger_mae": 90.0,
        "median_mae": 200.0,
        "train_rows": 5000,
        "champion_mae": 100.0,
        "global_mae": 95.0,
        "parity_mismatches": 0,
    }
    cases = {
        "does not beat champion": {"champion_mae": 91.0},  # 90 > 91 * 0.98
        "global model is better": {"global_mae": 89.0},
        "too little data": {"train_rows": 499},
        "parity: 3 mismatches": {"parity_mismatches": 3},
        "no skill": {"median_mae": 93.0},
    }
    for reason, change in cases.items():
        d = decide(GateInputs(**{**base, **change}), S)
        assert not d.promote, reason
        assert len(d.failed) == 1 and reason in d.failed[0], d.failed


def test_missing_comparisons_pass_and_say_so() -> None:
    d = decide(GateInputs(challenger_mae=90, median_mae=200, train_rows=5000), S)
    assert d.promote
    assert "no champion yet" in d.reasons and "no global model to compare with" in d.reasons
    assert "parity check disabled" in d.reasons


def test_report_table_names_decision_and_reason() -> None:
    from training.report import counts
    from training.results import TrainResult

    results = [
        TrainResult(
            "eta-a",
            "a",
            "eta",
            "promoted",
            "all checks passed",
            version="3",
            metrics={"mae": 1.5, "champion_mae": 2.0, "global_mae": 1.8, "baseline_mae": 4.0},
        ),
        TrainResult.failure("eta-b", "b", "eta", ValueError("boom")),
        TrainResult("eta-c", "c", "eta", "promoted", "x", version="2", forced=True, forced_by="airflow:ops (run)"),
    ]
    table = markdown(results)
    assert "| a | eta | 3 | 1.5 | 2 | 1.8 | 4 | promoted | all checks passed |" in table
    assert "| b | eta | — | — | — | — | — | failed | ValueError: boom |" in table
    assert "promoted (forced by airflow:ops (run))" in table
    assert counts(results) == {"promoted": 2, "rejected": 0, "skipped": 0, "failed": 1}
    # What crosses an XCom comes back the same.
    assert [TrainResult.from_dict(r.to_dict()) for r in results] == results


def test_a_label_shift_blocks_promotion_with_a_readable_reason() -> None:
    from training.gate import CleanWindow, label_reference, label_shifts

    rng = np.random.default_rng(0)
    km = rng.uniform(1, 20, 1000)
    fares = 3 + 1.5 * km * rng.lognormal(0, 0.1, 1000)
    reference = label_reference(fares, km)
    assert reference["median_per_km"] == pytest.approx(1.5 * 1.2, rel=0.25)
    ok = label_shifts(reference, {"training labels": (fares * 1.1, km)})  # a 10% tariff rise
    poisoned = label_shifts(reference, {"training labels": (fares * 10, km), "test predictions": (fares * 9, km)})
    tiny = label_shifts(reference, {"test labels": (fares[:10] * 10, km[:10])})  # too few trips to judge
    assert [s.what for s in poisoned] == ["training labels", "test predictions"] and tiny == []

    base = {"challenger_mae": 90.0, "median_mae": 200.0, "train_rows": 5000, "champion_mae": 100.0}
    assert decide(GateInputs(**base, label_shifts=ok), S).promote
    d = decide(GateInputs(**base, label_shifts=poisoned), S)
    assert not d.promote and len(d.failed) == 2
    assert "data shift: training labels median per km" in d.failed[0] and "x10.00 the champion's" in d.failed[0]
    assert "force the promotion if it is real" in d.failed[0]
    halved = label_shifts(reference, {"training labels": (fares / 10, km)})
    assert not decide(GateInputs(**base, label_shifts=halved), S).promote  # divided counts as much as multiplied

    window = CleanWindow("2024-01-01T00:00:00+00:00", "2024-01-07T23:00:00+00:00", 900, 500.0, 100.0)
    d = decide(GateInputs(**base, clean_window=window), S)
    assert not d.promote and d.failed == [
        "worse on the champion's test window 2024-01-01..2024-01-07 (900 trips): MAE 500 > 110 "
        "(champion 100, tolerance 10%)"
    ]
    assert decide(GateInputs(**base, clean_window=CleanWindow("a", "b", 900, 105.0, 100.0)), S).promote


def test_the_run_note_leads_with_counts_and_what_needs_a_look_within_airflows_limit() -> None:
    from training.report import NOTE_LIMIT, run_note
    from training.results import TrainResult

    def result(i: int, status: str, reason: str = "all checks passed") -> TrainResult:
        return TrainResult(f"eta-c{i:03d}", f"c{i:03d}", "eta", status, reason, metrics={"mae": 100.0 + i})  # type: ignore[arg-type]

    fleet = [result(i, "promoted") for i in range(400)]
    fleet += [result(400, "failed", "KeyError: 'x'"), result(401, "rejected", "does not beat champion: 9 > 8")]
    note = run_note(fleet, "trips before 2026-12-06 (the form)", "/var/reports/gate/gate-1.md")
    assert len(note) <= NOTE_LIMIT
    assert note.startswith("**400 promoted · 1 kept the champion · 0 skipped · 1 failed** — trips before 2026-12-06")
    lines = note.splitlines()
    assert lines[2] == "- `eta-c400` FAILED (MAE 500): KeyError: 'x'"  # failures first, then what the gate kept
    assert lines[3] == "- `eta-c401` kept (MAE 501): does not beat champion: 9 > 8"
    assert lines[4] == "- `eta-c000` promoted (MAE 100)"
    assert (
        re.fullmatch(r"- … and \d+ more", lines[-3]) and lines[-1] == "Full gate report: `/var/reports/gate/gate-1.md`"
    )
    shown = sum(line.startswith("- `") for line in lines)
    assert shown + int(lines[-3].split()[3]) == len(fleet)

    small = run_note(fleet[:2], "w", "r")
    assert "more" not in small and small.count("\n- `") == 2
