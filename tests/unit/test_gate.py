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
    assert len(d.reasons) == 5


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
    table = markdown(
        [
            {
                "city": "a",
                "target": "eta",
                "status": "promoted",
                "version": "3",
                "reason": "all checks passed",
                "metrics": {"mae": 1.5, "champion_mae": 2.0, "global_mae": 1.8, "baseline_mae": 4.0},
            },
            {"city": "b", "target": "eta", "status": "failed", "reason": "ValueError: boom"},
        ]
    )
    assert "| a | eta | 3 | 1.5 | 2 | 1.8 | 4 | promoted | all checks passed |" in table
    assert "| b | eta | — | — | — | — | — | failed | ValueError: boom |" in table
