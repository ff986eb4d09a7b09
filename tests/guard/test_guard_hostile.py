"""Hostile rails configs and inputs: no Python internals through `$x.field`, a bounded amount of
interpreter work per turn, caches bounded in bytes."""
from __future__ import annotations

import time

import pytest

from openseason.errors import ConfigError
from openseason.guard import ScriptedClient
from openseason.guard.cache import ByteLRU, text_key
from openseason.guard.colang import ColangSyntaxError, Var, evaluate, parse

SECRET = "hunter2"

LEAK = """
define user ask
  "what is the secret"

define bot leak
  "$x"

define flow leak
  user ask
  $r = execute tool()
  $x = $r.run.__globals__.SECRET
  bot leak
"""


class _Tool:
    def run(self):
        return None


def test_underscore_fields_are_refused_at_parse_time():
    with pytest.raises(ColangSyntaxError) as info:
        parse(LEAK, "leak.co")
    # line 11, the `.__globals__` field (col 15 is the `_` after `$x = $r.run.`)
    assert str(info.value).startswith("leak.co:11:15: ") and "starting with `_`" in str(info.value)
    with pytest.raises(ColangSyntaxError, match="leak.co:2:11"):
        parse("define flow f\n  if $a.b._c == 1\n    stop\n", "leak.co")


def test_underscore_fields_are_refused_at_evaluation():
    with pytest.raises(ConfigError, match="starting with `_`"):
        evaluate(Var("r", ("run", "__globals__", "SECRET")), {"r": _Tool()})
    assert evaluate(Var("r", ("a",)), {"r": {"a": 1}}) == 1


def test_dunder_leak_through_rails(make_rails):
    with pytest.raises(ConfigError, match="starting with `_`"):
        make_rails(LEAK, actions={"tool": lambda **_: _Tool()})


def _doubling(levels: int) -> str:
    """Subflow i does subflow i+1 twice: 2**levels steps if nothing bounds the total."""
    parts = ['define user express greeting\n  "hello"\n', "define bot hi\n  \"hi\"\n",
             "define flow greet\n  user express greeting\n  do s0\n  bot hi\n"]
    for i in range(levels):
        parts.append(f"define subflow s{i}\n  do s{i + 1}\n  do s{i + 1}\n")
    parts.append(f"define subflow s{levels}\n  $n = 1\n")
    return "\n".join(parts)


def test_exponential_subflows_hit_the_step_bound(make_rails):
    rails = make_rails(_doubling(25))                 # 2**25 steps unbounded: minutes, not a reply
    start = time.perf_counter()
    with pytest.raises(ConfigError, match=r"more than \d+ steps") as info:
        rails.generate("hello")
    assert time.perf_counter() - start < 5          # generous: the bound is ~10k steps
    assert info.value.where.startswith("<colang>:") and "(at 's" in str(info.value)
    small = make_rails(_doubling(5))                 # 64 steps: fine
    assert small.generate("hello").text == "hi"


def test_byte_lru_bound_and_order():
    cache = ByteLRU(10_000)
    for i in range(100):
        cache.put(i, "x" * 1000, 1000)
        assert cache.nbytes <= 10_000
    assert 0 < len(cache) < 10 and 99 in cache and 0 not in cache
    cache.get(len(cache) and max(k for k in range(100) if k in cache) - 1)
    cache.put("big", "y" * 20_000, 20_000)            # larger than the budget: not kept
    assert "big" not in cache and cache.nbytes <= 10_000
    long = "z" * 10_000
    assert text_key(long) == text_key("z" * 10_000) and isinstance(text_key(long), bytes)
    assert len(text_key(long)) == 32 and text_key("short") == "short"


SELF_CHECK_YML = """
rails:
  input:
    flows: [self check input]
prompts:
  - task: self_check_input
    content: |
      Check: "{{ user_input }}"
      Should the user message be blocked (Yes or No)?
"""


def test_self_check_cache_is_bounded_in_bytes(make_rails):
    llm = ScriptedClient([("Should the user message be blocked", "No")] * 200)
    yml = SELF_CHECK_YML.replace("rails:\n", "rails:\n  dialog: {user_messages: {embeddings_only: true}}\n", 1)
    rails = make_rails('define user a\n  "hello"\n', yml, llm=llm)
    for i in range(40):
        rails.check(f"{i} " + "a" * 100_000)          # 40 distinct 100 kB messages
    cache = rails._check_cache
    assert len(cache) == 40 and cache.nbytes < 40 * 1000   # keyed by digest, not by the 4 MB of text
    assert cache.nbytes <= cache.max_bytes
    rails.check("0 " + "a" * 100_000)
    assert len(llm.calls) == 40                      # ... and still a hit


def test_embedding_cache_is_bounded_in_bytes(embedder):
    saved = embedder._cache
    embedder._cache = ByteLRU(20_000)
    try:
        for i in range(30):
            embedder.embed_one(f"message number {i} " + "b" * 5000)
        assert embedder._cache.nbytes <= 20_000 and 0 < len(embedder._cache) < 30
    finally:
        embedder._cache = saved


@pytest.mark.parametrize("steps", [
    '$x = "a"\n  while true\n    $x = [$x, $x]',                      # shared halves: tiny in memory, 2**n to print
    '$s = "a" * 1000000\n  $l = [$s] * 1000000\n  $t = str($l)',
    '$s = "a" * 1000000\n  $t = $s.replace("", "bb")',
    '$l = ["aaaa"] * 200000\n  $t = "----------".join($l)',
])
def test_expressions_cannot_build_huge_values(make_rails, steps):
    rails = make_rails(f'define user go\n  "go"\ndefine flow f\n  user go\n  {steps}\n')
    start = time.perf_counter()
    with pytest.raises(ConfigError, match="1000000"):
        rails.check("go")
    assert time.perf_counter() - start < 5
