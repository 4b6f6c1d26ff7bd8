"""A real browser on the Prefect UI, as a newcomer uses it after ``make demo``: headless Chromium
(Debian's ``chromium`` and ``chromium-driver`` packages, scripts/system-deps.sh) driven by Selenium.

The Prefect installation is the demo's, built by the same helpers (tests/stack/prefect_ops.py):
every deployment of prefect.yaml, a Secret block for the password, a process worker, a hot backup
run **through its deployment**, and the UI served by ``prefect server start``
(``prefect_ops.server_service``, which ``make demo`` runs on port 4200). The suite's Prefect server
is an API-only test server, so the UI here is a second ``prefect server start --no-services`` over
that server's database: the same UI showing the same deployments, runs and artifacts.
"""
from __future__ import annotations

import shutil
import socket
import time
from collections.abc import Iterator

import pytest

from tasks.catalog import catalog
from tasks.repositories import open_repository
from tests.stack import prefect_ops

pytestmark = pytest.mark.usefixtures("seeded3", "standin3")
CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
WAIT = 120  # seconds for the single-page app to render a view on a loaded machine


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def prefect_ui(deployed, tmp_path) -> Iterator[str]:
    """The Prefect UI over the session server's database (``prefect server start``, as the demo
    serves it, without the background services the session server already runs); its address."""
    from prefect.settings import get_current_settings

    url = f"http://127.0.0.1:{free_port()}"
    env = {**get_current_settings().to_environment_variables(exclude_unset=True),
           "PREFECT_HOME": str(tmp_path / "ui-home"), "PREFECT_API_URL": f"{url}/api",
           "PREFECT_UI_API_URL": f"{url}/api",
           # A reader of the session server's SQLite file: no migration, no block registration
           # at start (writes that would lock the database under the session server).
           "PREFECT_SERVER_DATABASE_MIGRATE_ON_START": "false",
           "PREFECT_SERVER_REGISTER_BLOCKS_ON_START": "false"}
    service = prefect_ops.server_service(tmp_path / "ui-server", "127.0.0.1", int(url.rsplit(":", 1)[1]),
                                         env, services=False)
    try:
        prefect_ops.start_server(service, f"{url}/api")
        yield url
    finally:
        service.stop()


@pytest.fixture
def browser() -> Iterator[object]:
    if not (shutil.which(CHROMIUM) and shutil.which(CHROMEDRIVER)):
        pytest.fail("Debian's chromium and chromium-driver are missing: run scripts/system-deps.sh")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1400,1000"):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    try:
        yield driver
    finally:
        driver.quit()


def test_the_ui_shows_deployments_a_hot_backup_report_and_the_restore_form(
        process_worker, real_stack, cluster3, prefect_ui, browser, tmp_path):
    from prefect.client.orchestration import get_client
    from selenium.webdriver.common.by import By
    from selenium.webdriver.remote.webdriver import WebDriver
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    t0 = time.monotonic()
    path, stack = prefect_ops.secret_stack(real_stack, cluster3, tmp_path)
    run = prefect_ops.run_and_wait("hot-backup/nightly-hot-backup", {"stack": str(path), "label": "browser"})
    assert run.state and run.state.is_completed(), f"{run.state}\n{process_worker.log_tail(60)}"
    with open_repository(stack) as repo:
        backup_id = next(r["id"] for r in catalog(repo) if r["status"] == "complete")
    with get_client(sync_client=True) as client:
        deployments = client.read_deployments()
        restore_id = client.read_deployment_by_name("restore/restore").id
    backup_seconds = time.monotonic() - t0

    t0 = time.monotonic()
    assert isinstance(browser, WebDriver)
    wait = WebDriverWait(browser, WAIT)

    def shows(text: str) -> None:
        wait.until(ec.text_to_be_present_in_element((By.TAG_NAME, "body"), text))

    def click(xpath: str) -> None:
        wait.until(ec.element_to_be_clickable((By.XPATH, xpath))).click()

    shots = []

    def screenshot(name: str) -> None:
        shots.append(tmp_path / f"prefect-ui-{name}.png")
        assert browser.save_screenshot(str(shots[-1]))

    browser.get(f"{prefect_ui}/deployments")
    shows(f"{len(deployments)} Deployments")
    shows("nightly-hot-backup")
    screenshot("deployments")

    # The hot backup's flow run: Completed, and its report artifact names the backup.
    browser.get(f"{prefect_ui}/runs/flow-run/{run.id}")
    shows(run.name)
    shows("Completed")
    click("//li[@id='artifacts']")
    click("//*[@id='artifacts-content']//a[.//*[normalize-space()='hot-backup-report']]")
    shows(f"Backup {backup_id}")
    screenshot("hot-backup-report")

    # The restore deployment's page, Run > Custom run: the form with its parameters, a dry run
    # until confirm is set.
    browser.get(f"{prefect_ui}/deployments/deployment/{restore_id}")
    click("//button[normalize-space()='Run']")
    click("//button[normalize-space()='Custom run']")
    for text in ("backup_id", "target_keyspace", "index_strategy", "confirm",
                 "without it nothing is changed", "Submit"):
        shows(text)
    assert f"/deployments/deployment/{restore_id}/run" in browser.current_url
    screenshot("restore-form")

    for shot in shots:
        data = shot.read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 20_000, (shot, len(data))
    print(f"hot backup through its deployment {backup_seconds:.0f}s; browser {time.monotonic() - t0:.0f}s; "
          f"screenshots: {', '.join(str(s) for s in shots)}")
