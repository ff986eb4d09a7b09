"""config.yml + *.co folders: NeMo-style configs load unchanged; bad values are reported at file:line:col."""
from __future__ import annotations

import pytest

from openseason.errors import ConfigError
from openseason.guard import RailsConfig, example_config
from openseason.guard.colang import ColangSyntaxError

# Written in the exact syntax of NeMo Guardrails' Colang 1.0 examples (topical rails + self check).
NEMO_CONFIG_YML = """\
models:
  - type: main
    engine: openai
    model: gpt-3.5-turbo-instruct
  - type: embeddings
    engine: FastEmbed
    model: all-MiniLM-L6-v2

instructions:
  - type: general
    content: |
      Below is a conversation between a user and a bot called the ABC Bot.
      The bot is designed to answer employee questions about the ABC Company.

sample_conversation: |
  user "Hi there. Can you help me with some questions I have about the company?"
    express greeting and ask for assistance
  bot express greeting and confirm and offer assistance
    "Hi there! I'm here to help answer any questions you may have about the ABC Company."

rails:
  input:
    flows:
      - self check input
  output:
    flows:
      - self check output

prompts:
  - task: self_check_input
    content: |
      Your task is to check if the user message below complies with the company policy.

      User message: "{{ user_input }}"

      Question: Should the user message be blocked (Yes or No)?
      Answer:
  - task: self_check_output
    content: |
      Bot message: "{{ bot_response }}"

      Question: Should the message be blocked (Yes or No)?
      Answer:

lowest_temperature: 0.1
"""

NEMO_TOPICS_CO = """\
define user ask about politics
  "What do you think about the government?"
  "Which party should I vote for?"

define user ask about stock market
  "Which stock should I invest in?"
  "Would this stock 10x over the next year?"

define flow politics
  user ask about politics
  bot refuse to respond

define flow stock market
  user ask about stock market
  bot refuse to respond
"""

NEMO_GENERAL_CO = """\
define user express greeting
  "Hello"
  "Hi"
  "Wassup?"

define bot express greeting
  "Hey there!"

define bot ask how are you
  "How are you doing?"
  "How's it going?"
  "How are you feeling today?"

define bot inform cannot respond
  "I'm sorry, I can't respond to that."

define flow greeting
  user express greeting
  bot express greeting
  bot ask how are you

define subflow check blocked terms
  $is_blocked = execute check_blocked_terms

  if $is_blocked
    bot inform cannot respond
    stop
"""


def _write(tmp_path, yml=NEMO_CONFIG_YML, **files):
    (tmp_path / "config.yml").write_text(yml)
    for name, text in files.items():
        (tmp_path / name.replace("__", "/")).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name.replace("__", "/")).write_text(text)
    return tmp_path


def test_nemo_config_loads_unchanged(tmp_path):
    (tmp_path / "rails").mkdir()
    _write(tmp_path, **{"rails__topics.co": NEMO_TOPICS_CO, "rails__general.co": NEMO_GENERAL_CO})
    cfg = RailsConfig.from_path(tmp_path)
    assert cfg.input_flows == ["self check input"] and cfg.output_flows == ["self check output"]
    assert cfg.users["ask about politics"].examples == ["What do you think about the government?",
                                                       "Which party should I vote for?"]
    assert [f.name for f in cfg.dialog_flows] == ["greeting", "politics", "stock market"]
    assert "ABC Bot" in cfg.instructions and cfg.sample_conversation.startswith('user "Hi there.')
    assert "{{ user_input }}" in cfg.prompts["self_check_input"]
    assert cfg.embedding_model == "all-MiniLM-L6-v2" and cfg.main_model == "gpt-3.5-turbo-instruct"
    assert cfg.ignored_keys == ["lowest_temperature"]
    # the library's subflows are available, and the config's own definitions come on top
    assert cfg.flows["self check input"].subflow and cfg.bots["ask how are you"].messages[1] == "How's it going?"


def test_our_keys(tmp_path):
    cfg = RailsConfig.from_path(example_config("support"))
    assert len(cfg.users) >= 50 and cfg.threshold == 0.5 and cfg.fallback_intent == "unknown"
    assert cfg.input_flows == ["topical check"] and "ask weapons" in cfg.topical_blocked
    assert cfg.embeddings_only and not cfg.topical_refuse_unmatched and cfg.input_window == 10
    yml = """\
rails:
  dialog:
    user_messages:
      embeddings_only: false
      embeddings_only_similarity_threshold: 0.7
      embeddings_only_fallback_intent: off topic
      few_shot_k: 3
  config:
    jailbreak_detection:
      length_per_perplexity_threshold: 10
      prefix_suffix_perplexity_threshold: 500.5
      prefix_suffix_words: 8
      model: ckpt
  output:
    apply_to_predefined: true
embeddings:
  cache_dir: false
seed: 3
"""
    cfg = RailsConfig.from_path(_write(tmp_path, yml, **{"a.co": NEMO_TOPICS_CO}))
    j = cfg.jailbreak
    assert (cfg.embeddings_only, cfg.threshold, cfg.fallback_intent, cfg.few_shot_k) == (False, 0.7, "off topic", 3)
    assert (j.length_per_perplexity_threshold, j.prefix_suffix_perplexity_threshold, j.prefix_suffix_words) == \
        (10.0, 500.5, 8)
    assert j.model == str(tmp_path / "ckpt") and cfg.output_on_predefined and cfg.cache_dir is None and cfg.seed == 3


@pytest.mark.parametrize("yml,where,message", [
    ("rails:\n  input:\n    flows: [a\n", ":4:1", "invalid YAML"),
    ("x: &x [1, 2]\nrails:\n  input:\n    flows: *x\n", ":4:12", "YAML aliases (*name) are not accepted"),
    ("- just\n- a list\n", ":1:1", "must be a mapping"),
    ("rails:\n  dialog:\n    user_messages:\n      embeddings_only_similarity_threshold: high\n", ":4:45",
     "must be a number, not 'high'"),
    ("rails:\n  dialog:\n    user_messages:\n      embeddings_only_similarity_threshold: 1.5\n", ":4:45",
     "cosine similarity in [-1, 1]"),
    ("rails:\n  input:\n    flows: self check input\n", ":3:12", "must be a list"),
    ("rails:\n  input:\n    flows:\n      - 3\n", ":4:9", "must list flow names"),
    ("rails:\n  input:\n    window: 0\n", ":3:13", "must be at least 1"),
    ("models:\n  - engine: openai\n", ":2:5", "needs a `type`"),
    ("prompts:\n  - task: x\n", ":2:5", "needs a string `task` and a string `content`"),
    ("rails:\n  output:\n    apply_to_predefined: maybe\n", ":3:26", "must be true or false"),
])
def test_yaml_errors_have_line_and_col(tmp_path, yml, where, message):
    _write(tmp_path, yml, **{"a.co": NEMO_TOPICS_CO})
    with pytest.raises(ConfigError) as info:
        RailsConfig.from_path(tmp_path)
    assert str(info.value).startswith(f"{tmp_path / 'config.yml'}{where}: "), str(info.value)
    assert message in str(info.value)


@pytest.mark.parametrize("yml,co,message", [
    ("rails:\n  input:\n    flows: [no such rail]\n", NEMO_TOPICS_CO, "names 'no such rail', which no .co file defines"),
    ("", "define flow f\n  user a\n  do missing\n", "`do missing`: no such subflow"),
    ("", "define subflow s\n  user a\n  bot b\ndefine flow f\n  user a\n  do s\n", "waits for a user message"),
    ("rails:\n  input:\n    flows: [r]\n", "define flow r\n  user a\n  bot b\n", "a rail must run to the end"),
    ("rails:\n  config:\n    topical:\n      blocked_intents: [nope]\n", NEMO_TOPICS_CO, "names 'nope'"),
    ("", "define flow f\n  user a\n  bot b\ndefine flow f\n  user c\n", "flow 'f' is defined twice"),
])
def test_semantic_errors(tmp_path, yml, co, message):
    _write(tmp_path, yml, **{"a.co": co})
    with pytest.raises(ConfigError) as info:
        RailsConfig.from_path(tmp_path)
    assert message in str(info.value)


def test_colang_errors_surface_with_location(tmp_path):
    _write(tmp_path, "", **{"a.co": NEMO_TOPICS_CO, "b.co": "define flow x\n  user a\n  bott b\n"})
    with pytest.raises(ColangSyntaxError, match=r"b\.co:3:3: unknown statement 'bott'"):
        RailsConfig.from_path(tmp_path)


def test_missing_folder_and_empty_folder(tmp_path):
    with pytest.raises(ConfigError, match="rails config folder not found"):
        RailsConfig.from_path(tmp_path / "nope")
    with pytest.raises(ConfigError, match="no config.yml and no .co files"):
        RailsConfig.from_path(tmp_path)


def test_undefined_intents_are_warned_not_fatal(tmp_path):
    cfg = RailsConfig.from_path(_write(tmp_path, "", **{"a.co": "define flow f\n  user ask llm only\n  bot x\n"}))
    assert any("'ask llm only' has no `define user` examples" in w for w in cfg.warnings)


def test_unknown_keys_anywhere_warn_with_a_did_you_mean(tmp_path):
    import pytest

    from openseason.errors import ConfigError
    from openseason.guard.rails_config import UnknownKeyWarning

    (tmp_path / "config.yml").write_text(
        "rails:\n  inputs:\n    flows: []\n  dialog:\n    user_messages:\n"
        "      embeddings_only_similarity_treshold: 0.4\n  config:\n    jailbreak_detection:\n"
        "      lp_threshold: 50.5\n      ps_ppl_threshold: 900\n      server_endpoint: http://localhost:1337\n"
        "lowest_temperature: 0.1\n")
    with pytest.warns(UnknownKeyWarning) as caught:
        cfg = RailsConfig.from_path(tmp_path)
    path = tmp_path / "config.yml"
    assert [str(w.message) for w in caught] == cfg.unknown_keys == [
        f"{path}:2:3: unknown key `rails.inputs`; did you mean `input`?",
        f"{path}:6:7: unknown key `rails.dialog.user_messages.embeddings_only_similarity_treshold`; "
        "did you mean `embeddings_only_similarity_threshold`?"]
    # NeMo's jailbreak-server names map to ours; its other keys are accepted and listed as unused
    assert cfg.jailbreak.length_per_perplexity_threshold == 50.5
    assert cfg.jailbreak.prefix_suffix_perplexity_threshold == 900.0
    assert cfg.ignored_keys == ["lowest_temperature", "rails.config.jailbreak_detection.server_endpoint"]
    with pytest.raises(ConfigError, match=r"config.yml:2:3: unknown key `rails.inputs`; did you mean `input`\?"):
        RailsConfig.from_path(tmp_path, strict=True)
