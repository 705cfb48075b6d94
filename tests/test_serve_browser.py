"""The page of zoo.serve in headless Chromium: type a title fragment, pick an item, ask for recommendations, see
their titles. Selenium drives Debian's ``chromium`` through the ``chromium-driver`` built from the same source
(so the two versions always match, and nothing is downloaded at test time); ``.ci/run`` installs both.

The screenshot goes to ``$ZOO_TEST_ARTIFACTS`` when set, else ``tests/artifacts/`` (git-ignored)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

pytest.importorskip("fastapi", reason="the 'serve' extra is not installed")
pytest.importorskip("selenium", reason="selenium is not installed (the 'dev' extra)")
from conftest import REPO  # noqa: E402
from test_serve import CycleModel, running, trained_run  # noqa: E402, F401 (trained_run: a fixture)

from zoo.serve import create_app  # noqa: E402

CHROMIUM = os.environ.get("ZOO_CHROMIUM", "/usr/bin/chromium")
CHROMEDRIVER = os.environ.get("ZOO_CHROMEDRIVER", shutil.which("chromedriver") or "/usr/bin/chromedriver")
ARTIFACTS = Path(os.environ.get("ZOO_TEST_ARTIFACTS") or REPO / "tests" / "artifacts")

pytestmark = pytest.mark.skipif(
    not (os.access(CHROMIUM, os.X_OK) and os.access(CHROMEDRIVER, os.X_OK)),
    reason=f"needs {CHROMIUM} and {CHROMEDRIVER} (apt-get install chromium chromium-driver)",
)


@pytest.fixture
def browser():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu", "--window-size=900,900"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(30)
    yield driver
    driver.quit()


def use_the_page(driver, url: str, fragment: str, screenshot: str) -> tuple[list[str], list[str]]:
    """Open the page, type ``fragment``, pick the first suggestion, recommend; returns (picked ids, result
    titles) and saves a screenshot."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    wait = WebDriverWait(driver, 20)
    driver.get(url)
    wait.until(lambda d: "items" in d.find_element(By.ID, "model").text)  # /health answered
    driver.find_element(By.ID, "search").send_keys(fragment)
    suggestion = wait.until(ec.element_to_be_clickable((By.CSS_SELECTOR, "#suggestions button")))
    assert fragment.lower() in suggestion.text.lower()
    suggestion.click()
    picked = [li.get_attribute("data-item") for li in driver.find_elements(By.CSS_SELECTOR, "#history li")]
    k = driver.find_element(By.ID, "k")
    k.clear()
    k.send_keys("5")
    driver.find_element(By.ID, "recommend").click()
    wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#results li")) == 5)
    results = driver.find_elements(By.CSS_SELECTOR, "#results li")
    titles = [li.find_element(By.CSS_SELECTOR, "span").text for li in results]
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    assert driver.save_screenshot(str(ARTIFACTS / screenshot))
    return picked, titles


def test_page_search_pick_and_recommend(browser):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    model = CycleModel()
    with running(create_app(model)) as url:
        picked, titles = use_the_page(browser, url, "tiger", "serve_page.png")
        assert picked == ["105"]  # "The Tiger Book 4"
        assert titles == [
            f"The {word} Book {i}" for i, word in enumerate(("Maple", "Ocean", "Ember", "Frost", "Lunar"), 5)
        ]
        assert (ARTIFACTS / "serve_page.png").stat().st_size > 1000

        # a bad request shows the server's one line on the page
        browser.find_element(By.ID, "clear").click()
        browser.find_element(By.ID, "recommend").click()
        error = browser.find_element(By.ID, "error")
        WebDriverWait(browser, 10).until(lambda d: error.text)
        assert error.text == "history is empty: give at least one item id"


def test_page_on_a_trained_run(browser, trained_run):  # noqa: F811 (the fixture imported above)
    import zoo

    model = zoo.load(trained_run)
    with running(create_app(model)) as url:
        picked, titles = use_the_page(browser, url, "tiger", "serve_page_sasrec.png")
    assert picked == ["5"]  # "the tiger book" of the synthetic corpus
    expected = [r["title"] for r in model.recommend(["5"], k=5, exclude_seen=True)]
    assert titles == expected and len(set(titles)) == 5 and "the tiger book" not in titles
