"""The console in a real headless Chromium (Selenium, Debian's `chromium` and `chromedriver`)
against a real relay process and the simulator, as an operator uses it.

Skipped, saying why, where no browser is installed (`.ci/run` installs Debian's packages).
With `UPDATE_SCREENSHOTS=1` the run saves the main pages to docs/console/*.png, which
docs/console.md shows.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from app.simulator.process import SimulatorProcess
from tests.pg import SQLITE_ONLY
from tests.relay import ADMIN_KEY, INGEST_KEY, RelayProcess, wait_until

pytestmark = [pytest.mark.process, SQLITE_ONLY]

CHROMIUM = os.environ.get("RELAY_TEST_CHROMIUM", "/usr/bin/chromium")
CHROMEDRIVER = os.environ.get("RELAY_TEST_CHROMEDRIVER", "/usr/bin/chromedriver")
SHOTS = Path(__file__).resolve().parents[2] / "docs" / "console"
HOSTILE = '<img src=x onerror="window.__pwned=1"><script>window.__pwned=2</script>'


def _why_no_browser() -> str | None:
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium is not installed (pip install -e '.[dev]')"
    for path in (CHROMIUM, CHROMEDRIVER):
        if not (os.path.isfile(path) and os.access(path, os.X_OK)):
            return f"{path} is missing: apt-get install chromium chromium-driver (as .ci/run does)"
    return None


@pytest.fixture
def browser() -> Iterator[Any]:
    reason = _why_no_browser()
    if reason is not None:
        if os.environ.get("CI"):
            pytest.fail(f"the browser tests must run in CI: {reason}")
        pytest.skip(f"no headless browser: {reason}")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for argument in (
        "--headless=new",
        "--no-sandbox",
        "--disable-dev-shm-usage",
        "--disable-gpu",
        "--window-size=1280,800",
    ):
        options.add_argument(argument)
    # The driver given explicitly: Selenium Manager never tries to download one.
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()


def shot(driver: Any, name: str) -> None:
    if os.environ.get("UPDATE_SCREENSHOTS") == "1":
        SHOTS.mkdir(parents=True, exist_ok=True)
        driver.save_screenshot(str(SHOTS / f"{name}.png"))


def text(driver: Any, css: str) -> str:
    """The text of the element `css` selects, once the page shows one (navigation settles)."""
    from selenium.webdriver.common.by import By

    found: str = wait_until(lambda: driver.find_elements(By.CSS_SELECTOR, css))[0].text
    return found


def sign_in(driver: Any, relay: RelayProcess, key: str) -> None:
    from selenium.webdriver.common.by import By

    driver.get(f"{relay.url}/console/login")
    driver.find_element(By.ID, "key").send_keys(key)
    driver.find_element(By.ID, "sign-in").click()


def test_an_operator_signs_in_searches_replays_and_signs_out(
    browser: Any, relay: RelayProcess, sim: SimulatorProcess, tmp_path: Path
) -> None:
    from selenium.webdriver.common.by import By

    sim.configure(invalid_company_ids=["hostile-co"])
    dead = relay.post_company("hostile-co", {"note": HOSTILE, "plan": "pro"}).json()["id"]
    relay.wait_for(dead, "dead")
    for i in range(3):
        fine = relay.post_company(f"acme-{i}", {"seats": 10 + i}).json()["id"]
        relay.wait_for(fine, "delivered")

    # An ingest key does not sign in.
    sign_in(browser, relay, INGEST_KEY)
    assert "needs an admin relay key" in text(browser, "#error")
    assert browser.current_url.endswith("/console/login")
    shot(browser, "login")

    # The admin key does; the overview shows what GET /status says.
    sign_in(browser, relay, ADMIN_KEY)
    wait_until(lambda: browser.current_url.endswith("/console"))
    status = relay.request("GET", "/status", key=ADMIN_KEY).json()
    assert int(text(browser, "#dead")) == status["queue"]["dead"] == 1
    shown_waiting = int(text(browser, "#queued")) + int(text(browser, "#delivering"))
    assert shown_waiting == status["queue"]["queued"] + status["queue"]["delivering"]
    assert int(text(browser, "#rate-total")) >= 3
    assert "400" in text(browser, "#last-answer") or "202" in text(browser, "#last-answer")
    shot(browser, "overview")

    # A search by company.
    browser.find_element(By.LINK_TEXT, "Deliveries").click()
    wait_until(lambda: browser.current_url.endswith("/console/deliveries"))
    shot(browser, "deliveries")
    browser.find_element(By.ID, "company_id").send_keys("acme-1")
    browser.find_element(By.ID, "search").click()
    wait_until(lambda: "company_id=acme-1" in browser.current_url)
    companies = [e.text for e in browser.find_elements(By.CSS_SELECTOR, "td.company")]
    assert companies == ["acme-1"]
    assert "company_id=acme-1" in browser.current_url

    # The dead letter's page shows the hostile value as text, and it never ran.
    browser.get(f"{relay.url}/console/deliveries/{dead}")
    assert HOSTILE in text(browser, "#metadata")
    assert browser.execute_script("return window.__pwned === undefined") is True
    assert not browser.find_elements(By.CSS_SELECTOR, "#metadata img, #metadata script")
    shot(browser, "delivery")

    # A post without the CSRF token, from the signed-in page, is refused.
    refused = browser.execute_async_script(
        "const done = arguments[arguments.length - 1];"
        f"fetch('/console/deliveries/{dead}/replay', {{method: 'POST', "
        "headers: {'content-type': 'application/x-www-form-urlencoded'}, body: 'x=1'})"
        ".then(r => done(r.status));"
    )
    assert refused == 403
    assert relay.delivery(dead)["status"] == "dead"

    # The dead letters page, then Replay: the update reaches the simulator.
    browser.find_element(By.LINK_TEXT, "Dead letters").click()
    wait_until(lambda: browser.current_url.endswith("/console/dead-letters"))
    assert text(browser, "#matching") == "1"
    shot(browser, "dead-letters")
    sim.configure(invalid_company_ids=[])
    browser.find_element(By.CSS_SELECTOR, "button.replay").click()
    assert "Replayed" in text(browser, "#done")
    relay.wait_for(dead, "delivered")
    assert wait_until(lambda: (sim.company("hostile-co") or {}).get("note") == HOSTILE)

    # Sign out: the console asks to sign in again.
    browser.find_element(By.ID, "sign-out").click()
    wait_until(lambda: browser.current_url.endswith("/console/login"))
    browser.get(f"{relay.url}/console")
    assert browser.current_url.endswith("/console/login")
    assert "sign-in" in relay.logs() and '"caller":"ops"' in relay.logs()
    assert "console sign-out" in relay.logs()
    assert ADMIN_KEY not in relay.logs() and INGEST_KEY not in relay.logs()


def test_the_other_pages_in_the_browser(
    browser: Any, relay: RelayProcess, sim: SimulatorProcess
) -> None:
    from selenium.webdriver.common.by import By

    first = relay.post_company("props-co", {"seats": 3}).json()["id"]
    relay.wait_for(first, "delivered")
    relay.post_company("props-co", {"seats": "three"})
    sign_in(browser, relay, ADMIN_KEY)
    wait_until(lambda: browser.find_elements(By.LINK_TEXT, "Properties"))[0].click()
    wait_until(lambda: browser.current_url.endswith("/console/properties"))
    assert text(browser, "#conflicts") == "1"
    shot(browser, "properties")
    browser.find_element(By.LINK_TEXT, "Bulk jobs").click()
    wait_until(lambda: "Bulk jobs" in browser.title)
    browser.find_element(By.LINK_TEXT, "Backfills").click()
    wait_until(lambda: "Backfills" in browser.title)
    assert browser.find_elements(By.CSS_SELECTOR, "nav .planned") == []  # every page is built
    # The page is readable on a phone: nothing wider than the screen but the tables' scroll.
    browser.set_window_size(390, 844)
    browser.get(f"{relay.url}/console")
    width = browser.execute_script("return document.documentElement.scrollWidth")
    assert width <= 400


def test_an_operator_erases_companies_and_lifts_a_suppression(
    browser: Any, relay: RelayProcess, sim: SimulatorProcess
) -> None:
    from selenium.webdriver.common.by import By

    first = relay.post_company("leaving-co", {"plan": "pro"}).json()["id"]
    relay.wait_for(first, "delivered")
    sign_in(browser, relay, ADMIN_KEY)
    wait_until(lambda: browser.find_elements(By.LINK_TEXT, "Erasures"))[0].click()
    wait_until(lambda: browser.current_url.endswith("/console/erasures"))

    # The form, then the confirmation page: nothing is erased before its button.
    browser.find_element(By.ID, "company_ids").send_keys("leaving-co\n\nleft-co\nleaving-co\n")
    browser.find_element(By.ID, "reason").send_keys("Customer asked (ticket 7)")
    browser.find_element(By.ID, "review").click()
    assert text(browser, "#count") == "2"
    assert "This cannot be undone" in browser.page_source
    assert relay.request("GET", "/erasures", key=ADMIN_KEY).json()["items"] == []
    browser.find_element(By.ID, "confirm").click()
    wait_until(lambda: "/console/erasures/er_" in browser.current_url)
    assert "Erasure started" in text(browser, "#done")
    assert text(browser, "#companies") == "2"
    erasure_id = text(browser, "#erasure-id")
    assert "leaving-co" not in browser.page_source  # counted, never listed
    suppressed = relay.request("GET", "/suppressions/leaving-co", key=ADMIN_KEY).json()
    assert suppressed["suppressed"] is True and suppressed["erasure_id"] == erasure_id

    # Listed, newest first.
    browser.find_element(By.LINK_TEXT, "Erasures").click()
    wait_until(lambda: browser.current_url.endswith("/console/erasures"))
    listed = [e.text for e in browser.find_elements(By.CSS_SELECTOR, "a.erasure")]
    assert listed == [erasure_id]
    shot(browser, "erasures")

    # Look the company up, then lift its suppression (after a confirmation).
    browser.find_element(By.LINK_TEXT, "Suppressions").click()
    wait_until(lambda: browser.current_url.endswith("/console/suppressions"))
    browser.find_element(By.ID, "company_id").send_keys("leaving-co")
    browser.find_element(By.ID, "look-up").click()
    assert text(browser, "#suppressed") == "suppressed"
    assert text(browser, "#by-erasure") == erasure_id
    shot(browser, "suppressions")
    browser.find_element(By.ID, "lift").click()
    wait_until(lambda: "/console/suppressions/confirm" in browser.current_url)
    browser.find_element(By.ID, "confirm").click()
    assert "Suppression lifted" in text(browser, "#done")
    assert text(browser, "#suppressed") == "not suppressed"
    lifted = relay.request("GET", "/suppressions/leaving-co", key=ADMIN_KEY).json()
    assert lifted["suppressed"] is False
    left = relay.request("GET", "/suppressions/left-co", key=ADMIN_KEY).json()
    assert left["suppressed"] is True
    assert wait_until(lambda: "suppression lifted" in relay.logs())
    assert '"via":"console"' in relay.logs()
