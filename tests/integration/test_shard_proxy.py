"""A sharded fleet's proxy, for real: nginx with docker/nginx-shards.conf and the routes ``cityml serve-routes``
generates, in front of three stand-in shard servers; every city's predict reaches the shard cityml/shards.py
says holds it. (What a shard's server loads and refuses is tests/unit/test_shards.py.)"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest
import yaml

from cityml.data.synth import random_catalog
from cityml.settings import PROJECT_ROOT
from cityml.shards import shard_of
from tests.conftest import debian_package

pytestmark = pytest.mark.integration

SHARDS = 3
#: Two cities named like nginx map's own words: the generated map must still route them as cities.
CITIES = [*(f"town-{i:03d}" for i in range(60)), "default", "include"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _backend(shard: int, port: int) -> ThreadingHTTPServer:
    """A stand-in for shard ``shard``'s servers: answers which shard it is and what it was asked."""

    class Handler(BaseHTTPRequestHandler):
        def _answer(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            self.rfile.read(length)
            body = json.dumps({"shard": shard, "path": self.path}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        do_GET = do_POST = _answer  # http.server finds handlers by these names

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer((f"127.0.{shard}.1", port), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


@pytest.fixture(scope="module")
def proxy(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    if shutil.which("nginx") is None:
        debian_package("nginx")
    tmp = tmp_path_factory.mktemp("shards")
    catalog = tmp / "cities.yaml"
    catalog.write_text(yaml.safe_dump(random_catalog(CITIES, seed=3, trips_per_day=10)))
    backend_port, proxy_port = _free_port(), _free_port()
    backends = [_backend(i, backend_port) for i in range(SHARDS)]
    routes = tmp / "cityml-routes.conf"
    env = {
        **os.environ,
        "CITYML_CATALOG_PATH": str(catalog),
        "CITYML_HOME": str(tmp / "var"),
        "CITYML_SERVE_SHARDS": str(SHARDS),  # the servers' setting: the routes follow it
    }
    cli = Path(sys.executable).with_name("cityml")
    server = f"127.0.{{shard}}.1:{backend_port}"
    subprocess.run(
        [str(cli), "serve-routes", "--server", server, "--out", str(routes)],
        env=env,
        check=True,
        capture_output=True,
    )
    # The shipped server block, with the routes file and the port of this test.
    site = (PROJECT_ROOT / "docker" / "nginx-shards.conf").read_text()
    assert "include /etc/nginx/cityml-routes.conf;" in site and "listen 8000;" in site
    site = site.replace("/etc/nginx/cityml-routes.conf", str(routes)).replace("listen 8000;", f"listen {proxy_port};")
    (tmp / "site.conf").write_text(site)
    temp = {name: tmp / name for name in ("body", "proxy", "fastcgi", "uwsgi", "scgi")}
    for folder in temp.values():
        folder.mkdir()
    (tmp / "nginx.conf").write_text(
        f"""worker_processes 1;
pid {tmp}/nginx.pid;
error_log {tmp}/error.log;
events {{}}
http {{
    access_log off;
    client_body_temp_path {temp["body"]};
    proxy_temp_path {temp["proxy"]};
    fastcgi_temp_path {temp["fastcgi"]};
    uwsgi_temp_path {temp["uwsgi"]};
    scgi_temp_path {temp["scgi"]};
    include {tmp}/site.conf;
}}
"""
    )
    check = subprocess.run(["nginx", "-t", "-c", str(tmp / "nginx.conf")], capture_output=True, text=True)
    assert check.returncode == 0, check.stderr
    nginx = subprocess.Popen(["nginx", "-c", str(tmp / "nginx.conf"), "-g", "daemon off;"])
    url = f"http://127.0.0.1:{proxy_port}"
    try:
        for _ in range(200):  # up to ~20 s on a busy machine
            try:
                if httpx.get(f"{url}/proxy-healthz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        else:
            pytest.fail(f"nginx did not answer: {(tmp / 'error.log').read_text()[-2000:]}")
        yield url
    finally:
        nginx.terminate()
        nginx.wait(30)
        for b in backends:
            b.shutdown()


def test_each_citys_predict_reaches_the_shard_that_holds_it(proxy: str) -> None:
    seen = set()
    with httpx.Client(base_url=proxy, timeout=10) as api:
        for city in CITIES:
            r = api.post("/v1/predict/eta", headers={"X-City": city}, json={"instances": [{"city": city}]})
            assert r.status_code == 200, r.text
            assert r.json() == {"shard": shard_of(city, SHARDS), "path": "/v1/predict/eta"}, city
            seen.add(r.json()["shard"])
        assert seen == set(range(SHARDS))  # the test's cities cover every shard
        # A city the routes do not know yet, and anything but predictions: shard 0 (which answers 421 or lists).
        assert api.post("/v1/predict/eta", headers={"X-City": "new-town"}, json={}).json()["shard"] == 0
        assert api.get("/v1/models").json() == {"shard": 0, "path": "/v1/models"}
