"""The page of `vitkit serve` in a real browser (headless Chromium driven by selenium): a person drops a
good image and a bad file and sees the top classes, the rollout overlay and the error line.

Needs Debian's ``chromium`` and ``chromium-driver`` (``make setup-test`` installs them as root). Without
them the test is skipped locally, and fails under CI (``CI=true``), where a skip would hide that it never ran.
Set ``VITKIT_SERVE_SCREENSHOT=docs/serve-page.png`` to keep a screenshot of the page.
"""
import io
import json
import os
import shutil
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import tiny_classifier_run

from vitkit.serve import Predictor, ServeSettings, create_app, running

CHROMIUM = [os.environ.get("CHROMIUM"), "/usr/bin/chromium", shutil.which("chromium"), shutil.which("chromium-browser")]
CHROMEDRIVER = [os.environ.get("CHROMEDRIVER"), "/usr/bin/chromedriver", shutil.which("chromedriver")]


def first_file(candidates: list[str | None]) -> str | None:
    return next((c for c in candidates if c and Path(c).is_file()), None)


def missing(what: str) -> None:
    message = f"{what}; install chromium and chromium-driver (make setup-test does, as root)"
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(message + " - under CI this test must run, not skip")
    pytest.skip(message)


@pytest.fixture(scope="module")
def browser():
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        missing("selenium is not installed")
    chromium, driver_path = first_file(CHROMIUM), first_file(CHROMEDRIVER)
    if chromium is None or driver_path is None:
        missing(f"no {'chromium' if chromium is None else 'chromedriver'} found")
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                "--window-size=900,700"):
        options.add_argument(arg)
    driver = webdriver.Chrome(options=options, service=Service(driver_path))
    yield driver
    driver.quit()


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    folder = tmp_path_factory.mktemp("browser") / "demo-run"
    classifier, config, model = tiny_classifier_run(folder)
    with running(create_app(Predictor(classifier, config, str(folder), "torch, fp32", model=model),
                            ServeSettings())) as url:
        yield url


@pytest.mark.slow
def test_a_person_drops_a_good_image_and_a_bad_file(browser, server, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    good = tmp_path / "shoe.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 40), dtype=np.uint8)).save(good)
    bad = tmp_path / "notes.png"
    bad.write_text("not an image at all")
    with urllib.request.urlopen(urllib.request.Request(server + "/predict?name=shoe.png", data=good.read_bytes()),
                                timeout=30) as r:
        expected = [t["class"] for t in json.loads(r.read())["topk"]]

    browser.get(server + "/")
    wait = WebDriverWait(browser, 30)
    wait.until(lambda d: "demo-run: 3 classes" in d.find_element(By.ID, "about").text)
    browser.find_element(By.ID, "files").send_keys(f"{good}\n{bad}")  # as choosing both files in the dialog
    wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, ".card .error")) == 1
               and len(d.find_elements(By.CSS_SELECTOR, ".card img.overlay")) == 1)
    cards = {card.find_element(By.CLASS_NAME, "name").text: card
             for card in browser.find_elements(By.CLASS_NAME, "card")}
    assert set(cards) == {"shoe.png", "notes.png"}

    rows = cards["shoe.png"].find_elements(By.CSS_SELECTOR, ".row span")
    assert [row.text for row in rows] == expected and len(expected) == 3  # --topk 5, capped at the 3 classes
    overlay = cards["shoe.png"].find_element(By.CSS_SELECTOR, "img.overlay")
    wait.until(lambda d: d.execute_script("return arguments[0].complete && arguments[0].naturalWidth", overlay))
    assert overlay.get_attribute("src").startswith("data:image/png;base64,")
    assert browser.execute_script("return [arguments[0].naturalWidth, arguments[0].naturalHeight]",
                                  overlay) == [448, 224]  # the input beside its rollout, 14x enlarged
    assert not cards["notes.png"].find_elements(By.CSS_SELECTOR, ".row")
    assert cards["notes.png"].find_element(By.CLASS_NAME, "error").text == \
        "notes.png: unreadable image data (corrupt, truncated, or not really a .png file)"

    png = browser.get_screenshot_as_png()
    assert Image.open(io.BytesIO(png)).size[0] > 0
    if os.environ.get("VITKIT_SERVE_SCREENSHOT"):
        Path(os.environ["VITKIT_SERVE_SCREENSHOT"]).write_bytes(png)
