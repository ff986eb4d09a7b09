"""Cross-site requests: the Host header must be allowed (DNS rebinding), a foreign Origin is refused
unless --cors-origin allows it (then CORS is answered, preflight included), POST bodies must be JSON.
Checked with httpx and with a real headless Chromium page served from another loopback port."""
from __future__ import annotations

import http.server
import os
import shutil
import tempfile
import threading

import httpx
import pytest

from openseason.errors import OpenseasonError
from openseason.serve.app import ServerSettings

from .conftest import start_server
from .test_serve_web import CHROMEDRIVER, CHROMIUM

MODEL = "tiny-chat"
BODY = {"model": MODEL, "prompt": "x", "max_tokens": 2}
PAGE = "http://127.0.0.1:9"          # a foreign origin for the httpx tests (nothing needs to listen there)


@pytest.fixture(scope="module")
def page_server():
    """A plain static page on another loopback port: the 'foreign site' for Chromium."""
    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def do_GET(self):
            body = b"<!doctype html><title>elsewhere</title><p>another site</p>"
            self.send_response(200)
            self.send_header("Content-Type", "text/html")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Quiet)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture(scope="module")
def servers(serve_ckpt, page_server):
    """(plain server, server allowing the page's origin and PAGE) with their engines."""
    plain = start_server(serve_ckpt, max_batch=2, max_queue=8)
    cors = start_server(serve_ckpt, max_batch=2, max_queue=8, cors_origins=[page_server, PAGE + "/"])
    yield plain, cors
    for server, engine, _ in (plain, cors):
        server.close()
        engine.close()


def _error(r, status, code):
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["code"] == code
    return error["message"]


def test_host_header_must_be_loopback(servers):
    (plain, engine, _), _ = servers
    port = plain.port
    for host in (f"127.0.0.1:{port}", f"localhost:{port}", f"[::1]:{port}", "LOCALHOST", "127.0.0.1"):
        assert httpx.get(plain.url + "/health", headers={"host": host}).status_code == 200, host
    before = engine.metrics()["requests_total"] if "requests_total" in engine.metrics() else None
    for host in ("evil.example", f"evil.example:{port}", "127.0.0.1.evil.example", "localhost.:1", "",
                 "127.0.0.1:80:80", "[::1", "x" * 400):
        message = _error(httpx.post(plain.url + "/v1/completions", json=BODY, headers={"host": host}), 421,
                         "host_not_allowed")
        assert "--allowed-hosts" in message
    if before is not None:
        assert engine.metrics()["requests_total"] == before
    assert httpx.post(plain.url + "/v1/completions", json=BODY, timeout=30).status_code == 200


def test_allowed_hosts_setting(serve_ckpt):
    server, engine, _ = start_server(serve_ckpt, max_batch=1, allowed_hosts=["my.box:8000", "LAN.local"])
    try:
        ok = {"my.box:8000", "lan.local", "lan.local:1234"}
        for host in ok | {"my.box", "my.box:8001", f"127.0.0.1:{server.port}"}:
            status = httpx.get(server.url + "/health", headers={"host": host}).status_code
            assert status == (200 if host in ok else 421), host
    finally:
        server.close()
        engine.close()
    server, engine, _ = start_server(serve_ckpt, max_batch=1, allowed_hosts=["*"])
    try:
        assert httpx.get(server.url + "/health", headers={"host": "anything.example"}).status_code == 200
    finally:
        server.close()
        engine.close()


def test_bad_settings_are_clear_errors():
    for hosts, origins in ((["bad host"], []), ([""], []), (["*"], ["localhost:3000"]),
                           (["*"], ["ftp://x"]), (["*"], ["http://x/path"])):
        with pytest.raises(OpenseasonError):
            ServerSettings(model_name="m", chat_format=None, allowed_hosts=tuple(hosts), cors_origins=tuple(origins))


def test_foreign_origin_is_refused_and_same_origin_served(servers):
    (plain, _, _), _ = servers
    for origin in (PAGE, "null", "http://evil.example", f"http://localhost:{plain.port}"):
        message = _error(httpx.post(plain.url + "/v1/completions", json=BODY, headers={"origin": origin}), 403,
                         "origin_not_allowed")
        assert "--cors-origin" in message
    # a preflight from a foreign page gets no CORS headers, so the browser never sends the request
    r = httpx.options(plain.url + "/v1/completions", headers={"origin": PAGE, "access-control-request-method": "POST"})
    assert r.status_code == 403 and "access-control-allow-origin" not in r.headers
    # the server's own page: same origin (the browser names the Host it talks to)
    r = httpx.post(plain.url + "/v1/completions", json=BODY, headers={"origin": plain.url}, timeout=30)
    assert r.status_code == 200 and "access-control-allow-origin" not in r.headers


def test_post_bodies_must_be_json(servers):
    (plain, _, _), _ = servers
    raw = b'{"model": "tiny-chat", "prompt": "x", "max_tokens": 2}'
    for ctype in ("text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x",
                  None, "application/jsonx"):
        headers = {} if ctype is None else {"content-type": ctype}
        message = _error(httpx.post(plain.url + "/v1/completions", content=raw, headers=headers), 415,
                         "unsupported_media_type")
        assert "application/json" in message
    for ctype in ("application/json", "Application/JSON; charset=utf-8"):
        r = httpx.post(plain.url + "/v1/completions", content=raw, headers={"content-type": ctype}, timeout=30)
        assert r.status_code == 200


def test_cors_origin_gets_preflight_and_headers(servers):
    _, (cors, _, _) = servers
    r = httpx.options(cors.url + "/v1/chat/completions", headers={
        "origin": PAGE, "access-control-request-method": "POST",
        "access-control-request-headers": "authorization, content-type, x-stainless-os"})
    assert r.status_code == 204
    assert r.headers["access-control-allow-origin"] == PAGE
    assert "POST" in r.headers["access-control-allow-methods"]
    assert r.headers["access-control-allow-headers"] == "authorization, content-type, x-stainless-os"
    r = httpx.post(cors.url + "/v1/completions", json=BODY, headers={"origin": PAGE}, timeout=30)
    assert r.status_code == 200 and r.headers["access-control-allow-origin"] == PAGE and "Origin" in r.headers["vary"]
    # errors are readable by the allowed page too
    r = httpx.post(cors.url + "/v1/completions", content=b"{}", headers={"origin": PAGE, "content-type": "text/plain"})
    assert r.status_code == 415 and r.headers["access-control-allow-origin"] == PAGE
    _error(httpx.post(cors.url + "/v1/completions", json=BODY, headers={"origin": "http://evil.example"}), 403,
           "origin_not_allowed")


def _chromium():
    if not (os.path.exists(CHROMIUM) and os.path.exists(CHROMEDRIVER)):
        pytest.skip(f"headless Chromium is not installed ({CHROMIUM}, {CHROMEDRIVER}); CI installs it")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    profile = tempfile.mkdtemp(prefix="openseason-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--no-first-run", f"--user-data-dir={profile}"):
        options.add_argument(flag)
    return webdriver.Chrome(service=Service(CHROMEDRIVER), options=options), profile


FETCH = """
const [url, ctype, mode, done] = arguments;
fetch(url, {method: "POST", mode: mode, headers: {"Content-Type": ctype},
            body: JSON.stringify({model: "tiny-chat", prompt: "x", max_tokens: 2})})
  .then(async r => done({status: r.status, type: r.type, text: await r.text()}))
  .catch(e => done({error: String(e)}));
"""


def test_foreign_page_in_chromium(servers, page_server):
    (plain, plain_engine, _), (cors, cors_engine, _) = servers
    driver, profile = _chromium()
    try:
        driver.set_script_timeout(60)
        driver.get(page_server + "/")
        generated = plain_engine.metrics()["tokens_generated_total"]
        # a "simple" cross-site POST (no preflight): the server refuses it and the page reads nothing
        for ctype, mode in (("text/plain", "cors"), ("text/plain", "no-cors"), ("application/json", "cors")):
            out = driver.execute_async_script(FETCH, plain.url + "/v1/completions", ctype, mode)
            assert "choices" not in out.get("text", ""), out
            assert out.get("error") or out.get("type") == "opaque", out
        assert plain_engine.metrics()["tokens_generated_total"] == generated   # nothing was generated
        # with --cors-origin naming the page, it works (JSON with a preflight) and errors are readable
        out = driver.execute_async_script(FETCH, cors.url + "/v1/completions", "application/json", "cors")
        assert out.get("status") == 200 and '"completion_tokens":2' in out["text"].replace(" ", ""), out
        out = driver.execute_async_script(FETCH, cors.url + "/v1/completions", "text/plain", "cors")
        assert out.get("status") == 415 and "application/json" in out["text"], out
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)
