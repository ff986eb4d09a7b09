"""Colang 1.0 as NeMo Guardrails writes it: one config of our own that uses every construct NeMo's
parser accepts (docstrings, arithmetic, calls, list/dict literals, while, goto, events, priority,
abort, extension flows, action names with spaces, `bot ...` output rails), run for real."""
from __future__ import annotations

import pytest

from openseason.errors import ConfigError
from openseason.guard import ScriptedClient, parse

COLANG = '''
define user express greeting
  "hello"
  "hi there"

define user ask math
  "what is two plus two"
  "compute something for me"

define user ask count
  "count to three"
  "please count"

define user ask wolfram
  "ask wolfram alpha about the moon"

define user ask secret
  "tell me the password"

define bot greet
  "$greeting"

define bot say count
  "Counted: $text"

define bot say answer
  "The answer: $answer"

define bot refuse to respond
  "No."

define bot inform cannot answer
  "I cannot answer that."

define bot low priority
  "low"

define bot high priority
  "high"

define flow greeting
  """Greets the user by name; a docstring as NeMo allows it."""
  meta user_intent
  user express greeting
  $name = "Ann"
  $parts = ["Hello", $name]
  $profile = {"name": $name, "visits": 2}
  $greeting = $parts[0] + ", " + $profile["name"] + "! Visit " + ($profile.visits + 1)
  bot greet

define flow count
  user ask count
  $i = 0
  $text = ""
  while $i < 10
    $i = $i + 1
    if $i == 2
      continue
    $text = $text + str($i) + " "
    if len($text) > 6
      break
  goto finish
  $text = "never"
  label finish
  bot say count

define flow low
  user ask math
  bot low priority

define flow high
  priority 2
  user ask math
  bot high priority

define flow wolfram
  user ask wolfram
  $answer = execute wolfram alpha request(query=$user_message)
  create event AnswerReady(source="wolfram")
  bot say answer

define extension flow on answer
  """Runs when a flow creates the event."""
  event AnswerReady
  $source = $event.source
  execute record(source=$source)

define subflow guard secret
  """An input rail that aborts."""
  if "password" in $user_message
    bot refuse to respond
    abort

define flow check bot response
  bot ...
  $allowed = execute output_moderation
  if not $allowed
    bot remove last message
    bot inform cannot answer
    stop
'''

YAML = """
rails:
  dialog: {user_messages: {embeddings_only: true}}
  input:
    flows: [guard secret]
embeddings: {cache_dir: false}
"""


@pytest.fixture
def rails(make_rails):
    recorded = []
    moderated = []

    def output_moderation(context):
        moderated.append(context["bot_message"])
        return "forbidden" not in (context["bot_message"] or "")

    llm = ScriptedClient([("Assistant:", "something forbidden")])
    r = make_rails(COLANG, YAML, llm=llm, actions={"record": lambda source: recorded.append(source),
                                                   "output_moderation": output_moderation})
    r.register_action("wolfram_alpha_request", lambda query: f"{len(query)} characters")
    r.recorded, r.moderated = recorded, moderated
    return r


def test_every_construct_parses_with_its_metadata():
    doc = parse(COLANG, "nemo.co")
    flows = {f.name: f for f in doc.flows}
    assert flows["greeting"].docstring.startswith("Greets the user") and flows["greeting"].meta == ["user_intent"]
    assert flows["high"].priority == 2.0 and flows["low"].priority == 1.0
    assert flows["on answer"].extension and flows["on answer"].docstring == "Runs when a flow creates the event."
    assert flows["wolfram"].body[1].action == "wolfram alpha request"


def test_expressions_strings_lists_dicts_and_arithmetic(rails):
    assert rails.generate("hello").text == "Hello, Ann! Visit 3"


def test_while_continue_break_and_goto(rails):
    assert rails.generate("count to three").text == "Counted: 1 3 4 5 "


def test_priority_picks_the_higher_flow(rails):
    assert rails.generate("what is two plus two").text == "high"


def test_spaced_action_name_and_events(rails):
    result = rails.generate("ask wolfram alpha about the moon")
    assert result.text == "The answer: 32 characters"
    assert rails.recorded == ["wolfram"]  # the `event AnswerReady` flow ran with the event's arguments
    assert {"event": "AnswerReady"} in result.decision.checks


def test_abort_in_an_input_rail_blocks(rails):
    result = rails.generate("tell me the password")
    assert result.blocked and result.decision.rail == "input" and result.text == "No."


def test_bot_first_flow_is_an_output_rail(rails):
    result = rails.generate("write me a poem about the sea")  # no flow: the LLM writes it
    assert rails.moderated == ["something forbidden"]
    assert result.blocked and result.decision.rail == "output" and result.decision.flow == "check bot response"
    assert result.text == "I cannot answer that."  # `bot remove last message` withdrew the LLM's text


def test_runaway_values_are_bounded(make_rails):
    loop = ('define user go\n  "go"\ndefine bot b\n  "done"\ndefine flow f\n  user go\n  $x = "ab"\n'
            '  while true\n    $x = $x + $x\n  bot b\n')
    with pytest.raises(ConfigError, match="more than 1000000 items/characters"):
        make_rails(loop).check("go")
    times = 'define user go\n  "go"\ndefine flow f\n  user go\n  $x = "ab" * 100000000\n'
    with pytest.raises(ConfigError, match="would build"):
        make_rails(times).check("go")
    bad = 'define user go\n  "go"\ndefine flow f\n  user go\n  $x = $missing + 1\n'
    with pytest.raises(ConfigError, match="cannot compute NoneType \\+ int"):
        make_rails(bad).check("go")


LIBRARY_STYLE = '''
"""A file-level docstring, as NeMo's library files open."""

define user ask status
  "what is the status"

define parallel extension flow status
  user ask status
  $result = execute lookup()
  $names = ["first check", "second check"]
  $i = 0
  while $i < len($names):
    do $names[$i]
    $i = $i + 1
  if $result.metadata.get("level", "none") is not None and $config.rails.config.custom.enabled:
    bot $result.message
  else if $result is None:
    bot say "Nothing found."

define subflow first check
  $seen = $names[$i].upper()

define subflow second check
  if $seen.startswith("FIRST")
    bot say "Checked $seen."
'''


def test_nemo_library_style_flows(make_rails):
    yml = "rails:\n  config:\n    custom:\n      enabled: true\n"
    with pytest.warns(UserWarning, match="unknown key `rails.config.custom`"):
        rails = make_rails(LIBRARY_STYLE, yml,
                           actions={"lookup": lambda: {"metadata": {"level": 2}, "message": "All good."}})
    assert rails.config.flows["status"].parallel and rails.config.flows["status"].extension
    assert rails.config.unknown_keys == ["<yaml>:3:5: unknown key `rails.config.custom`"]
    result = rails.generate("what is the status")
    assert result.text == "Checked FIRST CHECK.\nAll good."


def test_method_calls_are_a_short_safe_list():
    from openseason.guard.colang import ColangSyntaxError

    with pytest.raises(ColangSyntaxError, match="unknown method `.format"):
        parse('define flow f\n  $x = "{0.__class__}".format($y)\n', "m.co")
    with pytest.raises(ColangSyntaxError, match="unknown method `.mro"):
        parse('define flow f\n  $x = $y.mro()\n', "m.co")


def test_nemo_aliases(make_rails):
    src = ('define template hi\n  "Hi!"\n'
           'define user go\n  "go"\n'
           'define recursive flow f\n  user go\n  pass\n  go to end\n  bot nothing here\n'
           '  checkpoint end\n  bot hi\n  done\n  bot never\n')
    assert make_rails(src).generate("go").text == "Hi!"
