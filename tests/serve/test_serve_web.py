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


def chromium():
    """A headless Chromium driver with a throwaway profile; skips when Chromium is not installed."""
    if not (os.path.exists(CHROMIUM) and os.path.exists(CHROMEDRIVER)):
        pytest.skip(f"headless Chromium is not installed ({CHROMIUM}, {CHROMEDRIVER}); CI installs it")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    profile = tempfile.mkdtemp(prefix="openseason-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--no-first-run", "--window-size=1000,900", f"--user-data-dir={profile}"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.profile_dir = profile
    return driver


def close_chromium(driver) -> None:
    driver.quit()
    shutil.rmtree(driver.profile_dir, ignore_errors=True)


def test_web_page_streams_an_answer_in_chromium(served):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import WebDriverWait

    url, _ = served
    driver = chromium()
    try:
        driver.get(url + "/")
        wait = WebDriverWait(driver, 60)
        wait.until(lambda d: d.find_element(By.ID, "model").get_attribute("data-ready") == "true")
        assert driver.find_element(By.ID, "model").text == "tiny-chat"
        assert driver.find_element(By.ID, "context").text == "1024-token context"
        assert driver.find_element(By.ID, "max-tokens").get_attribute("value") == "256"
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
        note = driver.find_element(By.CSS_SELECTOR, ".msg.note[data-kind='length']")
        assert note.is_displayed() and "answer cut at max tokens (40 tokens)" in note.text
        assert not driver.find_elements(By.CSS_SELECTOR, ".msg.error")
    finally:
        close_chromium(driver)


KEY = "s3cret-key"


@pytest.fixture(scope="module")
def small_server(tmp_path_factory, live_server_class):
    """A quickstart-sized model (byte-level tokenizer, 64-token context, plain chat format, never ends
    on its own) served in-process behind --api-key; yields (url, engine, settings)."""
    import torch

    from openseason.checkpoint import save_checkpoint
    from openseason.config import Config
    from openseason.model import GPT
    from openseason.serve.app import create_app
    from openseason.serve.server import load_for_serving
    from openseason.tokenizer import train_bpe

    tokenizer = train_bpe(["The quick brown fox jumps over the lazy dog. 0123456789"], vocab_size=257)
    torch.manual_seed(0)
    config = Config.from_name("tiny-llama", block_size=64, vocab_size=tokenizer.vocab_size, padded_vocab_size=264,
                              lm_head_bias=True, eos_token_id=tokenizer.eos_id, bos_token_id=None,
                              add_bos_token=False)
    model = GPT(config)
    model.init_weights(std=0.2)
    with torch.no_grad():
        model.lm_head.bias.zero_()
        model.lm_head.bias[tokenizer.eos_id] = -100.0
    path = tmp_path_factory.mktemp("ckpts") / "qs-sized"
    save_checkpoint(path, model.eval(), tokenizer=tokenizer, run_card={"prompt_style": "plain"})
    engine, settings = load_for_serving(path, device="cpu", api_key=KEY, log=lambda msg: None)
    server = live_server_class(create_app(engine, settings))
    yield server.url, engine, settings
    server.close()
    engine.close()


def test_web_page_with_a_64_token_model_and_an_api_key(small_server, tmp_path):
    """The page asks for the key, keeps a typed message across a 401, takes its max-tokens default
    from the 64-token context, forgets old turns so a 5-turn conversation keeps working, says so,
    and notes answers cut at max tokens; the settings button hides and shows the panel."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import WebDriverWait

    from openseason.prompts import encode_chat

    url, engine, settings = small_server
    driver = chromium()
    shots = []

    def shot(name):
        shots.append(tmp_path / f"{name}.png")
        driver.save_screenshot(str(shots[-1]))

    def visible(element_id):
        return driver.find_element(By.ID, element_id).is_displayed()

    try:
        driver.get(url + "/")
        wait = WebDriverWait(driver, 60)
        # a key-protected server: the page asks for the key with a password field
        wait.until(lambda d: visible("auth"))
        assert driver.find_element(By.ID, "api-key").get_attribute("type") == "password"
        assert driver.find_element(By.ID, "model").text == "(API key needed)"
        shot("1-asks-for-key")
        # the settings button hides and shows the panel ([hidden] wins over the panel's CSS)
        assert not visible("settings")
        driver.find_element(By.ID, "settings-toggle").click()
        assert visible("settings")
        driver.find_element(By.ID, "settings-toggle").click()
        assert not visible("settings")

        key = driver.find_element(By.ID, "api-key")
        key.send_keys(KEY)
        key.send_keys(Keys.ENTER)
        wait.until(lambda d: d.find_element(By.ID, "model").get_attribute("data-ready") == "true")
        assert not visible("auth")
        assert driver.find_element(By.ID, "context").text == "64-token context"
        assert driver.find_element(By.ID, "max-tokens").get_attribute("value") == "32"   # half the window
        driver.execute_script("document.getElementById('temperature').value = '0';")

        # a 401 on send (the key changed under the page): the typed message stays in the box
        driver.execute_script("sessionStorage.setItem('openseason-api-key', 'wrong');")
        box = driver.find_element(By.ID, "input")
        box.send_keys("hello fox")
        box.send_keys(Keys.ENTER)
        wait.until(lambda d: visible("auth"))
        assert "did not accept" in driver.find_element(By.ID, "auth-message").text
        assert box.get_attribute("value") == "hello fox"
        assert not driver.find_elements(By.CSS_SELECTOR, ".msg.user, .msg.error")
        key = driver.find_element(By.ID, "api-key")
        key.send_keys(KEY)
        key.send_keys(Keys.ENTER)
        wait.until(lambda d: not visible("auth"))

        # five turns through a 64-token window: each answer is up to 32 tokens, so old turns must go
        words = ["hello fox", "the lazy dog jumps", "over 12 + 7", "quick brown 0 9", "last one"]
        box.clear()
        for i, text in enumerate(words, start=1):
            box.send_keys(text)
            box.send_keys(Keys.ENTER)
            wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, ".msg.assistant[data-done='true']")) == i)
            assert not driver.find_elements(By.CSS_SELECTOR, ".msg.error"), \
                driver.find_element(By.CSS_SELECTOR, ".msg.error").text
        shot("2-five-turns")
        forgot = driver.find_elements(By.CSS_SELECTOR, ".msg.note[data-kind='forgot']")
        assert forgot and "64-token context window" in forgot[0].text
        assert driver.find_elements(By.CSS_SELECTOR, ".msg.user.forgotten")
        answers = driver.find_elements(By.CSS_SELECTOR, ".msg.assistant")
        finishes = [a.get_attribute("data-finish") for a in answers]
        assert set(finishes) <= {"length", "stop"} and "length" in finishes
        cut = driver.find_elements(By.CSS_SELECTOR, ".msg.note[data-kind='length']")
        assert len(cut) == finishes.count("length") and cut[0].is_displayed()

        # the last answer is what the API gives for the turns the page still remembers
        kept = driver.execute_script("""
            return [...document.querySelectorAll('.msg.user:not(.forgotten), .msg.assistant:not(.forgotten)')]
              .map(el => ({role: el.classList.contains('user') ? 'user' : 'assistant', content: el.textContent}));
        """)
        last = kept.pop()
        assert last["role"] == "assistant" and kept[-1] == {"role": "user", "content": "last one"}
        prompt = encode_chat(kept, engine.tokenizer, settings.chat_format)
        budget = min(32, 64 - len(prompt))
        body = httpx.post(url + "/v1/chat/completions", timeout=60, headers={"Authorization": f"Bearer {KEY}"},
                          json={"model": "qs-sized", "messages": kept, "max_tokens": budget,
                                "temperature": 0}).json()
        assert body["choices"][0]["message"]["content"] == last["content"]

        # a message too long for the whole window: a clear error, and the text stays in the box
        box.send_keys("x" * 80)
        box.send_keys(Keys.ENTER)
        wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, ".msg.error"))
        assert "context window is 64 tokens: send a shorter message" in driver.find_element(By.CSS_SELECTOR, ".msg.error").text
        assert box.get_attribute("value") == "x" * 80
        shot("3-too-long")
    finally:
        close_chromium(driver)
    assert all(p.stat().st_size > 0 for p in shots)
