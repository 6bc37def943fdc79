"""`cityml serve --workers 2`: any worker's /metrics counts what every worker did (prometheus multiprocess)."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import httpx
import pytest

from tests.conftest import SMALL_CATALOG, bin_path, free_port, wait_until_up

pytestmark = pytest.mark.e2e


def test_two_workers_one_sum(tmp_path: Path) -> None:
    port = free_port()
    env = {
        **os.environ,
        "CITYML_HOME": str(tmp_path / "var"),
        "CITYML_CATALOG_PATH": str(SMALL_CATALOG),
        "CITYML_API_KEYS": "right",
        "CITYML_RELOAD_INTERVAL_S": "0",
    }
    metrics_dir = tmp_path / "metrics"  # as `cityml serve --workers` would make it, but where the test can look
    metrics_dir.mkdir()
    env["PROMETHEUS_MULTIPROC_DIR"] = str(metrics_dir)
    log = (tmp_path / "serve.log").open("w")
    proc = subprocess.Popen(
        [bin_path("cityml"), "serve", "--port", str(port), "--workers", "2"], env=env, stdout=log, stderr=log
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_up(f"{url}/readyz", proc, tmp_path / "serve.log", ok=(503,))  # no models: up, not ready
        refused = 0
        for _ in range(40):  # new connections: spread over both workers
            r = httpx.post(f"{url}/v1/predict/eta", json={"instances": []}, headers={"X-API-Key": "wrong"})
            assert r.status_code == 401
            refused += 1
        # Both workers counted some (one file per process), and every scrape shows the sum.
        assert len(list(metrics_dir.glob("counter_*.db"))) >= 2
        for _ in range(12):
            text = httpx.get(f"{url}/metrics").text
            m = re.search(r'^cityml_predict_errors_total\{reason="auth"\} ([\d.]+)$', text, re.M)
            assert m is not None and float(m.group(1)) == refused, text[:2000]
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        log.close()
