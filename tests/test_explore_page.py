"""`cinn-sr explore` in a real browser: headless Chromium driven by Selenium.

Skipped (with the reason) when Chromium, chromedriver or Selenium is missing, except under
CI (`CI` set), where it fails instead: `.ci/run` installs Debian's chromium and
chromium-driver.
"""

import base64
import io
import json
import os
import shutil
import subprocess
import sys
import time

import numpy as np
import pytest
from flow_helpers import photo_crop
from PIL import Image

from cinn_sr.datasets import imresize, write_image


def _browser_or_skip():
    missing = [name for name in ("chromium", "chromedriver") if shutil.which(name) is None]
    try:
        import selenium  # noqa: F401
    except ImportError:
        missing.append("selenium (pip)")
    if missing:
        reason = f"no browser to test the page with: {', '.join(missing)} not installed"
        if os.environ.get("CI"):
            pytest.fail(reason)
        pytest.skip(reason)


@pytest.fixture
def page_url(tmp_path):
    """`cinn-sr explore small-4x --port 0` running; its URL."""
    process = subprocess.Popen(
        [sys.executable, "-m", "cli", "explore", "small-4x", "--port", "0", "--device", "cpu"],
        stdout=subprocess.PIPE, stderr=open(tmp_path / "stderr.txt", "w"), text=True,
    )
    line = process.stdout.readline()
    assert line.startswith("explore: open http://127.0.0.1:"), (line, _text(tmp_path))
    yield line.split()[2]
    process.terminate()
    process.wait(timeout=20)
    assert "Traceback" not in _text(tmp_path)


def _text(tmp_path) -> str:
    return (tmp_path / "stderr.txt").read_text()


@pytest.fixture
def browser():
    _browser_or_skip()
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage",
                     "--window-size=1400,1100"):
        options.add_argument(argument)
    options.binary_location = shutil.which("chromium")
    driver = webdriver.Chrome(service=Service(shutil.which("chromedriver")), options=options)
    yield driver
    driver.quit()


def _image(driver, element_id: str) -> np.ndarray:
    url = driver.find_element("id", element_id).get_attribute("src")
    with Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1]))) as image:
        return np.array(image.convert("RGB"))


def _wait_for_render(driver, count: int, timeout: float = 60) -> None:
    end = time.time() + timeout
    while time.time() < end:
        shown = driver.find_element("tag name", "body").get_attribute("data-rendered")
        if int(shown or 0) >= count:
            return
        message = driver.find_element("id", "message").text
        assert not message, message
        time.sleep(0.1)
    raise AssertionError(f"the page did not show sample {count} within {timeout} s")


def _paint_stroke(driver, canvas, points) -> None:
    from selenium.webdriver.common.action_chains import ActionChains

    size = canvas.size
    (x0, y0), rest = points[0], points[1:]
    actions = ActionChains(driver).move_to_element_with_offset(
        canvas, int(x0 * size["width"] - size["width"] / 2),
        int(y0 * size["height"] - size["height"] / 2),
    ).click_and_hold()
    last = (x0, y0)
    for x, y in rest:
        actions.move_by_offset(int((x - last[0]) * size["width"]),
                               int((y - last[1]) * size["height"]))
        last = (x, y)
    actions.release().perform()


def _painted_mask(driver) -> np.ndarray:
    url = driver.execute_script("return document.getElementById('paint').toDataURL();")
    with Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1]))) as image:
        return np.array(image.convert("RGBA"))[..., 3] > 127


def test_the_page_samples_moves_with_the_slider_and_resamples_a_painted_region(
    page_url, browser, tmp_path
):
    from selenium.webdriver.common.action_chains import ActionChains

    lr = imresize(photo_crop("chelsea", 40, 120, 192), 1 / 4).clamp(0, 1)  # 48 x 48
    write_image(tmp_path / "cat.png", lr)
    (tmp_path / "notes.txt").write_text("not an image")
    browser.get(page_url)
    upload = browser.find_element("id", "file")
    upload.send_keys(str(tmp_path / "notes.txt"))
    end = time.time() + 30
    while "not a recognised image file" not in browser.find_element("id", "message").text:
        assert time.time() < end, "no error message for an unreadable upload"
        time.sleep(0.1)

    upload.send_keys(str(tmp_path / "cat.png"))
    _wait_for_render(browser, 1)
    first = _image(browser, "sr")
    assert first.shape == (192, 192, 3)
    assert "LR-PSNR" in browser.find_element("id", "metrics").text

    slider = browser.find_element("id", "temperature")
    ActionChains(browser).click_and_hold(slider).move_by_offset(-slider.size["width"] // 3, 0) \
        .release().perform()
    _wait_for_render(browser, 2)
    assert browser.find_element("id", "temperature-value").text != "0.70"
    slid = _image(browser, "sr")
    assert not np.array_equal(slid, first)

    canvas = browser.find_element("id", "paint")
    _paint_stroke(browser, canvas, [(0.3, 0.3), (0.5, 0.35), (0.6, 0.5), (0.4, 0.6)])
    mask = _painted_mask(browser)
    assert 0.02 < mask.mean() < 0.5
    browser.find_element("id", "resample").click()
    _wait_for_render(browser, 3)
    resampled = _image(browser, "sr")
    assert np.array_equal(resampled[~mask], slid[~mask])  # outside: bit-identical
    change = np.abs(resampled.astype(int) - slid.astype(int)).max(-1)
    assert (change[mask] > 2).mean() > 0.3
    assert browser.find_element("id", "message").text == ""
    settings = json.loads(browser.execute_async_script(
        "const done = arguments[arguments.length - 1];"
        "fetch(document.getElementById('download-settings').href)"
        ".then(r => r.text()).then(done);"
    ))
    assert settings["format"] == "cinn-sr-explore" and len(settings["regions"]) == 1
    browser.save_screenshot(str(tmp_path / "explore.png"))
    assert (tmp_path / "explore.png").stat().st_size > 10_000
