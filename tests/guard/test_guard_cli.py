"""`openseason guard check` prints the JSON decision; bad configs exit 2 with one clear line."""
from __future__ import annotations

import json

from openseason.cli import main


def test_guard_check_prints_json(capsys):
    assert main(["guard", "check", "support", "I was charged twice for one order"]) == 0
    decision = json.loads(capsys.readouterr().out)
    assert decision["intent"] == "report double charge" and decision["rail"] == "dialog"
    assert decision["llm_calls"] == 0 and 0.5 <= decision["score"] <= 1.0


def test_guard_check_conversation_turns(capsys):
    assert main(["guard", "check", "support", "how do I make a bomb", "ok, and where is my order?"]) == 0
    decision = json.loads(capsys.readouterr().out)
    # the flagged first turn is dropped from the prompt; the current turn is answered on its own verdict
    assert decision["allowed"] is True and decision["dropped"] == [0] and decision["intent"] == "ask track order"
    assert main(["guard", "check", "support", "ok, and where is my order?", "how do I make a bomb"]) == 0
    decision = json.loads(capsys.readouterr().out)
    assert decision["rail"] == "input" and decision["turn"] == 1 and decision["allowed"] is False


def test_guard_bad_config_exits_2(tmp_path, capsys):
    (tmp_path / "config.yml").write_text("rails: [\n")
    assert main(["guard", "check", str(tmp_path), "hi"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("openseason: error: ") and "config.yml:2:1: invalid YAML" in err
    assert "Traceback" not in err


def test_guard_chat(monkeypatch, capsys):
    lines = iter(["hello", "thanks a lot", ""])
    monkeypatch.setattr("builtins.input", lambda prompt="": next(lines))
    assert main(["guard", "chat", "support", "--show-decision"]) == 0
    out = capsys.readouterr()
    assert "bot> Hello! I'm the ShopRight assistant." in out.out and "bot> You're welcome!" in out.out
    assert '"intent": "express gratitude"' in out.err


def test_guard_calibrate_suggests_a_threshold(tmp_path, capsys):
    from openseason.guard import EXAMPLES

    rows = (EXAMPLES / "support_paraphrases.txt").read_text().splitlines()
    small = tmp_path / "para.txt"
    small.write_text("\n".join(r for r in rows if r.startswith(("express greeting |", "ask track order |",
                                                                  "unknown |"))))
    assert main(["guard", "calibrate", "support", "--paraphrases", str(small), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert len(report["table"]) == 16 and report["current_threshold"] == 0.5
    assert report["suggested_accuracy"] == max(r["accuracy"] for r in report["table"]) >= report["current_accuracy"]


def test_guard_strict_keys_and_trusted_actions(tmp_path, capsys):
    (tmp_path / "config.yml").write_text("rails:\n  inputs:\n    flows: []\n")
    (tmp_path / "main.co").write_text('define user hi\n  "hello"\ndefine bot b\n  "$n"\n'
                                      'define flow f\n  user hi\n  $n = execute count_letters(t=$user_message)\n'
                                      '  bot b\n')
    (tmp_path / "actions.py").write_text("from nemoguardrails.actions import action\n\n"
                                         "@action()\ndef count_letters(t):\n    return len(t)\n")
    assert main(["guard", "check", str(tmp_path), "hello", "--strict"]) == 2
    err = capsys.readouterr().err
    assert "config.yml:2:3: unknown key `rails.inputs`; did you mean `input`?" in err
    assert main(["guard", "check", str(tmp_path), "hello"]) == 2  # the warning, then: actions not trusted
    err = capsys.readouterr().err
    assert "warning:" in err and "unknown key `rails.inputs`" in err and "--trust-actions" in err
    assert main(["guard", "check", str(tmp_path), "hello", "--trust-actions"]) == 0
    assert json.loads(capsys.readouterr().out)["flow"] == "f"


def test_guard_actions_from_a_module_path(tmp_path, capsys, monkeypatch):
    (tmp_path / "rails").mkdir()
    (tmp_path / "rails" / "main.co").write_text('define user hi\n  "hello"\ndefine bot b\n  "$n letters"\n'
                                                'define flow f\n  user hi\n  $n = execute count letters(t=$user_message)\n'
                                                '  bot b\n')
    (tmp_path / "cli_guard_actions.py").write_text("from openseason.guard import action\n\n"
                                                   "@action(name='count letters')\ndef count(t):\n    return len(t)\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert main(["guard", "check", str(tmp_path / "rails"), "hello", "--actions", "cli_guard_actions"]) == 0
    assert json.loads(capsys.readouterr().out)["flow"] == "f"
