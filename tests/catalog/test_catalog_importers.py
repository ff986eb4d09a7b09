"""Importers on the real data (Ecosystem Graphs snapshot, LLaMA-Cult chart) and on bad input."""
from __future__ import annotations

import json
import sqlite3

import pytest

from openseason.catalog import Catalog, can_use, import_ecosystem_graphs, import_hf_card, import_llama_cult
from openseason.catalog.store import SCHEMA_VERSION, Store
from openseason.cli import main
from openseason.errors import DataError


@pytest.fixture(scope="module")
def eg_db(tmp_path_factory, shared_data):
    """One import of the real Ecosystem Graphs snapshot into a catalog *without* the built-in assets."""
    db = tmp_path_factory.mktemp("eg") / "eg.sqlite"
    with Catalog(db, builtin=False) as cat:
        from openseason.catalog.importers.ecosystem_graphs import import_ecosystem_graphs as run
        report = run(cat, shared_data / "ecosystem-graphs")
    return db, report


def test_ecosystem_graphs_counts(eg_db):
    db, report = eg_db
    # SOURCES.md: 639 assets (429 model, 112 dataset, 98 application)
    assert report["assets"] == 639 and report["files"] == 173
    assert report["by_type"] == {"model": 429, "dataset": 112, "application": 98}
    deps = report["dependencies"]
    # SOURCES.md: 816 dependency references. It counts 311 dangling by exact name because it iterates
    # the three {value, explanation} dependency dicts as if their keys were names; with those dicts
    # unwrapped, 816 - 507 exact matches = 309 dangle by exact name. Case/punctuation-insensitive
    # matching ("LLaMa" -> "LLaMA", "LLaMA 2" -> "Llama 2") resolves 14 more, leaving 295.
    assert deps["total"] == 816
    assert deps["resolved_exact"] == 507
    assert deps["total"] - deps["resolved_exact"] == 309
    assert deps["resolved_normalized"] == 14 and deps["resolved_catalog"] == 0
    assert deps["dangling"] == 295 == len(report["dangling"])
    assert {"where": "stanford.yaml:145", "asset": "Alpaca", "dependency": "LLaMa"} not in report["dangling"]
    assert any(d["dependency"] == "ShareGPT conversations data" and d["asset"] == "Vicuna" for d in report["dangling"])
    # SOURCES.md: 5 duplicate names, all kept and reported with file:line
    dups = {d["name"]: d["where"] for d in report["duplicates"]}
    assert set(dups) == {"ChatGLM", "Imagen 3", "InternLM", "Dragonfly", "GPT-4o"}
    assert dups["ChatGLM"] == ["chatglm.yaml:1 (ChatGLM)", "glm.yaml:1 (ChatGLM)"]
    with Catalog(db, builtin=False) as cat:
        assert cat.store.count("ecosystem-graphs") == 639
    # upstream quirks are reported with file:line and asset, not dropped
    probs = {(p["where"], p["asset"]) for p in report["problems"]}
    assert ("anthropic.yaml:693", "Claude 3.5 Sonnet") in probs
    assert report["cycles"] and all(c[0] == c[-1] for c in report["cycles"])


def test_ecosystem_graphs_values_and_verdicts(eg_db):
    db, _ = eg_db
    with Catalog(db, builtin=False) as cat:
        pile = cat.get("The Pile")
        assert pile.data_license == "mit" and pile.explanations["license"] == "As indicated in the paper."
        assert pile.type == "dataset" and pile.created_date == "2021-01-01"
        llama = cat.get("LLaMA")
        assert (llama.weights_license, llama.code_license) == ("llama-research-license", "gpl-3.0")
        alpaca = cat.get("Alpaca")
        assert alpaca.created_date == "2023-03-13" and alpaca.access == "open" and alpaca.params == 7e9
        # Vicuna says Apache 2.0 for itself but stands on LLaMA ("LLaMA" resolved case-insensitively)
        assert cat.can_use("Vicuna")["verdict"] == "no"
        assert cat.can_use("Alpaca")["verdict"] == "no"
        assert cat.can_use("GPT-J")["verdict"] == "yes"
        assert cat.can_use("text-davinci-003")["verdict"] == "unknown"     # license: unknown
        # trained on a hosted OpenAI model (output terms inferred from organization + access)
        davinci = cat.get("text-davinci-003")
        assert davinci.output_terms == "openai-terms"


def test_import_into_default_catalog_resolves_through_builtin(tmp_path, shared_data, capsys):
    db = tmp_path / "c.sqlite"
    assert main(["catalog", "import", "ecosystem-graphs", str(shared_data / "ecosystem-graphs"), "--db", str(db), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["dependencies"]["resolved_catalog"] > 0            # e.g. "ShareGPT conversations data"
    assert report["dependencies"]["dangling"] < 295
    # import is idempotent: the second run replaces the first
    assert main(["catalog", "import", "ecosystem-graphs", str(shared_data / "ecosystem-graphs"), "--db", str(db)]) == 0
    capsys.readouterr()
    with Catalog(db) as cat:
        assert cat.store.count("ecosystem-graphs") == 639
    assert can_use("Dolly", db=db, source="ecosystem-graphs")["verdict"] == "no"   # Alpaca dataset upstream


def test_llama_cult_chart(tmp_path, shared_data, capsys):
    db = tmp_path / "c.sqlite"
    assert main(["catalog", "import", "llama-cult", str(shared_data / "llama-cult-and-more" / "chart.md"),
                 "--db", str(db), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["rows"] == report["assets"] == 24
    assert report["duplicates"][0]["name"] == "LianjiaTech/BELLE"
    assert {d["dependency"] for d in report["dangling"]} == {"BLOOMZ-7B1-mt", "bloom-1b4", "bloom-2b6-zh", "MOSS-16B"}
    assert any(p["where"] == "chart.md:40" for p in report["problems"])      # ChatGLM row with one cell
    with Catalog(db) as cat:
        vic = cat.get("FastChat/Vicuna")
        assert [(d.name, d.relation) for d in vic.dependencies] == [
            ("LLaMA-7B", "finetune"), ("LLaMA-13B", "finetune"), ("ShareGPT", "trained_on")]
        alpaca = cat.get("Stanford/Alpaca")
        assert ("text-davinci-003", "distilled_from") in [(d.name, d.relation) for d in alpaca.dependencies]
        assert "Self-Instruct" not in [d.name for d in alpaca.dependencies]    # "self-instruct style" is a method
        assert alpaca.training_cost and "$500" in alpaca.training_cost
        lora = cat.get("Alpaca-LoRA")
        assert lora.base_relation == "adapter"
        assert cat.get("replit/replit-code-v1-3b").params == 2.7e9
        assert cat.can_use("Stanford/Alpaca")["verdict"] == "no"
        assert cat.can_use("Databricks/Dolly-v2-12B")["verdict"] == "unknown"   # chart states no license


def test_hf_card_import_and_errors(tmp_path):
    db = tmp_path / "c.sqlite"
    card = tmp_path / "my-dolly" / "README.md"
    card.parent.mkdir()
    card.write_text("---\nlicense: mit\nbase_model: databricks/dolly-v2-3b\nlibrary_name: peft\n"
                    "datasets:\n- OpenAssistant/oasst1\ntags: [lora]\n---\n\n# My Dolly LoRA\n")
    report = import_hf_card(card, db=db)
    assert report["name"] == "My Dolly LoRA" and report["dependencies"]["dangling"] == 0
    with Catalog(db) as cat:
        a = cat.get("my-dolly")                        # the folder name is an alias
        assert a.base_relation == "adapter" and a.weights_license == "mit" and a.source == "hf-card"
    assert can_use("My Dolly LoRA", db=db)["verdict"] == "yes"
    bad = tmp_path / "bad" / "README.md"
    bad.parent.mkdir()
    bad.write_text("---\nlicense: [mit\n---\n# x\n")
    with pytest.raises(DataError, match=r"README.md:\d+:\d+: malformed YAML front matter"):
        import_hf_card(bad, db=db)
    bad.write_text("# no front matter\n")
    with pytest.raises(DataError, match="no YAML front matter"):
        import_hf_card(bad, db=db)


def test_malformed_yaml_reported_with_file_and_position(tmp_path):
    assets = tmp_path / "eg" / "assets"
    assets.mkdir(parents=True)
    (assets / "good.yaml").write_text("- name: Tiny\n  type: model\n  license: {value: Apache 2.0, explanation: card}\n"
                                     "  dependencies: [Tiny Data, Nowhere]\n- name: Tiny Data\n  type: dataset\n"
                                     "  license: CC BY-SA 4.0\n  dependencies: []\n")
    (assets / "broken.yaml").write_text("- name: X\n  license: [unclosed\n")
    (assets / "loop.yaml").write_text("- {name: A, type: model, license: MIT, dependencies: [B]}\n"
                                     "- {name: B, type: model, license: MIT, dependencies: [a]}\n")
    report = import_ecosystem_graphs(tmp_path / "eg", db=tmp_path / "c.sqlite")
    assert report["assets"] == 4
    assert report["malformed_files"][0]["where"].startswith(str(assets / "broken.yaml") + ":")
    assert report["dangling"] == [{"where": "good.yaml:1", "asset": "Tiny", "dependency": "Nowhere"}]
    assert report["cycles"] == [["A", "B", "A"]] or report["cycles"] == [["B", "A", "B"]]
    res = can_use("Tiny", db=tmp_path / "c.sqlite", source="ecosystem-graphs")
    assert res["verdict"] == "unknown"
    assert any("Tiny Data" in c and "share-alike" in c for c in res["conditions"])
    assert can_use("A", db=tmp_path / "c.sqlite", source="ecosystem-graphs")["verdict"] == "unknown"   # cycle


def test_migration_from_v1(tmp_path):
    """A v1 file (the first schema: raw license only, no keys) is upgraded in place on open."""
    path = tmp_path / "old.sqlite"
    conn = sqlite3.connect(path)
    conn.executescript("""
        CREATE TABLE schema_version (version INTEGER NOT NULL);
        CREATE TABLE assets (id INTEGER PRIMARY KEY, name TEXT NOT NULL, type TEXT NOT NULL, organization TEXT,
                             created_date TEXT, access TEXT, license TEXT, data TEXT NOT NULL);
        CREATE TABLE dependencies (asset_id INTEGER NOT NULL REFERENCES assets(id) ON DELETE CASCADE,
                                   name TEXT NOT NULL, relation TEXT NOT NULL DEFAULT 'depends');
        INSERT INTO schema_version VALUES (1);
        INSERT INTO assets VALUES (1, 'Old Chat', 'model', 'Someone', '2023-04-01', 'open', 'CC BY NC 4.0',
                                   '{"description": "kept from v1"}');
        INSERT INTO dependencies VALUES (1, 'pythia 1b', 'finetune');
    """)
    conn.commit()
    conn.close()
    with Store(path) as store:
        assert store.version() == SCHEMA_VERSION
        (old,) = [a for a in store.all_assets() if a.name == "Old Chat"]
        assert old.weights_license == "cc-by-nc-4.0" and old.description == "kept from v1"
        assert [(d.name, d.relation) for d in old.dependencies] == [("pythia 1b", "finetune")]
        assert store.by_key("oldchat")[0].name == "Old Chat"
    with Catalog(path) as cat:                     # built-in seeded next to the migrated asset
        result = cat.can_use("old chat")
        assert result["verdict"] == "no"
        assert any("Pythia-1B (finetune)" in r for r in result["reasons"])
