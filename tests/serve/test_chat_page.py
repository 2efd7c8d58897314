"""The chat page (``rwkvkit/serve/static/chat.html``) driven in a real headless Chromium through Selenium.

The page is loaded from a running server with the shipped default model; it sends a message, streams
the answer (checked against the same request made over plain HTTP), is stopped mid-answer, and sends
without and then with the API key. Needs Debian's ``chromium`` and ``chromium-driver`` packages
(``/usr/bin/chromium``, ``/usr/bin/chromedriver``) and ``selenium``; skipped without them. Nothing is
downloaded: the driver's path is given (so Selenium Manager is not run) and ``SE_OFFLINE`` is set.

``RWKVKIT_UPDATE_DOCS=1`` also writes the screenshot of the streamed answer to ``docs/chat-page.png``.
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import pytest

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
_INSTALL = "install Debian's chromium and chromium-driver packages (apt-get install chromium chromium-driver)"

if not CHROMIUM.is_file() or not CHROMEDRIVER.is_file():
    pytest.skip(f"needs {CHROMIUM} and {CHROMEDRIVER}: {_INSTALL}", allow_module_level=True)
try:
    from selenium import webdriver
    from selenium.common.exceptions import TimeoutException
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import WebDriverWait
except ImportError:
    pytest.skip(f"needs selenium (pip install selenium); {_INSTALL}", allow_module_level=True)

from tests.serve.helpers import request, running_server  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
WAIT_S = 120  # generous: the CPU may be shared with other jobs
API_KEY = "test-key-0123"
PROMPT = "def fibonacci(n):"  # the shipped model writes Python


# ---- the server ----


@pytest.fixture(scope="module")
def served_model():
    """The shipped default model and its tokenizer."""
    pytest.importorskip("starlette", reason="rwkvkit serve needs the serve extra (starlette, uvicorn)")
    import rwkvkit

    return rwkvkit.load("default").eval(), rwkvkit.load_tokenizer("default")


def _serve(served_model, **config):
    """The app as ``rwkvkit serve`` builds it for the shipped model (chat format plain)."""
    from rwkvkit.serve import create_app

    model, tokenizer = served_model
    return running_server(create_app(model, tokenizer, chat_format="plain", **config))


@pytest.fixture(scope="module")
def server(served_model):
    with _serve(served_model) as base_url:
        yield base_url


@pytest.fixture(scope="module")
def key_server(served_model):
    with _serve(served_model, api_key=API_KEY) as base_url:
        yield base_url


def _stats(base_url: str) -> dict:
    status_code, _, stats = request(base_url + "/v1/stats")
    assert status_code == 200, stats
    return stats


# ---- the browser ----


@pytest.fixture(scope="module")
def driver(tmp_path_factory):
    old_offline = os.environ.get("SE_OFFLINE")
    os.environ["SE_OFFLINE"] = "true"  # Selenium Manager, were it ever run, may not download anything
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for arg in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--window-size=1100,800",
        f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}",
    ):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})  # the page's console, for script errors
    browser = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    try:
        # a 1100 x 800 page: the window's size includes the browser's own bars
        browser.set_window_size(1100, 800)
        bars = browser.execute_script("return window.outerHeight - window.innerHeight")
        browser.set_window_size(1100, 800 + bars)
        yield browser
    finally:
        browser.quit()
        if old_offline is None:
            os.environ.pop("SE_OFFLINE", None)
        else:
            os.environ["SE_OFFLINE"] = old_offline


def _wait(driver, condition, what: str, timeout: float = WAIT_S):
    try:
        return WebDriverWait(driver, timeout, poll_frequency=0.05).until(condition)
    except TimeoutException:
        pytest.fail(f"timed out after {timeout} s waiting for the {what}; status line: {_status(driver)!r}")


def _load(driver, base_url: str) -> None:
    """Loads the page and waits for its model list."""
    driver.get(base_url + "/")
    loaded = lambda d: d.find_element(By.ID, "model").get_attribute("data-loaded") == "true"
    _wait(driver, loaded, "model list")


def _open(driver, base_url: str) -> None:
    """Loads the page with nothing remembered from an earlier test."""
    driver.get(base_url + "/")
    driver.execute_script("window.localStorage.clear()")
    _load(driver, base_url)
    driver.get_log("browser")  # drop what the console held before


def _status(driver) -> str:
    return driver.find_element(By.ID, "status").text


def _model_ids(driver) -> list[str]:
    return [o.get_attribute("value") for o in driver.find_elements(By.CSS_SELECTOR, "#model option")]


def _enabled(driver, element_id: str) -> bool:
    return driver.find_element(By.ID, element_id).is_enabled()


def _set_field(driver, element_id: str, value: str) -> None:
    """Types into a field of the settings panel, opening the panel first."""
    if driver.find_element(By.ID, "settings").get_attribute("open") is None:
        driver.find_element(By.CSS_SELECTOR, "#settings summary").click()
    field = driver.find_element(By.ID, element_id)
    field.clear()
    field.send_keys(value)


def _messages(driver, role: str) -> list:
    return driver.find_elements(By.CSS_SELECTOR, f"#messages .message.{role}")


def _text(message) -> str:
    return message.find_element(By.CSS_SELECTOR, ".content").get_property("textContent")


def _send(driver, text: str, *, enter: bool = False) -> None:
    box = driver.find_element(By.ID, "input")
    box.clear()
    box.send_keys(text)
    if enter:
        box.send_keys(Keys.ENTER)
    else:
        driver.find_element(By.ID, "send").click()


def _wait_answer(driver, n: int):
    """The n-th (1-based) assistant message once it has finished streaming; fails on a new error line."""
    errors_before = len(_messages(driver, "error"))

    def done(d):
        answers = _messages(d, "assistant")
        if len(answers) >= n and "streaming" not in answers[n - 1].get_attribute("class").split():
            return answers[n - 1]
        errors = _messages(d, "error")
        if len(errors) > errors_before:
            pytest.fail(f"the page shows an error: {_text(errors[-1])!r}")
        return False

    return _wait(driver, done, f"assistant message {n} to finish")


def _assert_no_script_errors(driver) -> None:
    """No uncaught exception or unhandled rejection in the page (failed HTTP loads are 'network')."""
    errors = [e for e in driver.get_log("browser") if e["level"] == "SEVERE" and e.get("source") != "network"]
    assert not errors, errors


def _screenshot(driver, tmp_path: Path) -> Path:
    path = tmp_path / "chat-page.png"
    driver.save_screenshot(str(path))
    if os.environ.get("RWKVKIT_UPDATE_DOCS") == "1":
        shutil.copyfile(path, REPO / "docs" / "chat-page.png")
    return path


# ---- tests ----


def test_streamed_answer_equals_the_http_answer(driver, server, tmp_path):
    _open(driver, server)
    assert "default" in _model_ids(driver)
    defaults = {"max-tokens": "256", "temperature": "1.0", "top-p": "0.85", "seed": ""}
    assert {k: driver.find_element(By.ID, k).get_attribute("value") for k in defaults} == defaults
    assert _enabled(driver, "send") and not _enabled(driver, "stop")

    # Shift+Enter is a newline, not a send
    box = driver.find_element(By.ID, "input")
    box.send_keys("a", Keys.SHIFT, Keys.ENTER, Keys.SHIFT, "b")
    assert box.get_property("value") == "a\nb"
    assert not _messages(driver, "user")

    _set_field(driver, "temperature", "0")
    _set_field(driver, "max-tokens", "48")
    driver.find_element(By.ID, "monospace").click()  # the shipped model writes Python
    _send(driver, PROMPT)
    streamed = _text(_wait_answer(driver, 1))
    assert streamed.strip()
    assert [_text(m) for m in _messages(driver, "user")] == [PROMPT]
    status = _status(driver)
    assert "tokens/s" in status and ("finish: length" in status or "finish: stop" in status), status
    assert _enabled(driver, "send") and not _enabled(driver, "stop")
    _screenshot(driver, tmp_path)
    _assert_no_script_errors(driver)

    options = {"temperature": 0, "top_p": 0.85, "presence_penalty": 0, "frequency_penalty": 0}
    messages = [{"role": "user", "content": PROMPT}]
    body = {"model": "default", "messages": messages, "max_tokens": 48, **options}
    status_code, _, reply = request(server + "/v1/chat/completions", body)
    assert status_code == 200, reply
    assert streamed == reply["choices"][0]["message"]["content"]


def test_stop_keeps_the_partial_answer_and_the_page_sends_again(driver, server):
    _open(driver, server)
    before = _stats(server)["tokens_generated"]
    # greedy, so that the answer surely runs long (a sampled one may end early on the end-of-text token)
    _set_field(driver, "temperature", "0")
    _set_field(driver, "max-tokens", "4096")
    _send(driver, PROMPT, enter=True)
    _wait(driver, lambda d: _messages(d, "assistant") and _text(_messages(d, "assistant")[0]), "first tokens")
    assert _enabled(driver, "stop") and not _enabled(driver, "send")
    driver.find_element(By.ID, "stop").click()
    answer = _wait_answer(driver, 1)
    partial = _text(answer)
    assert partial
    assert "finish: stopped" in _status(driver)
    assert _enabled(driver, "send") and not _enabled(driver, "stop")
    time.sleep(0.5)
    assert _text(answer) == partial  # nothing more arrives after Stop

    # the server saw the client go and ended the request long before its 4096 tokens
    deadline = time.monotonic() + 10
    while (stats := _stats(server))["in_flight"] and time.monotonic() < deadline:
        time.sleep(0.05)
    assert stats["in_flight"] == 0, stats
    assert stats["tokens_generated"] - before < 4096, stats

    _set_field(driver, "max-tokens", "8")
    _send(driver, "\n    return")
    assert _text(_wait_answer(driver, 2)).strip()
    assert "finish: stopped" not in _status(driver)
    assert len(_messages(driver, "user")) == 2 and not _messages(driver, "error")

    driver.find_element(By.ID, "new-chat").click()
    assert not driver.find_elements(By.CSS_SELECTOR, "#messages .message")
    _assert_no_script_errors(driver)


def test_api_key(driver, key_server):
    _open(driver, key_server)
    body = {"model": "default", "messages": [{"role": "user", "content": PROMPT}], "max_tokens": 4}
    status_code, _, reply = request(key_server + "/v1/chat/completions", body)
    assert status_code == 401, reply
    refusal = reply["error"]["message"]
    assert "model list" in _status(driver)  # listing the models needs the key too

    _set_field(driver, "max-tokens", "8")
    _send(driver, PROMPT)
    error = _wait(driver, lambda d: _messages(d, "error"), "401 error message")[0]
    assert _text(error) == refusal
    assert not _messages(driver, "assistant")
    # the refused message goes back to the input, to be sent again
    assert driver.find_element(By.ID, "input").get_property("value") == PROMPT

    _set_field(driver, "api-key", API_KEY)
    driver.find_element(By.ID, "send").click()
    assert _text(_wait_answer(driver, 1)).strip()
    assert driver.execute_script("return window.localStorage.getItem('rwkvkit.apiKey')") == API_KEY
    _assert_no_script_errors(driver)

    # the key is remembered: after a reload the model list comes without an error
    _load(driver, key_server)
    assert driver.find_element(By.ID, "api-key").get_property("value") == API_KEY
    assert "default" in _model_ids(driver)
    assert not _status(driver)
