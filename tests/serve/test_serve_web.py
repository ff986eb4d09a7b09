"""`openseason serve CKPT --port P` as a real process, and the web chat page in headless Chromium."""
from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time

import httpx
import pytest

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def served(serve_ckpt):
    """`openseason serve` in a subprocess; yields (url, stderr log path)."""
    port = free_port()
    log = tempfile.NamedTemporaryFile("w+", suffix=".log", delete=False)
    env = {**os.environ, "PYTHONPATH": os.getcwd()}
    proc = subprocess.Popen([sys.executable, "-m", "openseason", "serve", str(serve_ckpt), "--port", str(port),
                             "--device", "cpu", "--log-level", "warning"],
                            stdout=log, stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 180
    try:
        while True:
            assert proc.poll() is None, open(log.name).read()
            try:
                if httpx.get(url + "/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "server did not come up: " + open(log.name).read()
            time.sleep(0.2)
        yield url, log.name
    finally:
        proc.terminate()
        proc.wait(30)
        os.unlink(log.name)


def test_serve_cli_binds_loopback_and_names_the_model(served):
    url, log = served
    assert httpx.get(url + "/v1/models").json()["data"][0]["id"] == "tiny-chat"
    text = open(log).read()
    assert f"http://127.0.0.1:{url.rsplit(':', 1)[1]}/" in text
    r = httpx.post(url + "/v1/chat/completions", timeout=60,
                   json={"model": "tiny-chat", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 3})
    assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] == 3
    # bound to loopback with no --allowed-hosts: only loopback Host headers (DNS rebinding)
    assert httpx.get(url + "/health", headers={"host": "rebound.example"}).status_code == 421
    assert httpx.get(url + "/openapi.json").json()["components"]["schemas"]["CompletionRequest"]


def test_serve_cli_refuses_bad_cross_site_flags(serve_ckpt, capsys):
    from openseason.cli import main

    for flags in (["--allowed-hosts", "bad host"], ["--allowed-hosts", ","], ["--cors-origin", "localhost:3000"]):
        assert main(["serve", str(serve_ckpt), *flags]) == 2   # before the checkpoint is loaded
        err = capsys.readouterr().err
        assert "openseason: error:" in err and "hint:" in err and "Traceback" not in err


def test_web_page_streams_an_answer_in_chromium(served):
    if not (os.path.exists(CHROMIUM) and os.path.exists(CHROMEDRIVER)):
        pytest.skip(f"headless Chromium is not installed ({CHROMIUM}, {CHROMEDRIVER}); CI installs it")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import WebDriverWait

    url, _ = served
    profile = tempfile.mkdtemp(prefix="openseason-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--no-first-run", f"--user-data-dir={profile}"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    try:
        driver.get(url + "/")
        wait = WebDriverWait(driver, 60)
        wait.until(lambda d: d.find_element(By.ID, "model").get_attribute("data-ready") == "true")
        assert driver.find_element(By.ID, "model").text == "tiny-chat"
        # Record every text the answer bubble shows, to see it grow piece by piece.
        driver.execute_script("""
            window.__seen = [];
            new MutationObserver(() => {
              const el = document.querySelector('.msg.assistant');
              if (el) window.__seen.push(el.textContent);
            }).observe(document.getElementById('messages'), {subtree: true, childList: true, characterData: true});
        """)
        driver.execute_script("document.getElementById('max-tokens').value = '40';"
                              "document.getElementById('temperature').value = '0';")
        box = driver.find_element(By.ID, "input")
        box.send_keys("The quick brown fox")
        box.send_keys(Keys.ENTER)
        wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, ".msg.assistant[data-done='true']"))
        answer = driver.find_element(By.CSS_SELECTOR, ".msg.assistant")
        assert driver.find_element(By.CSS_SELECTOR, ".msg.user").text == "The quick brown fox"
        assert answer.get_attribute("data-finish") == "length"
        seen = [s for s in driver.execute_script("return window.__seen") if s]
        shown = answer.get_attribute("textContent")
        # the page showed growing prefixes of the final answer before it was complete
        assert len(set(seen)) > 1 and all(shown.startswith(s) for s in seen)
        expected = httpx.post(url + "/v1/chat/completions", timeout=60, json={
            "model": "tiny-chat", "messages": [{"role": "user", "content": "The quick brown fox"}],
            "max_tokens": 40, "temperature": 0}).json()["choices"][0]["message"]["content"]
        assert shown == expected
        assert not driver.find_elements(By.CSS_SELECTOR, ".msg.error")
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)
