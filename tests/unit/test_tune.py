"""The Optuna search (``--tune-budget``): scored on validation only, never worse than the defaults there."""

import numpy as np
import pandas as pd
import pytest

from training.fit import Split, fit_lgbm
from training.tune import SEARCHED, tune


def _frame(n: int, seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    x = rng.uniform(0, 10, (n, 3))
    y = 60 * x[:, 0] + 30 * np.sin(x[:, 1]) * x[:, 2] + rng.normal(0, 20, n)
    return pd.DataFrame({"a": x[:, 0], "b": x[:, 1], "c": x[:, 2], "y": y})


@pytest.fixture
def split() -> Split:
    # No test window at all: the search must not need it (the gate scores on it afterwards).
    return Split(train=_frame(1500, 1), valid=_frame(400, 2), test=None)  # type: ignore[arg-type]


def test_search_keeps_the_best_validation_booster(split: Split) -> None:
    result = tune(split, ["a", "b", "c"], "y", budget_s=60, max_trials=6, threads=1)
    assert result.trials == 6
    assert result.valid_mae <= result.default_valid_mae
    default = fit_lgbm(split, ["a", "b", "c"], "y", threads=1)
    assert result.default_valid_mae == pytest.approx(default.best_score["valid_0"]["l1"])
    assert result.booster.best_score["valid_0"]["l1"] == pytest.approx(result.valid_mae)
    assert set(SEARCHED) <= set(result.params)
    summary = result.summary()
    assert summary["trials"] == 6 and set(summary["params"]) == set(SEARCHED)


def test_budget_must_be_positive(split: Split) -> None:
    with pytest.raises(ValueError, match="budget"):
        tune(split, ["a", "b", "c"], "y", budget_s=0)
