"""The services environment on one machine: MLflow server and Airflow (CeleryExecutor, 2 workers) over Postgres/Redis.

One stack for the module (``cityml.services.start``): unique Postgres databases and broker keys, free ports,
dropped and stopped at the end whatever happened. Two small cities are generated, applied and materialized with
the ``cityml`` commands, then ``retrain_city_models`` is triggered through Airflow's REST API v2, as an ops user
or the drift job would, and what it left is checked where it must be: the MLflow server's registry (Postgres),
the task instances (which worker ran what), and a ``cityml serve`` process that loads champions from the server.

Then an ops user's path in a real browser (Debian's Chromium through Playwright): sign in to the Airflow UI,
retrain one city from the DAG's trigger form and watch the run turn green; and the MLflow UI's model list.
Screenshots go to ``var/screenshots/`` of the checkout.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import subprocess
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote

import httpx
import pytest

from cityml.naming import GLOBAL, model_name
from cityml.services import TRAINING_POOL, ServicesConfig, Stack, purge, start
from cityml.settings import PROJECT_ROOT, Settings
from tests.conftest import SMALL_CATALOG, bin_path, free_port, require_service, wait_until_up

if TYPE_CHECKING:
    from playwright.sync_api import Locator, Page, ViewportSize

pytestmark = pytest.mark.e2e
CITIES = ["alpha", "beta-city"]
TARGETS = ["eta", "price"]
DAG = "retrain_city_models"
KEY = "services-test-key"
RUN_POLLS = 900  # 1 s apart: a retrain of two small cities takes a few minutes on a busy 2-core machine
UI_POLLS = 450  # 2 s apart: the browser watches a one-city run, a few minutes on a busy 2-core machine
SCREENSHOTS = PROJECT_ROOT / "var" / "screenshots"
#: Tall enough for the whole trigger form: Chromium paints only what the viewport shows of a scrolled dialog.
FORM_VIEWPORT: ViewportSize = {"width": 1400, "height": 1700}
#: The trigger form's params, by the titles an ops user reads, in the DAG's order.
FORM_TITLES = [
    "Cities",
    "Targets",
    "Training window (days)",
    "Train until",
    "Force promotion",
    "Tuning budget (s)",
    "Reason",
]


def _cityml(env: dict[str, str], *args: str) -> None:
    proc = subprocess.run([bin_path("cityml"), *args], env=env, capture_output=True, text=True, check=False)
    assert proc.returncode == 0, f"cityml {' '.join(args)}:\n{proc.stderr[-3000:]}"


def _build_world(env: dict[str, str]) -> None:
    """Trips for the two cities, Feast definitions applied and features materialized, by the cityml commands."""
    _cityml(env, "data", "generate", "--cities", ",".join(CITIES), "--days", "21")
    _cityml(env, "features", "apply")
    _cityml(env, "features", "materialize")


def _ports(n: int) -> list[int]:
    ports: set[int] = set()
    while len(ports) < n:
        ports.add(free_port())
    return sorted(ports)


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """Two generated cities with Feast applied and materialized, and the stack started over them."""
    require_service("postgres", "127.0.0.1", 5432)
    require_service("redis", "127.0.0.1", 6379)
    home = tmp_path_factory.mktemp("services") / "var"
    tag = uuid.uuid4().hex[:8]
    airflow_port, mlflow_port = _ports(2)
    config = ServicesConfig(
        folder=home / "services",
        airflow_port=airflow_port,
        mlflow_port=mlflow_port,
        airflow_db=f"cityml_test_airflow_{tag}",
        mlflow_db=f"cityml_test_mlflow_{tag}",
        redis_db=11,
        workers=2,
        pool_slots=2,
        schedules=False,  # only the runs the tests trigger
    )
    settings = Settings(home=home, catalog_path=SMALL_CATALOG)
    extra = {
        "CITYML_GATE_PARITY_SAMPLE": "5",
        "CITYML_TRAIN_THREADS": "1",  # two fits at once on two cores
    }
    world_env = {**os.environ, **extra, "CITYML_HOME": str(home), "CITYML_CATALOG_PATH": str(SMALL_CATALOG)}
    started: Stack | None = None
    try:
        # The world needs no service: it is built while the stack starts, which mostly waits.
        with ThreadPoolExecutor(1) as pool:
            world = pool.submit(_build_world, world_env)
            started = start(settings, config, extra_env=extra)
            world.result()
        yield started
    finally:
        if started is not None:
            processes = list(started.processes.values())
            started.stop()
            assert not [p.name for p in processes if p.alive()], "processes left running"
        purge(config)


def _api(stack: Stack) -> httpx.Client:
    return httpx.Client(
        base_url=f"{stack.airflow_url}/api/v2", headers={"Authorization": f"Bearer {stack.token()}"}, timeout=30
    )


def _wait_for_dag(api: httpx.Client) -> None:
    """The dag-processor has parsed the DAG (polls); a DAG file that does not import fails with its error."""
    for _ in range(240):
        if api.get(f"/dags/{DAG}").status_code == 200:
            return
        errors = api.get("/importErrors").json().get("import_errors", [])
        broken = [e for e in errors if e["filename"].endswith(f"{DAG}.py")]
        assert not broken, broken[0]["stack_trace"][-3000:]
        time.sleep(0.5)
    pytest.fail(f"{DAG} never showed up in the API")


def _task_instances(api: httpx.Client, run_id: str) -> list[dict[str, Any]]:
    r = api.get(f"/dags/{DAG}/dagRuns/{run_id}/taskInstances", params={"limit": 1000})
    assert r.status_code == 200, r.text
    return list(r.json()["task_instances"])


def _failure_report(api: httpx.Client, run_id: str) -> str:
    """Each task instance's state, and the end of the log of those that failed."""
    lines = []
    for ti in _task_instances(api, run_id):
        lines.append(f"{ti['task_id']}[{ti['map_index']}] {ti['state']} on {ti['hostname']}")
        if ti["state"] in ("failed", "up_for_retry"):
            r = api.get(
                f"/dags/{DAG}/dagRuns/{run_id}/taskInstances/{ti['task_id']}/logs/{max(ti['try_number'], 1)}",
                params={"map_index": ti["map_index"], "full_content": True},
            )
            events = r.json().get("content", []) if r.status_code == 200 else [r.text]
            lines += [json.dumps(e)[:1500] for e in events[-12:]]
    return "\n".join(lines)


@pytest.fixture(scope="module")
def retrain_run(stack: Stack) -> dict[str, Any]:
    """``retrain_city_models`` triggered through the REST API with the DAG's contract, waited for (polls)."""
    with _api(stack) as api:
        _wait_for_dag(api)
        r = api.patch(f"/dags/{DAG}", json={"is_paused": False})
        assert r.status_code == 200, r.text
        conf = {"cities": CITIES, "targets": TARGETS}
        r = api.post(f"/dags/{DAG}/dagRuns", json={"logical_date": None, "conf": conf})
        assert r.status_code == 200, r.text
        run_id = r.json()["dag_run_id"]
        for _ in range(RUN_POLLS):
            run = api.get(f"/dags/{DAG}/dagRuns/{run_id}").json()
            if run["state"] in ("success", "failed"):
                break
            time.sleep(1)
        else:
            pytest.fail(f"{run_id} still {run['state']} after {RUN_POLLS} polls:\n{_failure_report(api, run_id)}")
        assert run["state"] == "success", _failure_report(api, run_id)
        # The summary runs whatever the fits did: a successful run can still hide a failed fit.
        instances = _task_instances(api, run_id)
        assert all(ti["state"] in ("success", "skipped") for ti in instances), _failure_report(api, run_id)
        return {"run_id": run_id, "task_instances": instances, "note": run.get("note")}


def _mlflow(stack: Stack) -> Any:
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=stack.mlflow_url, registry_uri=stack.mlflow_url)


def test_retrain_triggered_through_the_rest_api_registers_on_the_mlflow_server(
    stack: Stack, retrain_run: dict[str, Any]
) -> None:
    """4a: a new version of every (city, target) the run asked for, tagged with the run's id, on the server."""
    client = _mlflow(stack)
    for city in CITIES:
        for target in TARGETS:
            name = model_name(target, city)
            versions = client.search_model_versions(f"name = '{name}'")
            tagged = [v for v in versions if v.tags.get("dag_run_id") == retrain_run["run_id"]]
            assert tagged, (name, [(v.version, v.tags.get("dag_run_id")) for v in versions])
            (version,) = tagged
            assert version.tags["city"] == city and version.tags["target"] == target
            # Its artifacts went through the server's proxy into the stack's artifact folder.
            assert version.source.startswith(("mlflow-artifacts:", "models:/")), version.source
    assert any(stack.config.artifacts.rglob("*")), "no artifact reached the server's artifact folder"
    # The summary wrote the run's note (as cityml-runner, through the REST API): counts, then a line per model.
    note = retrain_run["note"] or ""
    assert re.match(r"\*\*\d+ promoted · \d+ kept the champion · 0 skipped · 0 failed\*\* — trips before ", note), note
    for city in CITIES:
        for target in TARGETS:
            assert f"`{model_name(target, city)}` " in note, note


def test_mapped_fits_ran_on_both_celery_workers(retrain_run: dict[str, Any]) -> None:
    """4c: each worker runs one task at a time (concurrency 1) and the pool lets two fits run at once, so the
    mapped fits spread over both workers; any two that overlapped in time ran on different workers."""
    fits = [
        ti
        for ti in retrain_run["task_instances"]
        if ti["pool"] == TRAINING_POOL and ti["map_index"] >= 0 and ti["state"] == "success"
    ]
    assert len(fits) >= 2, [
        (t["task_id"], t["map_index"], t["pool"], t["state"]) for t in retrain_run["task_instances"]
    ]
    for ti in fits:  # shown with -s, and in the report of a failure
        print(f"{ti['task_id']}[{ti['map_index']}] {ti['hostname']} {ti['start_date']} -> {ti['end_date']}")
    assert {ti["hostname"] for ti in fits} == {"worker-1", "worker-2"}, [(t["task_id"], t["hostname"]) for t in fits]

    def span(ti: dict[str, Any]) -> tuple[datetime, datetime]:
        return datetime.fromisoformat(ti["start_date"]), datetime.fromisoformat(ti["end_date"])

    overlapping = [
        (a, b) for i, a in enumerate(fits) for b in fits[i + 1 :] if span(a)[0] < span(b)[1] and span(b)[0] < span(a)[1]
    ]
    assert overlapping, "no two fits ran at the same time: the pool or the workers serialised them"
    assert all(a["hostname"] != b["hostname"] for a, b in overlapping), overlapping


def test_mlflow_runs_as_a_service(stack: Stack, retrain_run: dict[str, Any], tmp_path: Path) -> None:
    """5: the registry lives in the server's Postgres database, its UI and REST API answer, and `cityml serve`
    pointed at the server loads champions from it and predicts."""
    import sqlalchemy as sa

    names = {model_name(t, c) for c in CITIES for t in TARGETS}
    engine = sa.create_engine(stack.config.db_url(stack.config.mlflow_db))
    try:
        with engine.connect() as conn:
            stored = set(conn.execute(sa.text("SELECT name FROM registered_models")).scalars())
    finally:
        engine.dispose()
    assert names <= stored, stored

    ui = httpx.get(f"{stack.mlflow_url}/", timeout=30)
    assert ui.status_code == 200 and "text/html" in ui.headers["content-type"] and '<div id="root"' in ui.text
    listed = httpx.get(
        f"{stack.mlflow_url}/ajax-api/2.0/mlflow/registered-models/search", params={"max_results": 100}, timeout=30
    )
    assert listed.status_code == 200, listed.text
    assert names <= {m["name"] for m in listed.json()["registered_models"]}

    port = free_port()
    env = {**os.environ, **stack.client_env(), "CITYML_API_KEYS": KEY, "CITYML_RELOAD_INTERVAL_S": "0"}
    log_path = tmp_path / "serve.log"
    with log_path.open("w") as log:
        proc = subprocess.Popen(
            [bin_path("cityml"), "serve", "--port", str(port)], env=env, stdout=log, stderr=subprocess.STDOUT
        )
        try:
            url = f"http://127.0.0.1:{port}"
            wait_until_up(f"{url}/readyz", proc, log_path)
            instance = {
                "city": "alpha",
                "pickup_lat": 38.72,
                "pickup_lon": -9.15,
                "dropoff_lat": 38.76,
                "dropoff_lon": -9.12,
            }
            r = httpx.post(f"{url}/v1/predict/eta", json={"instances": [instance]}, headers={"X-API-Key": KEY})
            assert r.status_code == 200, r.text
            (pred,) = r.json()["predictions"]
            champion = _mlflow(stack).get_model_version_by_alias(pred["model"], "champion")
            assert pred["model"] in ("eta-alpha", "eta-global") and pred["version"] == str(champion.version)
            assert 60 <= pred["value"] <= 4 * 3600
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


# The UIs in a real browser -------------------------------------------------------------------------------------


@contextlib.contextmanager
def _browser_page(chromium: str) -> Iterator[Page]:
    """A page of Debian's Chromium (``executable_path``; no sandbox as root in a container), closed afterwards."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport=FORM_VIEWPORT)
            page.set_default_timeout(60_000)  # the servers share 2 cores with the workers' fits
            yield page
        finally:
            browser.close()


def _screenshot(what: Page | Locator, name: str) -> Path:
    """The page's viewport, or one element of it (all of it, if the viewport shows it), in ``var/screenshots/``."""
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    path = SCREENSHOTS / name
    what.screenshot(path=str(path))
    return path


def _sign_in(page: Page, stack: Stack, path: str) -> None:
    """Open ``path`` of the Airflow UI as the admin: Airflow sends an anonymous visitor to the simple auth
    manager's login page, which sends them back to ``path`` once signed in."""
    page.goto(f"{stack.airflow_url}{path}")
    page.get_by_label("Username").fill(stack.admin_user)
    page.get_by_label("Password").fill(stack.admin_password)
    page.get_by_role("button", name="Sign in").click()
    page.wait_for_url(f"{stack.airflow_url}{path}")


def _open_trigger_form(page: Page) -> Locator:
    """The DAG page's Trigger button (its accessible name is "Trigger Dag") opens the form in a dialog."""
    from playwright.sync_api import expect

    page.get_by_role("button", name="Trigger Dag").click()
    form = page.get_by_role("dialog")
    expect(form.get_by_text("Run Parameters")).to_be_visible()
    return form


def _param(form: Locator, title: str) -> Locator:
    """The form's row of the param titled ``title``.

    Airflow's UI internals: each param is a Chakra field (role=group) whose <label> starts with the title (then a
    "*"); the label's ``for`` does not point at the row's input, so ``get_by_label`` cannot find the input.
    """
    label = form.page.locator("label", has_text=re.compile(rf"^{re.escape(title)}"))
    return form.get_by_role("group").filter(has=label)


def _fill_form(form: Locator, city: str, until: str, reason: str) -> None:
    """Pick one city in the Cities multi-select (which offers the catalog's slugs), fill Train until and Reason."""
    from playwright.sync_api import expect

    _param(form, "Cities").get_by_role("combobox").click()
    expect(form.page.get_by_role("option")).to_have_text(CITIES)
    form.page.get_by_role("option", name=city, exact=True).click()
    _param(form, "Train until").get_by_role("textbox").fill(until)
    _param(form, "Reason").get_by_role("textbox").fill(reason)


def _run_count(api: httpx.Client) -> int:
    r = api.get(f"/dags/{DAG}/dagRuns", params={"limit": 1})
    assert r.status_code == 200, r.text
    return int(r.json()["total_entries"])


def test_ops_retrain_one_city_from_the_trigger_form(stack: Stack, retrain_run: dict[str, Any], chromium: str) -> None:
    """4b: signed in to the Airflow UI, an ops user retrains one city from the DAG's trigger form and sees the run
    succeed; the run asked for that city only, registered its new versions and left the global models alone.
    The form refuses a cut-off that is not a date."""
    from playwright.sync_api import expect

    with _api(stack) as api, _browser_page(chromium) as page:
        _sign_in(page, stack, f"/dags/{DAG}")

        # Every param under its title, Targets with both preselected; one city picked, a valid cut-off.
        form = _open_trigger_form(page)
        for title in FORM_TITLES:
            expect(_param(form, title)).to_be_visible()
        expect(_param(form, "Targets")).to_contain_text("eta")
        expect(_param(form, "Targets")).to_contain_text("price")
        until = datetime.now(UTC).isoformat(timespec="seconds")
        _fill_form(form, "alpha", until, "e2e: one city from the trigger form")
        expect(_param(form, "Cities")).to_contain_text("alpha")
        expect(_param(form, "Cities")).not_to_contain_text("beta-city")
        trigger = form.get_by_role("button", name="Trigger", exact=True)
        expect(trigger).to_be_enabled()
        _screenshot(form, "airflow-trigger-form.png")

        # Triggered, the UI moves to the new run's page and shows its state until it is over.
        trigger.click()
        page.wait_for_url(re.compile(rf"/dags/{DAG}/runs/[^/]+$"))
        run_id = unquote(page.url.rsplit("/runs/", 1)[1])
        assert run_id != retrain_run["run_id"]
        # Airflow's UI internals: the run page's header is the run id (a heading) with the run's state badge
        # (Airflow's own data-testid "state-badge") beside it.
        badge = page.get_by_role("heading", name=run_id, exact=True).locator("xpath=..").get_by_test_id("state-badge")
        shown = ""
        for poll in range(UI_POLLS):
            shown = badge.inner_text().strip()
            if shown in ("Success", "Failed"):
                break
            page.wait_for_timeout(2000)
            if poll % 15 == 14:
                page.reload()  # the page refreshes a running run by itself; a reload now and then does not rely on it
        else:
            state = api.get(f"/dags/{DAG}/dagRuns/{run_id}").json()["state"]
            pytest.fail(
                f"the UI shows {shown!r} (API: {state}) after {UI_POLLS} polls:\n{_failure_report(api, run_id)}"
            )
        assert shown == "Success", _failure_report(api, run_id)

        # The task table can lag the header by a refresh: reloaded, it shows the summary's end too.
        page.reload()
        expect(badge).to_have_text("Success")
        expect(page.get_by_role("row").filter(has_text="summarise")).to_contain_text("Success")
        # The summary's note, rendered on the run's page: what ops read first.
        note = re.compile(r"\d promoted · \d kept the champion · 0 skipped · 0 failed")
        expect(page.get_by_text(note)).to_be_visible()
        page.set_viewport_size({"width": 1400, "height": 1000})
        _screenshot(page, "airflow-run-success.png")
        page.get_by_role("button", name=re.compile(r"^Show Graph")).click()
        expect(badge).to_have_text("Success")
        page.wait_for_timeout(1500)  # the graph lays itself out after it appears
        _screenshot(page, "airflow-run-graph.png")

        run = api.get(f"/dags/{DAG}/dagRuns/{run_id}").json()
        assert run["state"] == "success" and run["run_type"] == "manual", run
        assert run["triggering_user_name"] == stack.admin_user, run
        assert run["conf"]["cities"] == ["alpha"] and run["conf"]["until"] == until, run["conf"]
        instances = _task_instances(api, run_id)
        fleet = [ti for ti in instances if ti["task_id"] == "train_global"]
        assert fleet and all(ti["state"] == "skipped" for ti in fleet), _failure_report(api, run_id)
        fits = [(ti["rendered_map_index"], ti["state"]) for ti in instances if ti["task_id"] == "train_city"]
        assert fits == [("alpha", "success")], _failure_report(api, run_id)

        # A cut-off that is not a date is refused and no run is made. The form itself checks only that required
        # params are there (Trigger stays enabled): the refusal is the api-server's check of the param's pattern,
        # which the form shows. Done last: the form keeps showing that error when it is opened again.
        runs_before = _run_count(api)
        page.goto(f"{stack.airflow_url}/dags/{DAG}")  # on a run's page, Trigger opens a menu first
        page.set_viewport_size(FORM_VIEWPORT)
        form = _open_trigger_form(page)
        _fill_form(form, "alpha", "next tuesday", "e2e: a cut-off that is not a date")
        trigger = form.get_by_role("button", name="Trigger", exact=True)
        if trigger.is_enabled():  # a form that checked the pattern itself would refuse by disabling it
            trigger.click()
            expect(form.get_by_text("Invalid input for param until")).to_be_visible()
        expect(form).to_be_visible()
        _screenshot(form, "airflow-trigger-form-refused.png")
        assert _run_count(api) == runs_before

    client = _mlflow(stack)
    for target in TARGETS:
        for city in ("alpha", "beta-city", GLOBAL):
            name = model_name(target, city)
            versions = client.search_model_versions(f"name = '{name}'")
            tagged = [v.version for v in versions if v.tags.get("dag_run_id") == run_id]
            assert len(tagged) == (1 if city == "alpha" else 0), (name, tagged)


def _dismiss_mlflow_panels(page: Page) -> None:
    """Close what MLflow's UI opens over a new browser's first page, if it does: a dialog about its new registry
    UI, then its assistant's side panel (each has a button named "Close")."""
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    for panel in (
        page.get_by_role("dialog").get_by_role("button", name="Close"),
        page.get_by_role("button", name="Close"),
    ):
        with contextlib.suppress(PlaywrightTimeout):
            panel.first.click(timeout=5_000)
    page.wait_for_timeout(1000)  # the dialog's backdrop fades out


def test_the_mlflow_ui_shows_the_registered_models(stack: Stack, retrain_run: dict[str, Any], chromium: str) -> None:
    """The MLflow server's UI lists the city models the REST-triggered run registered."""
    from playwright.sync_api import expect

    with _browser_page(chromium) as page:
        page.set_viewport_size({"width": 1400, "height": 900})
        page.goto(f"{stack.mlflow_url}/#/models")
        expect(page.get_by_role("heading", name="Registered Models")).to_be_visible()
        for name in sorted(model_name(t, c) for c in CITIES for t in TARGETS):
            expect(page.get_by_role("link", name=name, exact=True)).to_be_visible()
        _dismiss_mlflow_panels(page)
        _screenshot(page, "mlflow-models.png")
