"""Colang 1.0 subset: every construct parses to the right tree, every error names file:line:col."""
from __future__ import annotations

import pytest

from openseason.guard import colang
from openseason.guard.colang import ColangSyntaxError, parse

FULL = '''
# A comment on its own line
define user express greeting
  "hello"   # a trailing comment
  "hi there"
  'single quoted'
  "she said \\"hi\\" # not a comment"

define bot express greeting
  "Hello $name!"
  "Hi $name."

define flow greeting
  user express greeting
  $name = "friend"
  $count = 3
  $ok = execute check_something(text=$user_message, limit=2, strict=true)
  execute log_event
  if $ok and $count > 2
    bot express greeting
  else if not $ok
    do polite refusal
  else
    stop
  when user ask about weather
    bot inform weather
  else when user express goodbye
    bot express goodbye
    return
  else
    bot ...

define subflow polite refusal
  bot refuse to respond
  stop

define flow
  user ...
  bot ...
'''


def test_every_construct_parses():
    doc = parse(FULL, "full.co")
    greeting = doc.users[0]
    assert greeting.name == "express greeting"
    assert greeting.examples == ["hello", "hi there", "single quoted", 'she said "hi" # not a comment']
    assert doc.bots[0].messages == ["Hello $name!", "Hi $name."]
    flow, sub, anon = doc.flows
    assert (flow.name, flow.subflow, sub.name, sub.subflow) == ("greeting", False, "polite refusal", True)
    assert anon.name.startswith("flow at full.co:")
    b = flow.body
    assert isinstance(b[0], colang.UserStep) and b[0].intent == "express greeting"
    assert isinstance(b[1], colang.Assign) and b[1].expr == colang.Lit("friend")
    assert b[2].expr == colang.Lit(3)
    ex = b[3]
    assert isinstance(ex, colang.Execute) and ex.action == "check_something" and ex.result == "ok"
    assert ex.args == {"text": colang.Var("user_message"), "limit": colang.Lit(2), "strict": colang.Lit(True)}
    assert b[4].action == "log_event" and b[4].args == {} and b[4].result is None
    cond = b[5]
    assert isinstance(cond, colang.If) and len(cond.branches) == 2
    assert cond.branches[0][0] == colang.Binary("and", colang.Var("ok"),
                                                colang.Binary(">", colang.Var("count"), colang.Lit(2)))
    assert cond.branches[1][0] == colang.Unary("not", colang.Var("ok"))
    assert isinstance(cond.branches[1][1][0], colang.Do) and cond.branches[1][1][0].subflow == "polite refusal"
    assert isinstance(cond.orelse[0], colang.Stop)
    when = b[6]
    assert isinstance(when, colang.When)
    assert [i for i, _ in when.branches] == ["ask about weather", "express goodbye"]
    assert isinstance(when.branches[1][1][1], colang.Return)
    assert when.orelse[0].name == "..."
    assert isinstance(anon.body[0], colang.UserStep) and anon.body[0].intent == "..."
    assert b[3].loc.line == 17 and b[3].loc.col == 3


@pytest.mark.parametrize("text,expected", [
    ("$a == 1", True), ("$a != 1", False), ("$a < 2 and $b == 'x'", True), ("not ($a > 1 or $b)", False),
    ("$b in 'xyz'", True), ("$b not in 'abc'", True), ("$missing", None), ("$d.k >= 0.5", True),
    ("$a <= none", False), ("True", True), ("false or 2", 2)])
def test_expressions(text, expected):
    expr = colang.parse_expression(text, colang.Loc("f", 1, 1))
    assert colang.evaluate(expr, {"a": 1, "b": "x", "d": {"k": 0.75}}) == expected


def _error(source: str) -> ColangSyntaxError:
    with pytest.raises(ColangSyntaxError) as info:
        parse(source, "bad.co")
    return info.value


@pytest.mark.parametrize("source,line,col,expected", [
    ("user hello\n", 1, 1, "expected `define user`, `define bot`, `define flow` or `define subflow`"),
    ("define thing x\n  \"a\"\n", 1, 8, "expected `user`, `bot`, `flow`, `subflow`, `extension flow` or `parallel flow` after"),
    ("define user\n  \"a\"\n", 1, 12, "expected an intent name after `define user`"),
    ("define user greet!\n  \"a\"\n", 1, 13, "made of words"),
    ("define user greet\n", 1, 18, "expected at least one indented, quoted utterance"),
    ("define user greet\n  hello\n", 2, 3, "expected a quoted utterance"),
    ("define bot hi\n  \"unterminated\n", 2, 3, "expected a quoted bot message"),
    ("define flow f\n", 1, 14, "expected an indented block after `define flow f`"),
    ("define subflow\n  stop\n", 1, 15, "expected a subflow name"),
    ("define flow f\n  dance wildly\n", 2, 3, "unknown statement 'dance'"),
    ("define flow f\n  user\n", 2, 8, "expected a user intent after `user`"),
    ("define flow f\n  bot\n", 2, 7, "expected a bot message name after `bot`"),
    ("define flow f\n  do\n", 2, 6, "expected a subflow name after `do`"),
    ("define flow f\n  execute\n", 2, 11, "expected an action name after `execute`"),
    ("define flow f\n  execute act(x=1\n", 2, 18, "expected `)` closing the arguments"),
    ("define flow f\n  execute act(1)\n", 2, 15, "expected a keyword argument"),
    ("define flow f\n  execute act(x=1, x=2)\n", 2, 20, "argument 'x' given twice"),
    ("define flow f\n  $x =\n", 2, 7, "expected a value after `=`"),
    ("define flow f\n  $x == 1\n", 2, 3, "expected an assignment"),
    ("define flow f\n  $x = 1 +\n", 2, 11, "expected a value, `$variable` or `(`; found the end of the line"),
    ("define flow f\n  $x = 1 ^ 2\n", 2, 10, "expected a value, `$variable`, operator or `(`"),
    ("define flow f\n  $x = eval(\"1\")\n", 2, 8, "unknown function 'eval'"),
    ("define flow f\n  $x = $a._b\n", 2, 11, "names starting with `_` are not accessible"),
    ("define flow f\n  $x = $a[0]._b\n", 2, 14, "names starting with `_` are not accessible"),
    ("define flow f\n  $x = $_secret\n", 2, 9, "names starting with `_` are not accessible"),
    ("define flow f\n  break\n", 2, 3, "`break` outside a `while` loop"),
    ("define flow f\n  goto nowhere\n", 2, 3, "no `label nowhere`"),
    ("define flow f\n  include other\n", 2, 3, "`include` of another rails configuration is not supported"),
    ("define flow f\n  bot x\n  event Started\n", 3, 3, "`event ...` is supported only as the first step"),
    ("define flow f\n  priority high\n", 2, 12, "expected a number after `priority`"),
    ("define flow f\n  \"\"\"never closed\n  stop\n", 2, 3, "docstring opened here is never closed"),
    ("define sticky flow f\n  stop\n", 1, 8, "found 'sticky'"),
    ("define topic x\n  stop\n", 1, 8, "`define topic` (NeMo Colang 1.0) is not supported"),
    ("define flow f\n  expect bot x\n", 2, 3, "`expect` (a test assertion in NeMo's Colang 1.0) is not supported"),
    ("define flow f\n  any\n    bot x\n", 2, 3, "`any` (a choice among branches"),
    ("define flow f\n  $x = ($a\n", 2, 11, "expected `)`"),
    ("define flow f\n  $x = $a $b\n", 2, 11, "expected an operator"),
    ("define flow f\n  if\n    stop\n", 2, 5, "expected a condition after `if`"),
    ("define flow f\n  if $x\n  stop\n", 2, 8, "expected an indented block after `if $x`"),
    ("define flow f\n  if $x\n    stop\n  else if\n    stop\n", 4, 10, "expected a condition after `else if`"),
    ("define flow f\n  else\n    stop\n", 2, 3, "`else` without a preceding `if` or `when`"),
    ("define flow f\n  when bot x\n    stop\n", 2, 8, "expected `when user <intent>`"),
    ("define flow f\n  when user a\n    stop\n  else if $x\n    stop\n", 4, 3, "found `else if`"),
    ("define flow f\n  stop\n    bot x\n", 3, 5, "`stop` takes no block"),
    ("define flow f\n    user a\n  bot b\n", 3, 3, "inconsistent indentation: expected 4 spaces"),
    ("  define user a\n    \"x\"\n", 1, 3, "unexpected indentation"),
])
def test_every_error_names_file_line_col(source, line, col, expected):
    err = _error(source)
    assert (err.loc.line, err.loc.col) == (line, col), str(err)
    assert expected in str(err)
    assert str(err).startswith(f"bad.co:{line}:{col}: ")


def test_parse_file_reports_its_path(tmp_path):
    path = tmp_path / "rails.co"
    path.write_text("define flow f\n  jump\n")
    with pytest.raises(ColangSyntaxError, match=rf"{path}:2:3: unknown statement"):
        colang.parse_file(path)
