"""Hostile catalog input: YAML alias bombs are refused, user-supplied names never act as rich markup."""
from __future__ import annotations

import json

import pytest

from openseason.catalog import import_ecosystem_graphs, import_hf_card
from openseason.cli import main
from openseason.errors import DataError


def _laughs(levels: int) -> str:
    """`a: &a [x * 9]`, then each level a list of nine aliases of the one before (9**levels values)."""
    names = [chr(ord("a") + i) for i in range(levels)]
    lines = ["- name: Bomb", "  type: model", f"  x0: &{names[0]} [x,x,x,x,x,x,x,x,x]"]
    for i in range(1, levels):
        lines.append(f"  x{i}: &{names[i]} [" + ",".join([f"*{names[i - 1]}"] * 9) + "]")
    return "\n".join(lines) + "\n"


def test_yaml_alias_bomb_is_refused_with_file_line(tmp_path):
    assets = tmp_path / "eg" / "assets"
    assets.mkdir(parents=True)
    (assets / "bomb.yaml").write_text(_laughs(6))     # 9**6 values if expanded; the real one had 9 levels
    (assets / "good.yaml").write_text("- name: Tiny\n  type: model\n  license: MIT\n")
    report = import_ecosystem_graphs(tmp_path / "eg", db=tmp_path / "c.sqlite")
    assert report["assets"] == 1                        # the rest of the import goes on
    [bad] = report["malformed_files"]
    assert bad["where"] == f"{assets / 'bomb.yaml'}:4:11" and "aliases" in bad["error"]


def test_yaml_merge_key_alias_in_card_is_refused(tmp_path):
    card = tmp_path / "m" / "README.md"
    card.parent.mkdir()
    card.write_text("---\nbase: &b {license: mit}\nother:\n  <<: *b\n---\n# M\n")
    with pytest.raises(DataError, match=r"README.md:4:7: YAML aliases"):
        import_hf_card(card, db=tmp_path / "c.sqlite")


@pytest.fixture
def markup_db(tmp_path):
    assets = tmp_path / "eg" / "assets"
    assets.mkdir(parents=True)
    (assets / "m.yaml").write_text(
        "- {name: '[/red]', type: model, license: MIT, organization: '[/]', dependencies: ['[bold]x']}\n"
        "- {name: '[bold]x', type: dataset, license: '[link=http://e]CC', dependencies: []}\n"
        "- {name: '$\\frac{x$ [/red]', type: model, created_date: 2023-01-01, license: MIT, dependencies: []}\n")
    db = tmp_path / "c.sqlite"
    import_ecosystem_graphs(tmp_path / "eg", db=db)
    return db


@pytest.mark.parametrize("argv", [
    ["catalog", "list", "--source", "ecosystem-graphs"],
    ["catalog", "search", "red"],
    ["catalog", "search", "x"],
    ["catalog", "show", "[/red]"],
    ["catalog", "show", "[bold]x"],
    ["catalog", "lineage", "[/red]"],
    ["catalog", "lineage", "[bold]x"],
    ["catalog", "can-use", "[/red]"],
])
def test_asset_names_are_not_markup(markup_db, argv, capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "400")  # no folding, so the names can be looked for whole
    assert main(argv + ["--db", str(markup_db)]) in (0, 1)
    out = capsys.readouterr().out
    if argv[1] in ("list", "lineage") or argv[-1] in ("red",):
        assert "[/red]" in out
    if argv[-1] in ("x", "[bold]x") or argv[1] == "list":
        assert "[bold]x" in out


def test_timeline_names_are_not_mathtext(markup_db, tmp_path):
    out = tmp_path / "t.png"
    assert main(["catalog", "timeline", "-o", str(out), "--source", "ecosystem-graphs", "--db", str(markup_db)]) == 0
    assert out.stat().st_size > 0
