"""Views: Mermaid/DOT exports, the timeline PNG, the rich table, and the served page in headless Chromium."""
from __future__ import annotations

import json
import shutil
import socket
import threading
import urllib.request
from pathlib import Path

import pytest

from openseason.catalog import Catalog
from openseason.catalog import views
from openseason.cli import main


@pytest.fixture(scope="module")
def db(tmp_path_factory):
    path = tmp_path_factory.mktemp("views") / "c.sqlite"
    Catalog(path).close()
    return path


def test_mermaid_and_dot_exports(db, capsys):
    with Catalog(db) as cat:
        alpaca = cat.get("Alpaca")
        assets = cat.graph.reachable(alpaca, "up")
        mer = views.to_mermaid(cat.graph, assets)
        dot = views.to_dot(cat.graph, assets)
    assert mer.startswith("flowchart LR")
    assert "-->|finetune|" in mer and '"LLaMA"' in mer and '"text-davinci-003"' in mer
    assert dot.startswith("digraph catalog {") and dot.rstrip().endswith("}")
    assert '[label="finetune"]' in dot and "shape=cylinder" in dot
    assert main(["catalog", "lineage", "Dolly v2", "--format", "dot", "--db", str(db)]) == 0
    out = capsys.readouterr().out
    assert '"Pythia-12B"' in out and '"databricks-dolly-15k"' in out


def test_timeline_png_and_table(db, tmp_path, capsys):
    out = tmp_path / "tree.png"
    assert main(["catalog", "timeline", "-o", str(out), "--source", "builtin", "--db", str(db)]) == 0
    data = out.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 20_000
    capsys.readouterr()
    assert main(["catalog", "list", "--type", "dataset", "--license", "CC BY-SA 3.0", "--format", "json", "--db", str(db)]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert {r["name"] for r in rows} == {"databricks-dolly-15k", "Wikipedia", "dolly_hhrlhf"}
    assert main(["catalog", "search", "pythia", "--min-params", "6B", "--format", "json", "--db", str(db)]) == 0
    names = {r["name"] for r in json.loads(capsys.readouterr().out)}
    assert {"Pythia-6.9B", "Pythia-12B", "Pythia"} <= names and "Pythia-1B" not in names
    assert main(["catalog", "list", "--since", "2023-05", "--until", "2023-05", "--format", "json", "--db", str(db)]) == 0
    dates = {r["created_date"][:7] for r in json.loads(capsys.readouterr().out)}
    assert dates == {"2023-05"}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture()
def server(db):
    from openseason.catalog.web import make_server
    srv = make_server(db, "127.0.0.1", _free_port())
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{srv.server_address[1]}"
    srv.shutdown()
    srv.server_close()


def test_api(server):
    with urllib.request.urlopen(server + "/api/can-use?name=Vicuna") as r:
        assert json.load(r)["verdict"] == "no"
    with urllib.request.urlopen(server + "/api/assets") as r:
        assets = json.load(r)
    assert any(a["name"] == "Dolly v2" and any(d["name"] == "Pythia-12B" for d in a["deps"]) for a in assets)


CHROMIUM = shutil.which("chromium") or ("/usr/bin/chromium" if Path("/usr/bin/chromium").exists() else None)
CHROMEDRIVER = shutil.which("chromedriver") or ("/usr/bin/chromedriver" if Path("/usr/bin/chromedriver").exists() else None)


@pytest.mark.skipif(CHROMIUM is None or CHROMEDRIVER is None, reason="chromium / chromedriver not installed (CI installs them)")
def test_page_in_headless_chromium(server, tmp_path):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for arg in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                "--no-first-run", f"--user-data-dir={tmp_path / 'profile'}"):
        opts.add_argument(arg)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=opts)
    try:
        driver.get(server + "/")
        wait = WebDriverWait(driver, 90)
        wait.until(lambda d: d.find_element(By.TAG_NAME, "body").get_attribute("data-ready") == "1")
        total = len(driver.find_elements(By.CSS_SELECTOR, "#results tr"))
        assert total > 50
        box = driver.find_element(By.ID, "search")
        box.send_keys("dolly")
        wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#results tr")) < total)
        names = [r.find_element(By.TAG_NAME, "td").get_attribute("textContent") for r in driver.find_elements(By.CSS_SELECTOR, "#results tr")]
        assert "Dolly v2" in names and "databricks-dolly-15k" in names and "Vicuna" not in names
        # the graph shows the results and what they stand on
        wait.until(lambda d: {"Dolly v2", "Pythia-12B", "databricks-dolly-15k"}
                   <= set(d.execute_script("return cy.nodes().map(n => n.data('label'))")))
        assert driver.execute_script("return cy.edges().length") > 0
        # a filter narrows further; clicking a row shows its lineage and the can-use verdict
        from selenium.webdriver.support.ui import Select
        Select(driver.find_element(By.ID, "filter-type")).select_by_visible_text("dataset")
        wait.until(lambda d: all(r.find_elements(By.TAG_NAME, "td")[1].get_attribute("textContent") == "dataset"
                                 for r in d.find_elements(By.CSS_SELECTOR, "#results tr")))
        Select(driver.find_element(By.ID, "filter-type")).select_by_visible_text("model")
        row = next(r for r in driver.find_elements(By.CSS_SELECTOR, "#results tr")
                   if r.find_element(By.TAG_NAME, "td").get_attribute("textContent") == "Dolly v1")
        row.click()
        wait.until(lambda d: d.find_elements(By.ID, "verdict-value"))
        assert driver.find_element(By.ID, "verdict-value").text == "no"
        assert "Alpaca data" in driver.find_element(By.ID, "reasons").text
    finally:
        driver.quit()
