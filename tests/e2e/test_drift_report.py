"""The drift report opens in a real browser (Debian's Chromium through Playwright) and its plots draw."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from cityml.profile import build_profile
from monitoring.drift import _summary, feature_scores
from monitoring.report import write_html

pytestmark = pytest.mark.e2e


def _model(city: str, shifted: bool, rng: np.random.Generator) -> dict[str, Any]:
    n = 3000
    ref = pd.DataFrame(
        {
            "distance_km": rng.lognormal(1.2, 0.5, n),
            "pickup__zone_mean_speed_kmh": rng.normal(25, 4, n),
            "pickup_zone": rng.choice(["z01", "z02", "z03"], n, p=[0.5, 0.3, 0.2]),
        }
    )
    live = pd.DataFrame(
        {
            "distance_km": rng.lognormal(1.2 + (0.6 if shifted else 0.0), 0.5, 1500),
            "pickup__zone_mean_speed_kmh": rng.normal(25, 4, 1500),
            "pickup_zone": rng.choice(["z01", "z02", "z03"], 1500, p=[0.2, 0.3, 0.5] if shifted else [0.5, 0.3, 0.2]),
        }
    )
    scores = feature_scores(build_profile(ref, np.zeros(n)), live, "wasserstein", 0.2)
    return {"city": city, "target": "eta", "model": f"eta-{city}", **_summary(scores, len(live), 50)}


def test_the_drift_report_draws_in_chromium(chromium: str, tmp_path: Path) -> None:
    from playwright.sync_api import sync_playwright

    rng = np.random.default_rng(0)
    models = [_model("lisbon", False, rng), _model("porto", True, rng)]
    report = {
        "generated_at": "2026-11-26T12:00:00+00:00",
        "window_start": "2026-11-19T12:00:00+00:00",
        "method": "wasserstein",
        "threshold": 0.2,
        "models": models,
        "drifted": ["porto"],
        "retrain": [],
        "cooling_down": {"porto": {"requested_at": "2026-11-26T03:00:00+00:00", "until": "2026-11-27T03:00:00+00:00"}},
    }
    assert models[1]["drifted"] == ["distance_km", "pickup_zone"] and models[0]["verdict"] == "stable"
    page_path = write_html(report, tmp_path, "drift-20261126T120000Z")
    errors: list[str] = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1200, "height": 900})
        page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.goto(page_path.as_uri())
        page.wait_for_selector("#plot0 .main-svg", timeout=60_000)
        # The heatmap, one plot per drifted feature (distance_km, pickup_zone) and the history: 4 plots drew.
        assert page.locator(".js-plotly-plot").count() == 4
        assert page.locator("#plot0 .hm, #plot0 image").count() >= 1  # the heatmap's cells
        assert page.locator("#plot1 .scatterlayer .trace").count() == 2  # reference and live curves
        assert page.locator("#plot2 .barlayer .trace").count() == 2  # zone shares, reference and live
        assert "Drifting: porto" in page.inner_text("#summary")
        assert "porto" in page.inner_text("#cooling")
        page.screenshot(path=str(tmp_path / "drift-report.png"), full_page=True)
        shot = os.environ.get("CITYML_SCREENSHOT_DIR")
        if shot:
            shutil.copy(tmp_path / "drift-report.png", Path(shot) / "drift-report.png")
        browser.close()
    assert errors == []
