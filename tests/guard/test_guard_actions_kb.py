"""The config folder contract: actions.py / actions/ (only with opt-in, NeMo's `@action` import works),
`kb/` markdown retrieved into `$relevant_chunks` and checked by the fact-checking rail."""
from __future__ import annotations

import sys

import pytest

from openseason.errors import ConfigError
from openseason.guard import Rails, RailsConfig, ScriptedClient, action
from openseason.guard.actions import load_actions_module
from openseason.guard.knowledge import chunk_markdown

COLANG = '''
define user ask stock
  "is the blue kettle in stock"
  "do you have kettles"

define bot report stock
  "Stock: $count"

define flow stock
  user ask stock
  $count = execute check stock(item=$user_message)
  bot report stock
'''

ACTIONS_PY = '''
from nemoguardrails.actions import action

SIDE_EFFECT = []

@action(name="check stock", is_system_action=False)
async def check_stock(item: str, context: dict = None):
    SIDE_EFFECT.append(context["last_user_message"])
    return len(item)
'''


def _folder(tmp_path, actions: bool = True, package: bool = False):
    (tmp_path / "main.co").write_text(COLANG)
    (tmp_path / "config.yml").write_text("embeddings: {cache_dir: false}\n")
    if actions and not package:
        (tmp_path / "actions.py").write_text(ACTIONS_PY)
    if package:
        (tmp_path / "actions").mkdir()
        (tmp_path / "actions" / "__init__.py").write_text("")
        (tmp_path / "actions" / "stock.py").write_text(ACTIONS_PY)
    return tmp_path


def test_config_actions_run_only_when_trusted(tmp_path, embedder):
    cfg = RailsConfig.from_path(_folder(tmp_path))
    untrusted = Rails(cfg, embedder=embedder)
    with pytest.raises(ConfigError, match="action 'check stock' is not registered") as info:
        untrusted.check("is the blue kettle in stock")
    assert "load_actions=True" in str(info.value) and "--trust-actions" in str(info.value)
    trusted = Rails(cfg, embedder=embedder, load_actions=True)
    assert trusted.generate("is the blue kettle in stock").text == "Stock: 27"  # async action awaited
    assert "nemoguardrails" not in sys.modules or hasattr(sys.modules["nemoguardrails"], "__file__")


def test_actions_package(tmp_path, embedder):
    rails = Rails(RailsConfig.from_path(_folder(tmp_path, package=True)), embedder=embedder, load_actions=True)
    assert rails.generate("do you have kettles").text == "Stock: 19"


def test_broken_actions_file_is_a_config_error(tmp_path, embedder):
    folder = _folder(tmp_path)
    (folder / "actions.py").write_text("import no_such_module_here\n")
    with pytest.raises(ConfigError, match="loading the config's actions failed: ModuleNotFoundError"):
        Rails(RailsConfig.from_path(folder), embedder=embedder, load_actions=True)


def test_action_decorator_and_module_path(tmp_path, monkeypatch):
    @action
    def plain():
        return 1

    @action(name="named one", is_system_action=True)
    def other():
        return 2

    assert plain.action_meta["name"] == "plain" and other.action_meta["name"] == "named one"
    (tmp_path / "my_guard_actions.py").write_text(ACTIONS_PY.replace("nemoguardrails.actions", "openseason.guard"))
    monkeypatch.syspath_prepend(str(tmp_path))
    assert list(load_actions_module("my_guard_actions")) == ["check stock"]
    with pytest.raises(ConfigError, match="cannot import actions module"):
        load_actions_module("no_such_actions_module")


KB = """# Returns

Items can be returned within 30 days of delivery.

## Refunds

Refunds reach your card within 5 working days after we receive the item.

# Shipping

Standard shipping takes 3 to 5 days; express shipping takes 1 day.
"""


def test_markdown_chunks_keep_their_heading_path():
    chunks = chunk_markdown(KB, "policy.md")
    assert [c.title for c in chunks] == ["Returns", "Returns > Refunds", "Shipping"]
    assert chunks[1].text.startswith("Refunds reach your card")


def test_knowledge_base_feeds_generation_and_the_fact_check(tmp_path, embedder):
    (tmp_path / "kb").mkdir()
    (tmp_path / "kb" / "policy.md").write_text(KB)
    (tmp_path / "config.yml").write_text("rails:\n  output:\n    flows: [self check facts]\n"
                                         "  dialog: {user_messages: {embeddings_only: true}}\n"
                                         "embeddings: {cache_dir: false}\n")
    (tmp_path / "main.co").write_text('define user hi\n  "hello"\n')
    llm = ScriptedClient([(lambda p: "Assistant:" in p and "Refunds reach your card" in p, "In 5 working days."),
                          (lambda p: "hypothesis" in p and "5 working days." in p and "Refunds reach" in p, "yes")])
    rails = Rails(RailsConfig.from_path(tmp_path), llm=llm, embedder=embedder)
    result = rails.generate("how long until my refund arrives")
    assert result.text == "In 5 working days." and not result.blocked
    fact = next(c for c in result.decision.checks if c.get("action") == "self_check_facts")
    assert fact["grounded"]
    llm.rules.insert(0, (lambda p: "Assistant:" in p, "Refunds take a year."))
    llm.rules.insert(0, (lambda p: "hypothesis" in p and "a year" in p, "no"))
    wrong = rails.generate("how long until my refund arrives")
    assert wrong.blocked and wrong.text == "I don't know the answer to that."
