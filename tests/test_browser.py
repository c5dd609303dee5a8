"""`difflab explore` in a real headless browser (Debian's Chromium driven by Selenium; `make
test-browser` installs both): the page loads, the 2-D lab's plot and error follow the sampler and
the steps, bad requests show their message on the page and the server goes on, the image lab and
the training view draw; a screenshot of each lab goes to docs/.

The models are tiny ones trained here; set DIFFLAB_EXPLORE_DIRS (paths joined by ':') to use others,
e.g. `DIFFLAB_EXPLORE_DIRS=difflab-demo:runs/moons make test-browser` for the docs' screenshots.
"""
import io
import os
import shutil
import threading
import time
from pathlib import Path

import pytest
from PIL import Image

pytestmark = [pytest.mark.browser, pytest.mark.usefixtures("one_thread")]
webdriver = pytest.importorskip("selenium.webdriver", reason="make test-browser installs selenium")

from selenium.webdriver.common.action_chains import ActionChains  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.common.keys import Keys  # noqa: E402
from selenium.webdriver.support.ui import Select  # noqa: E402

from difflab.cli import main  # noqa: E402
from difflab.explore import make_server  # noqa: E402

DOCS = Path(__file__).resolve().parents[1] / "docs"
TIMEOUT = 120  # seconds for one update on a loaded 2-core machine


@pytest.fixture(scope="module")
def dirs(tmp_path_factory):
    """A 2-D model and an image training run: DIFFLAB_EXPLORE_DIRS, or tiny ones trained here."""
    given = os.environ.get("DIFFLAB_EXPLORE_DIRS")
    if given:
        return given.split(":")
    root = tmp_path_factory.mktemp("explore")
    assert main(["train", "--preset", "toy2d", "--out", str(root / "moons"), "--steps", "30",
                 "--batch-size", "64"]) == 0
    assert main(["train", "--preset", "digits-small", "--out", str(root / "digits"), "--steps", "4",
                 "--batch-size", "8", "--set", "sample_every=2", "--set", "log_every=1"]) == 0
    return [str(root / "moons"), str(root / "digits")]


@pytest.fixture(scope="module")
def url(dirs):
    server = make_server(dirs, port=0, device="cpu")
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/"
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="module")
def browser():
    chromium, driver = shutil.which("chromium"), shutil.which("chromedriver")
    if not chromium or not driver:
        pytest.skip("needs Debian's chromium and chromium-driver (make test-browser installs them)")
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1480,1250",
                 "--hide-scrollbars"):
        options.add_argument(flag)
    b = webdriver.Chrome(options=options, service=webdriver.ChromeService(executable_path=driver))
    b.set_script_timeout(TIMEOUT)
    yield b
    b.quit()


def screenshot(browser, name: str):
    """Save the page's top (where the plots are) as docs/NAME, in 256 colours (a third of the bytes)."""
    wait_for(browser, "window.explore.busy === 0", "the page to finish its requests")
    browser.execute_script("document.activeElement.blur(); window.scrollTo(0, 0);")
    time.sleep(0.3)
    image = Image.open(io.BytesIO(browser.get_screenshot_as_png())).convert("RGB")
    image.quantize(256, method=Image.Quantize.FASTOCTREE).save(DOCS / name, optimize=True)


def wait_for(browser, condition, what: str, timeout: float = TIMEOUT):
    """Poll a JavaScript expression until it is truthy; its value."""
    end = time.time() + timeout
    while time.time() < end:
        value = browser.execute_script(f"return {condition};")
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what} ({condition})")


def counter(browser, name: str) -> int:
    return browser.execute_script(f"return window.explore.{name};")


def plot_pixels(browser, canvas_id: str) -> tuple[str, int]:
    """The canvas's PNG data URL (to see it change) and how many of its pixels are not white."""
    return browser.execute_script(f"""
        const c = document.getElementById('{canvas_id}');
        const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
        let n = 0; for (let i = 0; i < d.length; i += 4) if (d[i] < 250 || d[i + 1] < 250 || d[i + 2] < 250) n++;
        return [c.toDataURL(), n];""")


def error_value(browser) -> float:
    return float(browser.find_element(By.ID, "error-value").get_attribute("data-error"))


def change(browser, element_id: str, value):
    """Set a control as a user would: pick an option, or type a number and leave the box."""
    element = browser.find_element(By.ID, element_id)
    if element.tag_name == "select":
        Select(element).select_by_value(str(value))
    else:  # select all and type over it (clear() would send a change of its own, with an empty box)
        element.send_keys(Keys.CONTROL, "a")
        element.send_keys(str(value))
        browser.execute_script("arguments[0].dispatchEvent(new Event('change'))", element)


def test_2d_lab_follows_sampler_and_steps(browser, url):
    browser.get(url)
    wait_for(browser, "window.explore && window.explore.updates2d >= 1 && window.explore.updatesError >= 1 && "
                      "window.explore.updatesCurve >= 1", "the first plot, error and curve")
    first_plot, inked = plot_pixels(browser, "plot2d")
    assert inked > 5000, "the 2-D plot is blank"
    first_error = error_value(browser)
    assert 0 < first_error < 10

    change(browser, "sampler", "euler")
    wait_for(browser, "window.explore.updates2d >= 2 && window.explore.updatesError >= 2",
             "the plot and the error after changing the sampler")
    euler_error = error_value(browser)
    assert euler_error != first_error
    assert "euler" in browser.execute_script("return document.getElementById('sampler').value")

    curves = counter(browser, "updatesCurve")
    change(browser, "steps", 5)
    wait_for(browser, "window.explore.updates2d >= 3 && window.explore.updatesError >= 3",
             "the plot and the error after changing the steps")
    wait_for(browser, f"window.explore.updatesCurve > {curves}", "the error curve after changing the steps")
    assert error_value(browser) > euler_error  # Euler with 5 steps is worse than with 20
    assert browser.find_element(By.ID, "frame").get_attribute("max") == "5"
    assert plot_pixels(browser, "plot2d")[0] != first_plot
    assert "5 denoiser calls" in browser.find_element(By.ID, "error-value").text
    # Every timing from a control change to the redrawn plot and to the error was recorded.
    assert len(browser.execute_script("return window.explore.timings")) >= 3
    assert len(browser.execute_script("return window.explore.errorTimings")) >= 3


def test_bad_requests_show_on_the_page_and_the_server_goes_on(browser, url):
    browser.get(url)
    wait_for(browser, "window.explore && window.explore.updates2d >= 1", "the first plot")
    box = browser.find_element(By.ID, "error-2d")
    change(browser, "steps", 0)
    wait_for(browser, "!document.getElementById('error-2d').hidden", "the error message")
    assert "steps must be an integer from 1 to 200" in box.text
    # An unknown sampler (a stale page, a typed URL): the server says which ones exist.
    browser.execute_script("""const s = document.getElementById('sampler'), o = document.createElement('option');
        o.value = 'nope'; o.textContent = 'nope'; s.appendChild(o);""")
    change(browser, "steps", 8)  # a valid request first: the message goes away
    wait_for(browser, "window.explore.updates2d >= 2 && document.getElementById('error-2d').hidden", "recovery")
    change(browser, "sampler", "nope")
    wait_for(browser, "!document.getElementById('error-2d').hidden", "the unknown sampler's message")
    assert "unknown sampler 'nope'" in box.text and "dpmpp_2m" in box.text
    change(browser, "sampler", "heun")
    wait_for(browser, "window.explore.updates2d >= 3 && document.getElementById('error-2d').hidden", "recovery")
    # A model that is not loaded.
    browser.find_element(By.CSS_SELECTOR, "nav .tab[data-tab=image]").click()
    browser.execute_script("""const s = document.getElementById('img-model'), o = document.createElement('option');
        o.value = 'missing'; o.textContent = 'missing'; s.appendChild(o);""")
    change(browser, "img-model", "missing")
    wait_for(browser, "!document.getElementById('error-image').hidden", "the missing model's message")
    assert "no model or run named 'missing'" in browser.find_element(By.ID, "error-image").text


def test_every_control_has_an_explanation(browser, url):
    browser.get(url)
    wait_for(browser, "window.explore && window.explore.config", "the page")
    missing = browser.execute_script("""
        return [...document.querySelectorAll('.control')].filter((c) => {
            const help = c.querySelector('.help');
            return !help || help.textContent.trim().length < 30 || !/(19|20)\\d\\d|difflab/.test(help.textContent);
        }).map((c) => c.innerHTML.slice(0, 80));""")
    assert not missing, f"controls without an explanation citing its paper: {missing}"


def test_2d_lab_screenshot(browser, url):
    browser.get(url)
    wait_for(browser, "window.explore && window.explore.updates2d >= 1", "the first plot")
    change(browser, "problem", "moons")
    change(browser, "label", "0")
    wait_for(browser, "window.explore.busy === 0 && window.explore.updates2d >= 2", "the moons")
    browser.execute_script("""const f = document.getElementById('frame'); f.value = 12;
        f.dispatchEvent(new Event('input'));""")
    screenshot(browser, "explore_2d.png")


def test_image_lab(browser, url):
    browser.get(url)
    wait_for(browser, "window.explore && window.explore.config", "the page")
    browser.find_element(By.CSS_SELECTOR, "nav .tab[data-tab=image]").click()
    wait_for(browser, "window.explore.updatesImage >= 1", "the reverse process")
    steps = int(browser.find_element(By.ID, "img-steps").get_attribute("value"))
    rows = browser.find_elements(By.CSS_SELECTOR, "#reverse tr")
    assert len(rows) == 1 + 2 * 4  # header, then x_i and D(x_i) for each of 4 images
    assert len(rows[1].find_elements(By.TAG_NAME, "canvas")) == steps + 1
    wait_for(browser, "document.querySelectorAll('#compare canvas').length == 16", "the samplers side by side")
    wait_for(browser, "document.getElementById('draw').getContext('2d').getImageData(128, 128, 1, 1).data[3] > 0",
             "the source image")
    canvas = browser.find_element(By.ID, "draw")
    browser.execute_script("arguments[0].scrollIntoView({block: 'center'})", canvas)
    ActionChains(browser).move_to_element_with_offset(canvas, -60, -60).click_and_hold() \
        .move_by_offset(120, 0).move_by_offset(0, 120).release().perform()
    browser.find_element(By.ID, "run-inpaint").click()
    wait_for(browser, "document.querySelectorAll('#inpaint-out canvas').length == 5", "the inpainted images")
    browser.execute_script("""const s = document.getElementById('strength'); s.value = 0.6;
        s.dispatchEvent(new Event('change'));""")
    wait_for(browser, "document.querySelectorAll('#sdedit-out canvas').length == 5", "the SDEdit images")
    assert browser.find_element(By.ID, "error-image").get_attribute("hidden")
    screenshot(browser, "explore_image.png")


def test_training_view(browser, url):
    browser.get(url + "?tab=training")
    wait_for(browser, "window.explore && window.explore.config", "the page")
    run = browser.execute_script("return window.explore.config.image_models[0].name")
    change(browser, "run", run)  # the image run: it saved several grids
    wait_for(browser, f"document.getElementById('loss-caption').dataset.run === '{run}'", "the run's view")
    assert int(browser.execute_script("return document.getElementById('loss-caption').dataset.rows")) > 0
    assert plot_pixels(browser, "loss")[1] > 1000
    wait_for(browser, "document.getElementById('grid-img').complete && "
                      "document.getElementById('grid-img').naturalWidth > 0", "the sample grid")
    slider = browser.find_element(By.ID, "grid-step")
    assert int(slider.get_attribute("max")) >= 1  # at least two grids to flip through
    browser.execute_script("arguments[0].value = 0; arguments[0].dispatchEvent(new Event('input'))", slider)
    assert "step_" in browser.find_element(By.ID, "grid-img").get_attribute("src")
    screenshot(browser, "explore_training.png")
