"""Views people would rather look at: lineage --depth in every format, conflicts between sources,
the size/license table and LLaMA-Cult chart exports, the timeline and evolution tree at 700 assets,
and the cytoscape page in headless Chromium (first click, lineage highlight, multi-parent layout)."""
from __future__ import annotations

import csv
import io
import json
import os
import re
import shutil
import threading
import urllib.request
from pathlib import Path

import pytest

from openseason.catalog import Catalog
from openseason.cli import main


@pytest.fixture(scope="module")
def builtin_db(tmp_path_factory):
    path = tmp_path_factory.mktemp("builtin") / "c.sqlite"
    Catalog(path).close()
    return path


@pytest.fixture(scope="module")
def full_db(tmp_path_factory, shared_data):
    """The built-in catalog plus the real Ecosystem Graphs and LLaMA-Cult imports (about 740 assets)."""
    from openseason.catalog.importers.ecosystem_graphs import import_ecosystem_graphs
    from openseason.catalog.importers.llama_cult import import_llama_cult
    path = tmp_path_factory.mktemp("full") / "c.sqlite"
    with Catalog(path) as cat:
        import_ecosystem_graphs(cat, shared_data / "ecosystem-graphs")
        import_llama_cult(cat, shared_data / "llama-cult-and-more" / "chart.md")
    return path


def _mermaid(capsys, *args):
    assert main(["catalog", "lineage", *args, "--format", "mermaid"]) == 0
    out = capsys.readouterr().out
    nodes = set(re.findall(r'^\s+n\w+\["?\(?\[?"([^"]+)"', out, flags=re.M))
    edges = [l for l in out.splitlines() if "-->" in l or "-.->" in l]
    return nodes, edges


def test_lineage_depth_cuts_mermaid_and_dot(builtin_db, full_db, capsys):
    with Catalog(builtin_db) as cat:
        llama = cat.get("LLaMA")
        direct = {e.target.name for e in cat.graph.edges(llama) if e.target} | \
                 {e.src.name for e in cat.graph.downstream_edges(llama)}
    nodes, edges = _mermaid(capsys, "LLaMA", "--depth", "1", "--db", str(builtin_db))
    assert nodes == {"LLaMA"} | direct
    assert "StableVicuna" not in nodes                    # two edges away (via Vicuna)
    nodes2, edges2 = _mermaid(capsys, "LLaMA", "--depth", "2", "--db", str(builtin_db))
    assert "StableVicuna" in nodes2 and len(edges2) > len(edges)
    nodes0, edges0 = _mermaid(capsys, "LLaMA", "--depth", "0", "--db", str(builtin_db))
    assert nodes0 == {"LLaMA"} and edges0 == []
    assert main(["catalog", "lineage", "LLaMA", "--depth", "1", "--format", "dot", "--db", str(builtin_db)]) == 0
    dot = capsys.readouterr().out
    assert dot.count(" -> ") == len(edges) and '"StableVicuna"' not in dot
    # the real import: LLaMA's lineage at depth 1 was 595 edges (every connected asset, any distance)
    _, eg_edges = _mermaid(capsys, "LLaMA", "--source", "ecosystem-graphs", "--depth", "1", "--db", str(full_db))
    _, eg_all = _mermaid(capsys, "LLaMA", "--source", "ecosystem-graphs", "--db", str(full_db))
    assert 10 < len(eg_edges) < 120 and len(eg_all) > len(eg_edges)
    with pytest.raises(SystemExit) as exc:
        main(["catalog", "lineage", "LLaMA", "--depth", "-1", "--db", str(builtin_db)])
    assert exc.value.code == 2
    assert "not a depth" in capsys.readouterr().err


def test_conflicts_between_sources(full_db, capsys):
    assert main(["catalog", "conflicts", "Vicuna", "--json", "--db", str(full_db)]) == 0
    found = json.loads(capsys.readouterr().out)
    (lic,) = [c for c in found if c["field"] == "weights_license"]
    says = {v["source"]: v["value"] for v in lic["values"]}
    assert says == {"builtin": "llama-research-license", "ecosystem-graphs": "apache-2.0"}
    assert all(v["origin"] for v in lic["values"])
    assert main(["catalog", "conflicts", "--json", "--db", str(full_db)]) == 0
    every = json.loads(capsys.readouterr().out)
    fields = {(c["asset"], c["field"]) for c in every}
    assert ("LLaMA", "access") in fields and ("OpenLLaMA", "params") in fields
    # same facts at different precision, or one day apart, are not conflicts
    assert not any(c["asset"] in ("The Pile", "C4") for c in every)
    assert main(["catalog", "conflicts", "Nosuch Model", "--db", str(full_db)]) == 2
    assert "no asset named" in capsys.readouterr().err


def test_table_exports(full_db, tmp_path, capsys):
    out = tmp_path / "t.csv"
    assert main(["catalog", "table", "--format", "csv", "--source", "builtin", "--sort", "params", "--descending",
                 "-o", str(out), "--db", str(full_db)]) == 0
    rows = list(csv.DictReader(io.StringIO(out.read_text())))
    assert list(rows[0]) == ["name", "type", "organization", "date", "params", "context", "training_tokens", "license",
                             "commercial", "commercial_reason", "finetune_method", "data", "hardware", "cost", "source",
                             "conflicts"]
    assert rows[0]["name"] == "GPT-3 (davinci)" and rows[0]["params"] == "175B"
    vic = next(r for r in rows if r["name"] == "Vicuna")
    assert vic["context"] == "2048" and vic["commercial"] == "no" and "llama-research-license" in vic["commercial_reason"]
    assert vic["cost"].startswith("about $140") and vic["hardware"] == "8 NVIDIA A100 GPUs"
    assert vic["conflicts"] == "weights_license"
    assert next(r for r in rows if r["name"] == "LLaMA")["training_tokens"] == "1.4T"
    dolly = next(r for r in rows if r["name"] == "Dolly v2")
    assert dolly["commercial"] == "yes"
    capsys.readouterr()
    assert main(["catalog", "table", "--view", "chart", "--db", str(full_db)]) == 0
    md = capsys.readouterr().out.splitlines()
    assert md[0] == "| name | base_model | data | finetune_method | hardware | cost | commercial | commercial_reason | source |"
    assert len(md) == 2 + 24
    alpaca = next(l for l in md if l.startswith("| Stanford/Alpaca |"))
    assert "| LLaMA-7B |" in alpaca and "| SFT |" in alpaca and "| no |" in alpaca
    assert all(l.count(" | ") == 8 for l in md[2:])    # pipes inside cells are escaped


def test_timeline_builtin_axis_from_dense_range(builtin_db, tmp_path):
    from openseason.catalog.timeline import render_timeline
    with Catalog(builtin_db) as cat:
        result = render_timeline(cat.graph, cat.store.query(source="builtin", type="model"), tmp_path / "t.png")
    (page,) = result["pages"]
    assert page["dense_from"] >= "2022-06" and "GPT-3 (davinci)" in page["outliers"]
    assert page["label_overlaps"] == 0
    # the 2023 wave gets most of the width instead of the last few percent
    import datetime as dt
    lo, hi = (dt.date.fromisoformat(x) for x in page["xlim"])
    assert (hi - dt.date(2023, 2, 1)).days / (hi - lo).days > 0.4
    assert Path(result["paths"][0]).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_timeline_full_catalog_pages_stay_readable(full_db, tmp_path, capsys):
    out = tmp_path / "full.png"
    assert main(["catalog", "timeline", "-o", str(out), "--db", str(full_db)]) == 0
    printed = capsys.readouterr().out
    files = sorted(tmp_path.glob("full-p*.png"))
    assert len(files) >= 3 and not out.exists()
    assert len(re.findall(r"^wrote ", printed, flags=re.M)) == len(files)
    from PIL import Image
    for f in files:
        w, h = Image.open(f).size
        assert w == 1600 and h <= 2500, (f, w, h)               # was one 1650x24002 image
    from openseason.catalog.timeline import render_timeline
    with Catalog(full_db) as cat:
        models = cat.store.query(type="model", since="2021")
        by_year = render_timeline(cat.graph, models, tmp_path / "y.png", page_by="year")
    years = [Path(p).stem.split("-")[-1] for p in by_year["paths"]]
    assert "2023" in years and years == sorted(years)
    assert all(p["label_overlaps"] == 0 for p in by_year["pages"])
    assert all(p["outliers"] == [] for p in by_year["pages"])


def test_evolution_tree_svg(full_db, tmp_path, capsys):
    out = tmp_path / "tree.svg"
    assert main(["catalog", "tree", "--out", str(out), "--source", "builtin", "--db", str(full_db)]) == 0
    svg = out.read_text()
    assert svg.lstrip().startswith("<?xml") and "<svg" in svg
    for text in ("LLaMA", "Pythia", "MPT", "StableVicuna", "open weights, commercial use allowed",
                 "weights under a restricted license", "API-only or closed (no weights)"):
        assert text in svg, text
    from openseason.catalog.tree import category
    with Catalog(full_db) as cat:
        g = cat.graph
        cats = {n: category(g, cat.get(n, "builtin")) for n in ("Pythia-12B", "Vicuna", "GPT-4", "StableVicuna")}
        assert cats == {"Pythia-12B": "open", "Vicuna": "restricted", "GPT-4": "api", "StableVicuna": "restricted"}
        from openseason.catalog.evolution import base_of, family_of
        assert base_of(g, cat.get("StableVicuna", "builtin")).name == "Vicuna"   # attached to Vicuna, not LLaMA
        assert family_of(g, cat.get("StableVicuna", "builtin")) == "LLaMA"
        assert family_of(g, cat.get("Flan-T5", "ecosystem-graphs")) == "T5"
        assert family_of(g, cat.get("InstructGPT", "ecosystem-graphs")) == "GPT-3"
    png = tmp_path / "llama.png"
    assert main(["catalog", "tree", "--out", str(png), "--family", "LLaMA", "--db", str(full_db)]) == 0
    assert png.read_bytes()[:4] == b"\x89PNG"
    capsys.readouterr()
    assert main(["catalog", "tree", "--out", str(tmp_path / "x.txt"), "--db", str(full_db)]) == 2
    assert main(["catalog", "tree", "--out", str(tmp_path / "x.svg"), "--family", "Nope", "--db", str(full_db)]) == 2
    assert "no models in a family" in capsys.readouterr().err


# ---------------------------------------------------------------- the page in headless Chromium
CHROMIUM = shutil.which("chromium") or ("/usr/bin/chromium" if Path("/usr/bin/chromium").exists() else None)
CHROMEDRIVER = shutil.which("chromedriver") or ("/usr/bin/chromedriver" if Path("/usr/bin/chromedriver").exists() else None)


@pytest.fixture(scope="module")
def full_server(full_db):
    from openseason.catalog.web import make_server
    srv = make_server(full_db, "127.0.0.1", 0)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{srv.server_address[1]}"
    srv.shutdown()
    srv.server_close()


def test_page_serves_vendored_js_not_a_cdn(full_server):
    with urllib.request.urlopen(full_server + "/") as r:
        page = r.read().decode()
    scripts = re.findall(r'<script src="([^"]+)"', page)
    assert scripts == ["/static/vendor/cytoscape.min.js", "/static/vendor/cytoscape-dagre.min.js"]
    assert "http://" not in page and "https://" not in page
    for s in scripts:
        with urllib.request.urlopen(full_server + s) as r:
            assert r.headers["Content-Type"].startswith("text/javascript") and len(r.read()) > 40_000
    with pytest.raises(urllib.error.HTTPError) as exc:
        urllib.request.urlopen(full_server + "/static/vendor/..%2f..%2fweb.py")
    assert exc.value.code == 404
    with urllib.request.urlopen(full_server + "/api/table.csv?view=chart") as r:
        assert r.read().decode().startswith("name,base_model,")
    with urllib.request.urlopen(full_server + "/api/tree.svg?family=LLaMA") as r:
        assert r.headers["Content-Type"] == "image/svg+xml" and b"StableVicuna" in r.read()


def _artifact(driver, tmp_path, name):
    path = tmp_path / name
    driver.save_screenshot(str(path))
    keep = os.environ.get("OPENSEASON_TEST_ARTIFACTS")
    if keep:
        Path(keep).mkdir(parents=True, exist_ok=True)
        shutil.copy(path, Path(keep) / name)
    return path


@pytest.mark.skipif(CHROMIUM is None or CHROMEDRIVER is None, reason="chromium / chromedriver not installed (CI installs them)")
def test_graph_page_in_headless_chromium(full_server, tmp_path):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select, WebDriverWait

    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for arg in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1500,950",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                "--no-first-run", f"--user-data-dir={tmp_path / 'profile'}"):
        opts.add_argument(arg)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=opts)
    wait = WebDriverWait(driver, 90)   # the tree is drawn by matplotlib on the server: slow on a busy machine
    js = driver.execute_script

    def inside_box():
        """Every node and edge of the graph lies inside the graph's box."""
        return js("""const bb = cy.elements().renderedBoundingBox(), w = cy.width(), h = cy.height();
                     return bb.x1 >= -1 && bb.y1 >= -1 && bb.x2 <= w + 1 && bb.y2 <= h + 1;""")

    try:
        driver.get(full_server + "/")
        wait.until(lambda d: d.find_element(By.TAG_NAME, "body").get_attribute("data-ready") == "1")
        assert js("return typeof cytoscape") == "function" and js("return cy.nodes().length") > 20
        assert inside_box()
        # no cell is cut: every cell shows all of its text
        assert js("""return [...document.querySelectorAll('#results td')].every(td => td.scrollWidth <= td.clientWidth + 1)""")
        # first click after typing: leaving the search box must not rebuild the row under the mouse
        drawn = driver.find_element(By.ID, "cy").get_attribute("data-drawn")
        driver.find_element(By.ID, "search").send_keys("stablevicuna")
        wait.until(lambda d: d.find_element(By.ID, "cy").get_attribute("data-drawn") != drawn)
        row = driver.find_element(By.CSS_SELECTOR, "#results tr")
        assert row.find_element(By.TAG_NAME, "td").text == "StableVicuna"
        row.click()                                             # one click, straight from the search box
        wait.until(lambda d: d.find_elements(By.ID, "verdict-value"))
        assert driver.find_element(By.ID, "verdict-value").text == "no"
        assert "LLaMA" in driver.find_element(By.ID, "reasons").text
        # lineage to depth 1: exactly StableVicuna's four inputs, each drawn left of it, inside the box
        Select(driver.find_element(By.ID, "depth")).select_by_visible_text("1")
        wait.until(lambda d: json.loads(d.find_element(By.ID, "cy").get_attribute("data-upstream") or "[]")
                   == ["Alpaca data", "GPT4All data", "OASST1", "Vicuna"])
        pos = js("""const p = {}; cy.nodes().forEach(n => p[n.data('label').replace(' \u26A0', '')] = n.renderedPosition()); return p;""")
        for name in ("Alpaca data", "GPT4All data", "OASST1", "Vicuna"):
            assert pos[name]["x"] < pos["StableVicuna"]["x"], name
        incoming = js("return cy.$('node.chosen').incomers('edge').map(e => e.source().data('label').replace(' \u26A0', '')).sort()")
        assert incoming == ["Alpaca data", "GPT4All data", "OASST1", "Vicuna"]
        assert inside_box()
        _artifact(driver, tmp_path, "stablevicuna-depth1.png")
        # depth 2 adds Vicuna's own inputs, drawn left of Vicuna (not in StableVicuna's column)
        Select(driver.find_element(By.ID, "depth")).select_by_visible_text("2")
        wait.until(lambda d: "LLaMA" in json.loads(d.find_element(By.ID, "cy").get_attribute("data-upstream")))
        pos = js("""const p = {}; cy.nodes().forEach(n => p[n.data('label').replace(' \u26A0', '')] = n.renderedPosition()); return p;""")
        assert pos["LLaMA"]["x"] < pos["Vicuna"]["x"] and pos["ShareGPT"]["x"] < pos["Vicuna"]["x"]
        assert js("return cy.edges().every(e => e.source().renderedPosition().x < e.target().renderedPosition().x)")
        assert inside_box()
        # clicking a node in the graph selects it; the downstream highlight follows the depth
        js("cy.$('node').filter(n => n.data('label').startsWith('Vicuna')).emit('tap')")
        wait.until(lambda d: d.find_element(By.CSS_SELECTOR, "#card h3").text == "Vicuna")
        wait.until(lambda d: "StableVicuna" in json.loads(d.find_element(By.ID, "cy").get_attribute("data-downstream")))
        assert js("return cy.$('node.down').map(n => n.data('label')).includes('StableVicuna')")
        # conflicting facts are marked on the card
        assert "weights_license" in driver.find_element(By.ID, "card").text
        assert "ecosystem-graphs says apache-2.0" in driver.find_element(By.ID, "card-conflicts").text
        _artifact(driver, tmp_path, "vicuna-card.png")
        # a filter narrows the graph too
        Select(driver.find_element(By.ID, "filter-type")).select_by_visible_text("model")
        wait.until(lambda d: js("return cy.nodes().every(n => n.data('type') === 'model')"))
        # the size/license table sorts numerically, empty cells last
        driver.find_element(By.ID, "search").clear()
        driver.find_element(By.CSS_SELECTOR, "nav button[data-view=table]").click()
        wait.until(lambda d: int(d.find_element(By.ID, "table-table").get_attribute("data-rows") or 0) > 100)
        header = lambda: next(th for th in driver.find_elements(By.CSS_SELECTOR, "#table-table th") if th.text.startswith("params"))
        header().click()
        header().click()
        wait.until(lambda d: "sorted-desc" in header().get_attribute("class"))
        cells = [td.text for td in driver.find_elements(By.CSS_SELECTOR, "#table-table tbody tr td:nth-child(5)")]
        assert cells[0] in ("1.2T", "1.75T", "1.6T", "1T", "540B") or cells[0].endswith("T")
        assert cells.index("") > cells.index("7B")
        _artifact(driver, tmp_path, "table.png")
        driver.find_element(By.CSS_SELECTOR, "nav button[data-view=tree]").click()
        Select(driver.find_element(By.ID, "tree-family")).select_by_value("LLaMA")
        wait.until(lambda d: "family=LLaMA" in (d.find_element(By.ID, "tree-img").get_attribute("data-loaded") or ""))
        wait.until(lambda d: js("return document.getElementById('tree-img').naturalWidth") > 500)
        _artifact(driver, tmp_path, "tree-llama.png")
        assert not [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]
    finally:
        driver.quit()
