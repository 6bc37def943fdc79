"""Push, then poll: a real `mlflow server` (SQL backend) calls cityml's webhook when ``@champion`` moves.

Polling is off in this test (``CITYML_RELOAD_INTERVAL_S=0``), so a new version can only be served
because MLflow delivered the signed event and the server checked it and reloaded that model.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import subprocess
import time
from pathlib import Path

import httpx
import pytest

from cityml.features.featurestore import apply
from cityml.registry import client
from cityml.settings import Settings
from serving.api.routes.admin import signature_ok
from tests.conftest import SMALL_CATALOG, bin_path, free_port, wait_until_up
from tests.integration.test_hot_swap import _register
from tests.unit.test_serving_routes import KEY, _booster
from training.registry import set_champion

pytestmark = pytest.mark.integration
SECRET = "webhook-secret"


def test_signature_is_mlflows_hmac_and_nothing_else() -> None:
    body = b'{"entity": "model_version_alias"}'
    sig = base64.b64encode(hmac.new(b"s", b"id.1700000000." + body, hashlib.sha256).digest()).decode()
    assert signature_ok("s", "id", "1700000000", body, f"v1,{sig}")
    assert not signature_ok("s", "id", "1700000001", body, f"v1,{sig}")  # another timestamp
    assert not signature_ok("other", "id", "1700000000", body, f"v1,{sig}")
    assert not signature_ok("s", "id", "1700000000", body, f"v2,{sig}")
    assert not signature_ok("s", "id", "1700000000", body + b" ", f"v1,{sig}")


def test_an_alias_move_reaches_the_server_through_the_webhook(tmp_path: Path, mlflow_server: str) -> None:
    settings = Settings(home=tmp_path / "var", catalog_path=SMALL_CATALOG, mlflow_tracking_uri=mlflow_server)
    settings.feast_state_dir.mkdir(parents=True)
    apply(settings)  # the FeatureService the versions name must exist for them to serve
    first = _register(settings, _booster(0))
    second = _register(settings, _booster(1))
    c = client(settings)
    set_champion(c, "eta-alpha", first, "test")

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {
        **os.environ,
        "CITYML_HOME": str(settings.home),
        "CITYML_CATALOG_PATH": str(SMALL_CATALOG),
        "CITYML_MLFLOW_TRACKING_URI": mlflow_server,
        "CITYML_API_KEYS": KEY,
        "CITYML_RELOAD_INTERVAL_S": "0",  # no polling: only the webhook can bring the new version
        "CITYML_WEBHOOK_SECRET": SECRET,
        "CITYML_WEBHOOK_URL": f"{url}/admin/registry-events",
    }
    log = tmp_path / "serve.log"
    with log.open("w") as out:
        proc = subprocess.Popen([bin_path("cityml"), "serve", "--port", str(port)], env=env, stdout=out, stderr=out)
        try:
            wait_until_up(f"{url}/readyz", proc, log)

            def served() -> str:
                listed = httpx.get(f"{url}/v1/models", headers={"X-API-Key": KEY}).json()["models"]
                return str(listed[0]["version"])

            assert served() == first
            hooks = [w for w in c.list_webhooks() if w.url == env["CITYML_WEBHOOK_URL"]]
            assert len(hooks) == 1 and [str(e) for e in hooks[0].events] == ["model_version_alias.created"]

            time.sleep(1.5)  # past the server's webhook cache (MLFLOW_WEBHOOK_CACHE_TTL=1)
            moved = time.perf_counter()
            set_champion(c, "eta-alpha", second, "test")
            for _ in range(200):  # a budget in polls; the time it took is printed, not asserted
                if served() == second:
                    break
                time.sleep(0.05)
            took = time.perf_counter() - moved
            assert served() == second, log.read_text()[-3000:]
            print(f"alias move served after {took:.2f} s")

            # Unsigned or wrongly signed events change nothing.
            event = json.dumps({"entity": "model_version_alias", "action": "created", "data": {}})
            r = httpx.post(f"{url}/admin/registry-events", content=event)
            assert r.status_code == 401
            stamp = str(int(time.time()))
            bad = {"X-MLflow-Signature": "v1,AAAA", "X-MLflow-Timestamp": stamp, "X-MLflow-Delivery-Id": "x"}
            assert httpx.post(f"{url}/admin/registry-events", content=event, headers=bad).status_code == 401
        finally:
            proc.terminate()
            proc.wait(timeout=30)
