"""can-use verdicts on the built-in catalog, license normalization, lineage and checkpoint registration."""
from __future__ import annotations

import json

import pytest

from openseason.catalog import Catalog, attach_evaluation, can_use, lineage, register_checkpoint
from openseason.catalog import licenses as lic
from openseason.cli import main
from openseason.errors import OpenseasonError


@pytest.fixture()
def db(tmp_path):
    return tmp_path / "catalog.sqlite"


@pytest.mark.parametrize("name, verdict", [
    ("Alpaca", "no"), ("Vicuna", "no"), ("Koala", "no"), ("Dolly v1", "no"), ("Baize", "no"),
    ("GPT4All", "no"), ("GPT4All-J", "no"), ("StableVicuna", "no"), ("MPT-7B-Chat", "no"), ("MiniGPT-4", "no"),
    ("LLaMA-Adapter V1", "no"), ("OpenFlamingo", "no"), ("ColossalChat", "no"),
    ("Dolly v2", "yes"), ("Pythia", "yes"), ("Pythia-12B", "yes"), ("GPT-NeoX-20B", "yes"), ("OpenLLaMA", "yes"),
    ("MPT-7B", "yes"), ("MPT-7B-Instruct", "yes"), ("RedPajama-INCITE-Chat-3B-v1", "yes"),
    ("OpenAssistant SFT-4 Pythia-12B", "yes"),
])
def test_builtin_commercial_verdicts(db, name, verdict):
    assert can_use(name, db=db)["verdict"] == verdict


def test_reason_chains_name_assets_and_rules(db):
    alpaca = can_use("Alpaca", db=db)
    text = "\n".join(alpaca["reasons"])
    assert "[no] Alpaca <- LLaMA (finetune): weights license llama-research-license" in text
    assert "Alpaca data (trained_on): data license cc-by-nc-4.0" in text
    assert "text-davinci-003 (generated_by): outputs of text-davinci-003 are governed by OpenAI Terms of Use" in text

    dolly = can_use("Dolly v2", db=db)
    assert dolly["verdict"] == "yes"
    assert any("databricks-dolly-15k (cc-by-sa-3.0): share-alike" in c for c in dolly["conditions"])
    # non-commercial research use of Alpaca is fine
    assert can_use("Alpaca", commercial=False, db=db)["verdict"] == "yes"


def test_unknown_upstream_is_never_yes(db, tmp_path):
    card = tmp_path / "card" / "README.md"
    card.parent.mkdir()
    # permissive own license, but trained on a dataset nobody knows
    card.write_text("---\nlicense: apache-2.0\nbase_model: EleutherAI/pythia-70m\ndatasets:\n- someone/mystery-data\n---\n# mystery-chat\n")
    from openseason.catalog import import_hf_card
    report = import_hf_card(card, db=db)
    assert report["dependencies"]["dangling"] == 1 and report["dangling"][0]["dependency"] == "someone/mystery-data"
    result = can_use("mystery-chat", db=db)
    assert result["verdict"] == "unknown"
    assert any("someone/mystery-data" in r and r.startswith("[unknown]") for r in result["reasons"])


def test_license_normalization():
    for text, expected in [("Apache 2.0", "apache-2.0"), ("CC BY-NC 4.0", "cc-by-nc-4.0"), ("CC-BY-NC-4.0", "cc-by-nc-4.0"),
                           ("CC BY NC 4.0", "cc-by-nc-4.0"), ("CC by-NC-SA 4.0", "cc-by-nc-sa-4.0"), ("LLaMA 2", "llama2"),
                           ("Llama 2", "llama2"), ("LLaMA2", "llama2"), ("BigCode Open RAIL-M v1.0", "bigcode-openrail-m"),
                           ("unknown", "unknown"), ("unknkown", "unknown"), ("Wordtune License", "other"), ("MIT", "mit")]:
        assert lic.normalize(text) == expected, text
    roles = lic.split_roles("LLaMa License (model weights), GPLv3 (code)", "weights")
    assert roles == {"weights": "llama-research-license", "code": "gpl-3.0"}
    assert lic.split_roles("CC BY NC 4.0 (model weights)", "weights") == {"weights": "cc-by-nc-4.0"}
    assert lic.get("cc-by-sa-3.0").share_alike and lic.get("cc-by-nc-4.0").commercial == "no"
    assert lic.get("apache-2.0").spdx == "Apache-2.0"


def test_builtin_catalog_is_complete_and_consistent(db):
    with Catalog(db) as cat:
        for name in ["Pythia", "GPT-NeoX-20B", "LLaMA", "Alpaca", "Vicuna", "Koala", "Dolly v1", "Dolly v2",
                     "OpenAssistant SFT-4 Pythia-12B", "Baize", "StableLM-Base-Alpha", "StableVicuna", "ColossalChat",
                     "MPT-7B", "MPT-7B-Instruct", "MPT-7B-Chat", "MPT-7B-StoryWriter-65k+", "RedPajama-INCITE-Base-3B-v1",
                     "OpenLLaMA", "LLaMA-Adapter V1", "LLaMA-Adapter V2", "OpenFlamingo", "MiniGPT-4", "GPT4All",
                     "The Pile", "RedPajama", "databricks-dolly-15k", "OASST1", "Alpaca data", "Self-Instruct",
                     "LongForm", "Alpaca Libre", "HH-RLHF", "ShareGPT"]:
            a = cat.get(name)
            assert a.source == "builtin" and a.created_date, name
        # weights / code / data terms are kept apart
        llama = cat.get("LLaMA")
        assert (llama.weights_license, llama.code_license) == ("llama-research-license", "gpl-3.0")
        assert cat.get("Dolly v2").weights_license == "mit" and cat.get("databricks-dolly-15k").data_license == "cc-by-sa-3.0"
        assert cat.get("databricks/dolly-v2-12b").name == "Dolly v2"       # hub id as a name
        assert cat.get("LLaMA-7B").name == "LLaMA"                          # alias
        # every built-in dependency resolves; the built-in graph has no cycle
        graph = cat.graph
        builtin = [a for a in graph.assets if a.source == "builtin"]
        dangling = [(a.name, e.dep.name) for a in builtin for e in graph.edges(a) if e.target is None]
        assert dangling == []
        assert graph.cycles(builtin) == []


def test_lineage_upstream_and_downstream(db):
    result = lineage("Pythia-12B", db=db)
    assert [n["name"] for n in result["upstream"]] == ["The Pile"]
    down = {n["name"]: n["relation"] for n in result["downstream"]}
    assert down["Dolly v2"] == "finetune" and "OpenAssistant SFT-4 Pythia-12B" in down
    vicuna_down = lineage("Vicuna", db=db)["downstream"]
    assert {n["name"] for n in vicuna_down} >= {"StableVicuna", "MiniGPT-4"}


def test_register_checkpoint_and_evaluation(db, tmp_path):
    ckpt = tmp_path / "runs" / "pythia-dolly"
    ckpt.mkdir(parents=True)
    (ckpt / "run_card.json").write_text(json.dumps({"created": "2026-11-25T10:00:00+00:00"}))
    out = register_checkpoint(ckpt, base_model="EleutherAI/pythia-70m", datasets=["databricks-dolly-15k"],
                              method="lora", hardware="2-core CPU", seconds=12.5, tokens=40960, db=db)
    assert out["name"] == "pythia-dolly" and out["can_use"]["verdict"] == "yes"
    with Catalog(db) as cat:
        a = cat.get("pythia-dolly")
        assert a.source == "checkpoint" and a.base_relation == "adapter" and a.training_tokens == 40960
        assert a.created_date == "2026-11-25" and a.training_time == "12.5 s" and a.extra["training_seconds"] == 12.5
    # trained on Alpaca data -> no; registering the same directory again replaces the record
    out = register_checkpoint(ckpt, base_model="EleutherAI/pythia-70m", datasets=["tatsu-lab/alpaca"], db=db)
    assert out["can_use"]["verdict"] == "no"
    with Catalog(db) as cat:
        assert len([a for a in cat.graph.assets if a.source == "checkpoint"]) == 1
    attach_evaluation("pythia-dolly", {"task": "dolly-val", "perplexity": 12.5}, db=db)
    with Catalog(db) as cat:
        assert cat.get("pythia-dolly").evaluations[0]["perplexity"] == 12.5
    with pytest.raises(OpenseasonError, match="no asset named"):
        attach_evaluation("nope-model", {"x": 1}, db=db)


def test_cli_can_use_json_and_errors(db, capsys):
    assert main(["catalog", "can-use", "Alpaca", "--commercial", "--json", "--db", str(db)]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["verdict"] == "no" and out["reasons"]
    assert main(["catalog", "can-use", "OpenLLaMA", "--commercial", "--json", "--db", str(db)]) == 0
    assert json.loads(capsys.readouterr().out)["verdict"] == "yes"
    assert main(["catalog", "can-use", "Alpacca", "--json", "--db", str(db)]) == 2
    err = capsys.readouterr().err
    assert "no asset named 'Alpacca'" in err and "Alpaca" in err


def test_default_db_env_override(tmp_path, monkeypatch, capsys):
    target = tmp_path / "env.sqlite"
    monkeypatch.setenv("OPENSEASON_CATALOG_DB", str(target))
    assert main(["catalog", "can-use", "Pythia", "--json"]) == 0
    assert target.exists()
    monkeypatch.delenv("OPENSEASON_CATALOG_DB")
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    from openseason.catalog.store import default_db_path
    assert default_db_path() == tmp_path / "xdg" / "openseason" / "catalog.sqlite"
