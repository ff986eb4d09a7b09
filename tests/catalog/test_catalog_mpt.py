"""The built-in catalog's MPT models: licenses, lineage, and `can-use --commercial` for each."""
from __future__ import annotations

import pytest

from openseason.catalog import can_use, lineage
from openseason.cli import main


@pytest.fixture()
def db(tmp_path):
    return tmp_path / "catalog.sqlite"


@pytest.mark.parametrize("name, verdict", [
    ("MPT-7B", "yes"), ("MPT-7B-Instruct", "yes"), ("MPT-7B-StoryWriter-65k+", "yes"), ("MPT-7B-Chat", "no"),
    ("MPT-7B-8k", "yes"), ("MPT-7B-8k-Instruct", "yes"), ("MPT-7B-8k-Chat", "no"),
    ("MPT-30B", "yes"), ("MPT-30B-Chat", "no"),
    # its card lists finetuning sets the catalog does not know: never "yes" on unknown upstream
    ("MPT-30B-Instruct", "unknown"),
])
def test_commercial_verdicts(db, name, verdict):
    assert can_use(name, db=db)["verdict"] == verdict


def test_chat_is_non_commercial_by_its_own_license_and_instruct_is_share_alike(db):
    chat = can_use("MPT-7B-Chat", db=db)
    assert any(r.startswith("[no] MPT-7B-Chat") and "cc-by-nc-sa-4.0" in r for r in chat["reasons"])
    instruct = can_use("MPT-7B-Instruct", db=db)
    assert any("share-alike" in c for c in instruct["conditions"])


def test_lineage_goes_through_the_dolly_hhrlhf_mix(db):
    text = str(lineage("MPT-7B-Instruct", db=db))
    for name in ("MPT-7B", "dolly_hhrlhf", "databricks-dolly-15k", "HH-RLHF"):
        assert name in text


def test_cli_can_use_commercial(db, capsys):
    assert main(["catalog", "can-use", "MPT-30B", "--commercial", "--db", str(db)]) == 0
    assert "yes" in capsys.readouterr().out.lower()
