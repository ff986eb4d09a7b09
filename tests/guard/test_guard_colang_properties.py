"""Property-based: any text given to the Colang parser (and any expression) parses or raises a
clear ConfigError with a location: never another exception, never a hang."""
from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from openseason.errors import OpenseasonError
from openseason.guard.colang import Loc, evaluate, parse, parse_expression

SETTINGS = settings(max_examples=400, deadline=2000, suppress_health_check=[HealthCheck.too_slow],
                    derandomize=True)

WORDS = ["define", "user", "bot", "flow", "subflow", "execute", "if", "else", "when", "stop", "return", "do",
         "and", "or", "not", "in", "==", "!=", "<", ">=", "(", ")", "$x", "$y.z", "$_a", "$a.__b", "=", '"hi"',
         "'s'", "1", "-2.5e3", "true", "none", "...", "#", "\\", '"', ",", "ask", "greeting", "\t", ":",
         # the rest of NeMo's Colang 1.0
         "while", "break", "continue", "abort", "create", "event", "priority", "meta", "label", "goto", "set",
         "extension", "parallel", '"""', "+", "-", "*", "/", "%", "[", "]", "{", "}", ".", "is", "len", "str",
         ".get", ".lower", "say", "$x[0]", "include"]
line = st.lists(st.sampled_from(WORDS), max_size=8).map(" ".join)
indented = st.tuples(st.sampled_from(["", "  ", "    ", "      ", "\t", " "]), line).map("".join)
documents = st.one_of(st.text(max_size=300), st.lists(indented, max_size=15).map("\n".join))


@SETTINGS
@given(source=documents)
def test_parser_gives_a_document_or_a_located_error(source):
    try:
        parse(source, "f.co")
    except OpenseasonError as exc:
        assert str(exc).startswith("f.co:"), str(exc)


@SETTINGS
@given(text=st.one_of(st.text(max_size=80), line), variables=st.dictionaries(
    st.sampled_from(["x", "y", "a"]), st.one_of(st.none(), st.integers(), st.text(max_size=5),
                                                st.dictionaries(st.sampled_from(["z", "b"]), st.integers()))))
def test_expressions_parse_and_evaluate_or_raise_clearly(text, variables):
    try:
        expr = parse_expression(text, Loc("f.co", 1, 1))
    except OpenseasonError:
        return
    try:
        evaluate(expr, variables)
    except OpenseasonError as exc:  # None + 1, len(3), ...: a clear error, never a Python one
        assert "cannot" in str(exc) or "failed" in str(exc) or "division" in str(exc) or "allowed" in str(exc), exc


def test_deep_nesting_is_a_located_error_not_a_recursion_error():
    import pytest

    from openseason.guard.colang import ColangSyntaxError

    deep = "define flow f\n  user a\n" + "".join("  " * (i + 1) + "if $x\n" for i in range(1500)) + "  " * 1502 + "stop\n"
    with pytest.raises(ColangSyntaxError, match="d.co:1:1: blocks nested too deeply"):
        parse(deep, "d.co")
    for text in ("(" * 5000 + "1" + ")" * 5000, "not " * 5000 + "1", "[" * 5000, "-" * 5000 + "1",
                 "{" * 5000):
        with pytest.raises(ColangSyntaxError, match="nested too deeply"):
            parse_expression(text, Loc("d.co", 3, 5))
