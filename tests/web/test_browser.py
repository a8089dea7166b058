"""The console in a real browser (Debian's chromium through chromedriver): what a person
clicks through, on the real ``runwarden web`` server."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine

from tests.acceptance.cli import RUNWARDEN
from tests.conftest import IN_CI
from tests.servers import free_port
from tests.web.conftest import INJECTION, POLICY, Seeded, seed_workers

pytestmark = pytest.mark.slow

CHROMIUM = shutil.which("chromium")
CHROMEDRIVER = shutil.which("chromedriver")


@pytest.fixture
def console_url(engine: Engine, seeded: Seeded, db_url: str, tmp_path: Path) -> Iterator[str]:
    """``runwarden web`` on a free port over the seeded database."""
    policy = tmp_path / "policy.toml"
    policy.write_text(POLICY)
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("RUNWARDEN_")}
    env |= {"RUNWARDEN_DATABASE_URL": db_url, "RUNWARDEN_POLICY_FILE": str(policy)}
    log = tmp_path / "web.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [RUNWARDEN, "web", "--port", str(port)], env=env, stdout=out, stderr=subprocess.STDOUT
        )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                urllib.request.urlopen(f"{url}/login", timeout=2).close()
                break
            except OSError:
                if process.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(f"runwarden web did not start:\n{log.read_text()}")
                time.sleep(0.1)
        assert f"runwarden console on {url}/" in log.read_text()
        yield url
    finally:
        process.terminate()
        process.wait(10)


@pytest.fixture
def browser() -> Iterator[Any]:
    if CHROMIUM is None or CHROMEDRIVER is None:
        message = "needs Debian's chromium and chromium-driver (scripts/ensure-servers)"
        if IN_CI:
            pytest.fail(f"CI needs the browser: {message}", pytrace=False)
        pytest.skip(message)
    # Selenium must use the driver given, never look for or download one.
    os.environ["SE_OFFLINE"] = "true"
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for argument in ("--headless=new", "--no-sandbox", "--disable-gpu", "--window-size=1280,900"):
        options.add_argument(argument)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
    driver.implicitly_wait(5)
    try:
        yield driver
        # Nothing the console serves breaks its own Content-Security-Policy.
        refused = [
            e["message"] for e in driver.get_log("browser") if "Content Security" in e["message"]
        ]
        assert refused == []
    finally:
        driver.quit()


def _wait_for_url(browser: Any, ending: str) -> None:
    from selenium.webdriver.support import expected_conditions
    from selenium.webdriver.support.ui import WebDriverWait

    WebDriverWait(browser, 10).until(expected_conditions.url_contains(ending))


def _no_alert(browser: Any) -> None:
    from selenium.common.exceptions import NoAlertPresentException

    with pytest.raises(NoAlertPresentException):
        browser.switch_to.alert.text  # noqa: B018 - the access is the check


def test_browser__overview_runs_filter_failed_open_one_read_why_and_preview(
    browser: Any, console_url: str, seeded: Seeded
) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    browser.get(console_url + "/")
    assert browser.find_element(By.ID, "stale-total").text == "2"
    assert "run.job_failed" in browser.find_element(By.ID, "forced-chart").text

    browser.find_element(By.LINK_TEXT, "Runs").click()
    _wait_for_url(browser, "/runs")
    Select(browser.find_element(By.ID, "filter-outcome")).select_by_value("failed")
    browser.find_element(By.ID, "apply-filters").click()
    _wait_for_url(browser, "outcome=failed")
    links = browser.find_elements(By.CSS_SELECTOR, "a.run-link")
    assert [link.text for link in links] == [str(seeded.bridged)]

    links[0].click()
    _wait_for_url(browser, f"/runs/{seeded.bridged}")
    assert browser.find_element(By.ID, "reason-code").text == "run.job_failed"
    why = browser.find_element(By.ID, "why").text
    assert why.startswith("Why: completed with outcome failed: run.job_failed by bridge at ")
    # The markup in the tenant's name and the failure message is text on the page.
    assert INJECTION in browser.find_element(By.ID, "tenant").text
    assert INJECTION in browser.find_element(By.ID, "reason-message").text
    assert browser.find_elements(By.CSS_SELECTOR, "main img") == []
    _no_alert(browser)

    browser.find_element(By.LINK_TEXT, "Overview").click()
    _wait_for_url(browser, console_url + "/")
    browser.find_element(By.ID, "reconcile-preview").click()
    _wait_for_url(browser, "/reconcile/preview")
    summary = browser.find_element(By.ID, "reconcile-summary").text
    assert summary == (
        "dry run: 2 candidates, 2 would be force-failed, 0 skipped; nothing was written"
    )
    rows = browser.find_elements(By.CSS_SELECTOR, "#changes tbody tr")
    assert {row.find_element(By.TAG_NAME, "a").text for row in rows} == {
        str(seeded.stale_queued),
        str(seeded.stale_running),
    }


def test_browser__audit_row_opens_its_metadata_in_the_side_panel(
    browser: Any, console_url: str, seeded: Seeded
) -> None:
    from selenium.webdriver.common.by import By

    browser.get(console_url + "/audit")
    panel = browser.find_element(By.ID, "panel")
    assert not panel.is_displayed()
    browser.find_element(By.CSS_SELECTOR, "a.open-row").click()
    assert panel.is_displayed()
    assert '"reason_code": "run.job_failed"' in panel.text
    assert "hunter2" not in panel.text
    assert "open=" in browser.current_url
    _no_alert(browser)


def test_browser__workers_page_shows_each_workers_state_and_a_run_names_its_worker(
    browser: Any, console_url: str, seeded: Seeded
) -> None:
    from selenium.webdriver.common.by import By

    workers = seed_workers(seeded)
    browser.get(console_url + "/")
    assert browser.find_element(By.ID, "workers-alive").text == "2"
    browser.find_element(By.LINK_TEXT, "Workers").click()
    _wait_for_url(browser, "/workers")
    states = {
        row.get_attribute("id"): row.find_element(By.CSS_SELECTOR, "td.state").text
        for row in browser.find_elements(By.CSS_SELECTOR, "#workers tbody tr")
    }
    assert states == {
        f"worker-{workers.alive_too}": "alive",
        f"worker-{workers.just_stopped}": "stopped",
        f"worker-{workers.stopped}": "stopped",
        f"worker-{workers.lost}": "lost",
        f"worker-{workers.alive}": "alive",
    }
    lost = browser.find_element(By.ID, f"worker-{workers.lost}")
    assert "celery@lost" in lost.text

    browser.get(f"{console_url}/runs/{workers.on_lost}")
    assert browser.find_element(By.ID, "worker-state").text == "lost"
    browser.find_element(By.CSS_SELECTOR, "#worker a").click()
    _wait_for_url(browser, f"/workers#worker-{workers.lost}")
    _no_alert(browser)
