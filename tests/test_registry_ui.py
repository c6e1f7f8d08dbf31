"""The registry in a real browser: a .tflite version and its reconstructed Keras version, as
MLflow's own UI shows them, and an alias set through that UI.

Headless Debian Chromium driven by Selenium against a real `mlflow server`. `make test` installs
chromium and chromium-driver (as root); without them this test fails, unless
TFLITE_KERAS_SKIP_BROWSER=1. Screenshots of each step (and the page source on failure) are kept
in test-artifacts/registry-ui/.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import time
from pathlib import Path

import pytest

import flavor_models as fm
import mlflow
from mlflow.tracking import MlflowClient
from mlflow_tflite_keras import lineage
from servers import tracking_server

pytestmark = pytest.mark.slow

if os.environ.get("TFLITE_KERAS_SKIP_BROWSER") == "1":
    pytest.skip("TFLITE_KERAS_SKIP_BROWSER=1", allow_module_level=True)

ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts" / "registry-ui"
NAME = "digits-ui"
TIMEOUT = 60  # seconds, for each wait in the browser: the React app is slow to start here
CHROME_FLAGS = ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--disable-quic", "--no-first-run", "--disable-background-networking",
                "--disable-component-update", "--disable-sync", "--window-size=1400,1000"]
INSTALL_HINT = ("install them with `apt-get install -y chromium chromium-driver` (`make test` "
                "does this when run as root) and `pip install selenium`, or set "
                "TFLITE_KERAS_SKIP_BROWSER=1 to skip this test")


def _browser_paths() -> tuple[str, str]:
    """Debian's chromium and chromedriver, or a test failure that says what is missing."""
    found = {name: shutil.which(name) or next(
        (p for p in (f"/usr/bin/{name}", f"/usr/lib/chromium/{name}") if os.access(p, os.X_OK)),
        None) for name in ("chromium", "chromedriver")}
    missing = [name for name, path in found.items() if not path]
    try:
        import selenium  # noqa: F401
    except ImportError:
        missing.append("selenium (Python package)")
    if missing:
        pytest.fail(f"The registry UI test needs {', '.join(missing)}: {INSTALL_HINT}.",
                    pytrace=False)
    return found["chromium"], found["chromedriver"]


@pytest.fixture(params=["sqlite", "postgres"])
def server(request, tmp_path):
    with contextlib.ExitStack() as stack:
        if request.param == "postgres":  # a team's server: PostgreSQL backend store
            url = request.getfixturevalue("postgres_tracking_server")
        else:
            url = stack.enter_context(tracking_server(tmp_path / "server",
                                                      tmp_path / "server.log"))
        mlflow.set_tracking_uri(url)
        mlflow.set_experiment(f"registry-ui-{request.param}")
        try:
            yield url
        finally:
            mlflow.set_tracking_uri(None)
            os.environ.pop("MLFLOW_EXPERIMENT_ID", None)


@pytest.fixture
def browser():
    chromium, chromedriver = _browser_paths()
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in CHROME_FLAGS:
        options.add_argument(flag)
    profile = tempfile.mkdtemp(prefix="registry-ui-chromium-")
    options.add_argument(f"--user-data-dir={profile}")
    # An explicit driver path: Selenium Manager never runs (and never downloads anything).
    driver = webdriver.Chrome(service=Service(executable_path=chromedriver), options=options)
    try:
        driver.set_page_load_timeout(TIMEOUT)
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


class Steps:
    """A screenshot per step; the screenshot and page source of the step that failed."""

    def __init__(self, driver):
        self.driver, self.n, self.started = driver, 0, time.monotonic()
        self.timings: list[tuple[str, float]] = []
        shutil.rmtree(ARTIFACTS, ignore_errors=True)
        ARTIFACTS.mkdir(parents=True)

    def done(self, name: str):
        self.n += 1
        self.driver.save_screenshot(str(ARTIFACTS / f"{self.n:02d}-{name}.png"))
        self.timings.append((name, round(time.monotonic() - self.started, 1)))

    def failed(self):
        try:
            self.driver.save_screenshot(str(ARTIFACTS / "failure.png"))
            (ARTIFACTS / "failure.html").write_text(self.driver.page_source)
            (ARTIFACTS / "failure-url.txt").write_text(self.driver.current_url + "\n")
        except Exception:  # the browser itself may be gone; keep the original error
            pass


def test_keras_version_in_registry_ui_and_alias_set_there(server, browser, tmp_path):
    from selenium.common.exceptions import StaleElementReferenceException
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support import expected_conditions as EC
    from selenium.webdriver.support.ui import WebDriverWait

    started = time.monotonic()
    x = fm.digits()[0]
    with mlflow.start_run(run_name="log-source"):
        mlflow.tflite_keras.log_model(fm.cnn("full-int8"), name="model",
                                      registered_model_name=NAME, input_example=x[:4])
    # 64 rows for parity: with the 4-row example a single near-tie of this untrained network's
    # softmax flips top-1 agreement to 0.75, below the full-int8 threshold (0.8).
    keras_version = lineage.register_keras_version(f"models:/{NAME}/1", parity_inputs=x[:64])
    assert keras_version.version == "2"
    source_uri = f"models:/{NAME}/1"

    driver, steps = browser, Steps(browser)
    steps.timings.append(("logged and registered both versions (before the browser)",
                          round(steps.started - started, 1)))
    # React re-renders freely: an element found a moment ago may be stale, so retry.
    wait = WebDriverWait(driver, TIMEOUT, ignored_exceptions=(StaleElementReferenceException,))

    def body_text():
        return driver.find_element(By.TAG_NAME, "body").text

    def tag_value(key):
        """The value cell of the version page's tag table row whose name cell is ``key``."""
        return wait.until(EC.visibility_of_element_located(
            (By.XPATH, f"//tr[td[normalize-space()='{key}']]/td[2]"))).text.strip()

    try:
        # 1. The registered model page lists both versions, with their roles.
        driver.get(f"{server}/#/models/{NAME}")
        for v in ("1", "2"):
            wait.until(EC.visibility_of_element_located(
                (By.CSS_SELECTOR, f"a[href$='#/models/{NAME}/versions/{v}']")))
        wait.until(lambda d: "reconstructed-keras" in body_text()
                   and "source-tflite" in body_text())
        # Cosmetic: close MLflow's assistant side panel, if shown, for wider screenshots.
        for close in driver.find_elements(
                By.CSS_SELECTOR, "button[data-component-id='mlflow.assistant.chat_panel.close']"):
            with contextlib.suppress(Exception):
                close.click()
        links = driver.find_elements(By.CSS_SELECTOR, f"a[href*='#/models/{NAME}/versions/']")
        assert {a.text.strip() for a in links} >= {"Version 1", "Version 2"}
        # The versions table stays readable: each row shows a few tags, lineage among them.
        for v, expected in (("1", {lineage.ROLE, lineage.KERAS_VERSIONS}),
                            ("2", {lineage.ROLE, lineage.PARENT, lineage.CHAIN})):
            row = driver.find_element(By.XPATH, (
                f"//a[substring(@href, string-length(@href) - string-length('/versions/{v}') + 1)"
                f" = '/versions/{v}']/ancestor::*[@role='row' or self::tr][1]"))
            shown = [t.get_attribute("title") for t in row.find_elements(
                By.CSS_SELECTOR, "[data-component-type='tag'][title^='tflite_keras.']")]
            assert expected <= set(shown) and len(shown) <= 8, (v, shown)
        for mv in MlflowClient().search_model_versions(f"name = '{NAME}'"):
            assert len([k for k in mv.tags if k.startswith(lineage.TAG_PREFIX)]) <= 8, mv.tags
        steps.done("model-page")

        # 2. Open the Keras version from that list: lineage tags and the description.
        driver.find_element(By.CSS_SELECTOR, f"a[href$='#/models/{NAME}/versions/2']").click()
        wait.until(EC.url_contains(f"/models/{NAME}/versions/2"))
        assert tag_value(lineage.ROLE) == lineage.ROLE_KERAS
        assert tag_value(lineage.SOURCE_URI) == source_uri
        assert tag_value(lineage.PARENT) == f"{NAME}/1"
        assert tag_value(lineage.CHAIN) == f"{NAME}/1 -> {NAME}/2"
        assert tag_value(lineage.PARITY_PASSED) == "1"
        # The Markdown description, rendered.
        description = wait.until(EC.visibility_of_element_located(
            (By.CSS_SELECTOR, "[data-testid='note-editor-preview-content']")))
        wait.until(lambda d: "Parity against the LiteRT interpreter" in description.text)
        assert description.find_element(By.TAG_NAME, "strong").text == \
            "Reconstructed Keras model"
        assert f"Source URI: {source_uri}" in description.text
        assert description.find_elements(By.TAG_NAME, "table"), "parity table not rendered"
        steps.done("keras-version")

        # 3. Set the alias through the UI: "Add" next to Aliases, type, Enter, save.
        add = wait.until(EC.element_to_be_clickable(
            (By.CSS_SELECTOR, "button[title='Add aliases']")))
        add.click()
        # The modal fades in: its text reads as empty until it is really visible.
        dialog = wait.until(EC.visibility_of_element_located((By.CSS_SELECTOR, "[role='dialog']")))
        wait.until(lambda d: "add/edit alias" in dialog.text.lower())
        field = wait.until(EC.element_to_be_clickable(
            (By.CSS_SELECTOR, "[role='dialog'] input[role='combobox']")))
        field.send_keys("champion")
        field.send_keys(Keys.ENTER)
        save = wait.until(EC.element_to_be_clickable((By.XPATH,
            "//*[@role='dialog']//button[normalize-space()='Save aliases']")))
        steps.done("alias-dialog")
        save.click()
        wait.until(EC.invisibility_of_element_located((By.CSS_SELECTOR, "[role='dialog']")))
        wait.until(EC.visibility_of_element_located(
            (By.CSS_SELECTOR, "[role='status'][title='champion']")))
        steps.done("alias-saved")
    except BaseException:
        steps.failed()
        raise
    finally:
        (ARTIFACTS / "timings.txt").write_text(
            "".join(f"{t:6.1f}s  {name}\n" for name, t in steps.timings))

    # The alias is in the registry, on the Keras version.
    assert MlflowClient().get_model_version_by_alias(NAME, "champion").version == "2"
