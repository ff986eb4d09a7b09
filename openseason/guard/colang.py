"""A parser for the Colang 1.0 subset our rails understand.

    define user <intent>          example utterances, one quoted string per line
    define bot <name>             one or more quoted messages (chosen at random; `$var` substituted)
    define flow [<name>]          steps, run when the flow's first `user` step matches
    define subflow <name>         steps, run with `do <name>` or listed as an input/output rail

Flow steps: `user <intent>` / `user ...`, `bot <name>` / `bot ...`, `execute action(k=expr)`,
`$var = execute action(...)`, `$var = expr`, `if expr` / `else if expr` / `else`,
`when user <intent>` / `else when user <intent>` / `else`, `stop`, `return`, `do <subflow>`,
and `#` comments. Blocks nest by indentation, as in NeMo Guardrails' Colang 1.0, so its configs of
this subset load unchanged. Expressions are parsed here into a small tree and evaluated by
`evaluate` without `eval`: literals, `$var` (with `.field`, never a `_private` or `__dunder__` one),
`not`/`and`/`or`, comparisons, `in`, and parentheses. Every error names file:line:col and what was expected there.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from ..errors import ConfigError, where


@dataclass
class Loc:
    file: str
    line: int
    col: int

    def __str__(self) -> str:
        return where(self.file, self.line, self.col)


# -- expressions --------------------------------------------------------------------------------------
@dataclass
class Lit:
    value: Any


@dataclass
class Var:
    name: str
    fields: tuple[str, ...] = ()


@dataclass
class Unary:
    op: str
    operand: Any


@dataclass
class Binary:
    op: str
    left: Any
    right: Any


Expr = Any   # Lit, Var, Unary, Binary, Call, ListLit, DictLit, Index, Attr


# -- statements ---------------------------------------------------------------------------------------
@dataclass
class UserStep:
    intent: str            # "..." means any user message
    loc: Loc


@dataclass
class BotStep:
    name: str              # "..." means a reply written by the LLM; "$var" says the variable's value
    loc: Loc
    text: Optional[str] = None   # `bot say "Sorry."`: an inline message (name may be empty)
    expr: Any = None             # `bot $result.message`: says the expression's value


@dataclass
class Execute:
    action: str
    args: dict[str, Expr]
    result: Optional[str]  # variable receiving the return value
    loc: Loc


@dataclass
class Assign:
    var: str
    expr: Expr
    loc: Loc


@dataclass
class If:
    branches: list[tuple[Expr, list]]   # (condition, body) for `if` and each `else if`
    orelse: list
    loc: Loc


@dataclass
class When:
    branches: list[tuple[str, list]]    # (intent, body) for `when user` and each `else when user`
    orelse: Optional[list]              # None: no `else`, a non-matching message ends the flow
    loc: Loc


@dataclass
class Stop:
    loc: Loc


@dataclass
class Return:
    loc: Loc
    value: Any = None      # `return $x`: the value lands in `$return_value`


@dataclass
class While:
    cond: Any
    body: list
    loc: Loc


@dataclass
class Break:
    loc: Loc


@dataclass
class Continue:
    loc: Loc


@dataclass
class Abort:
    loc: Loc               # ends the flow like `stop` (a rail that aborts blocks)


@dataclass
class Goto:
    label: str
    loc: Loc


@dataclass
class Label:
    name: str
    loc: Loc


@dataclass
class CreateEvent:
    name: str
    args: dict
    loc: Loc


@dataclass
class EventStep:
    name: str              # the first step of a flow: the flow runs when `create event <name>` does
    args: dict
    loc: Loc


@dataclass
class Do:
    subflow: str           # for `do $names[$i]`, the expression's text (the name is computed when it runs)
    loc: Loc
    expr: Any = None


@dataclass
class UserDef:
    name: str
    examples: list[str]
    loc: Loc


@dataclass
class BotDef:
    name: str
    messages: list[str]
    loc: Loc


@dataclass
class FlowDef:
    name: str
    body: list
    subflow: bool
    loc: Loc
    priority: float = 1.0          # `priority 0.5` in the body: among flows matching a turn, the highest wins
    extension: bool = False        # `define extension flow`
    parallel: bool = False         # `define parallel flow` (NeMo runs it alongside others; here: in order)
    docstring: Optional[str] = None
    meta: list = field(default_factory=list)


@dataclass
class Document:
    users: list[UserDef] = field(default_factory=list)
    bots: list[BotDef] = field(default_factory=list)
    flows: list[FlowDef] = field(default_factory=list)


# -- lexing helpers -----------------------------------------------------------------------------------
_NAME_WORD = re.compile(r"[A-Za-z_][\w\-']*")
_STRING = re.compile(r'"((?:[^"\\]|\\.)*)"|\'((?:[^\'\\]|\\.)*)\'')
_ESCAPES = {"n": "\n", "t": "\t", '"': '"', "'": "'", "\\": "\\"}


def _unescape(text: str) -> str:
    return re.sub(r"\\(.)", lambda m: _ESCAPES.get(m.group(1), "\\" + m.group(1)), text)


def _strip_comment(text: str) -> str:
    """Drop a `#` comment that is not inside a quoted string."""
    quote = None
    i = 0
    while i < len(text):
        ch = text[i]
        if quote:
            if ch == "\\":
                i += 1
            elif ch == quote:
                quote = None
        elif ch in "\"'" and (i == 0 or not (text[i - 1].isalnum())):
            quote = ch  # an apostrophe inside a word ("user's") does not open a string
        elif ch == "#":
            return text[:i].rstrip()
        i += 1
    return text.rstrip()


class ColangSyntaxError(ConfigError):
    """A Colang file that does not parse; the message names file:line:col and what was expected."""

    def __init__(self, message: str, loc: Loc, hint: Optional[str] = None):
        self.loc = loc
        super().__init__(message, where=str(loc), hint=hint)


@dataclass
class _Line:
    indent: int
    text: str
    loc: Loc               # column of the first non-blank character
    children: list = field(default_factory=list)


def _lines(source: str, file: str) -> list[_Line]:
    """Logical lines without comments. A triple-quoted docstring (one or several lines) becomes one
    `_Line` whose text starts with three double quotes, so the statement parser keeps it as the
    flow's doc."""
    out = []
    raw_lines = source.splitlines()
    i = 0
    while i < len(raw_lines):
        lineno, raw = i + 1, raw_lines[i].expandtabs(4)
        i += 1
        stripped = raw.lstrip(" ")
        if stripped.startswith(('"""', "'''")):
            quote, indent = stripped[:3], len(raw) - len(stripped)
            body = stripped[3:]
            while quote not in body:
                if i >= len(raw_lines):
                    raise ColangSyntaxError(f"docstring opened here is never closed with {quote}",
                                            Loc(file, lineno, indent + 1))
                body += "\n" + raw_lines[i]
                i += 1
            doc, _, after = body.partition(quote)
            if _strip_comment(after).strip():
                raise ColangSyntaxError("expected the end of the line after the closing docstring quotes",
                                        Loc(file, i, 1))
            out.append(_Line(indent, '"""' + doc.strip(), Loc(file, lineno, indent + 1)))
            continue
        text = _strip_comment(raw)
        if not text.strip():
            continue
        indent = len(text) - len(text.lstrip(" "))
        out.append(_Line(indent, text.strip(), Loc(file, lineno, indent + 1)))
    return out


def _tree(lines: list[_Line]) -> list[_Line]:
    """Nest lines by indentation; a deeper line belongs to the closest shallower line above it."""
    roots: list[_Line] = []
    stack: list[_Line] = []
    for line in lines:
        while stack and stack[-1].indent >= line.indent:
            stack.pop()
        if stack:
            siblings = stack[-1].children
            if siblings and siblings[0].indent != line.indent:
                raise ColangSyntaxError(
                    f"inconsistent indentation: expected {siblings[0].indent} spaces like the line above, "
                    f"got {line.indent}", line.loc)
            siblings.append(line)
        else:
            roots.append(line)
        stack.append(line)
    return roots


# -- expression parser ----------------------------------------------------------------------------------
_TOKEN = re.compile(r"""\s*(?:
    (?P<string>"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*')
  | (?P<number>\d+(?:\.\d+)?(?:[eE][-+]?\d+)?)
  | (?P<var>\$[A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*)
  | (?P<op>==|!=|<=|>=|<|>|\(|\)|\[|\]|\{|\}|,|:|=|\+|-|\*|/|%|\.)
  | (?P<word>[A-Za-z_]\w*)
  )""", re.VERBOSE)

_KEYWORD_LITERALS = {"true": True, "True": True, "false": False, "False": False, "none": None,
                     "None": None, "null": None}

# The functions an expression may call (Colang 1.0 documents `len(...)`; the rest are as harmless).
FUNCTIONS: dict[str, Any] = {"len": len, "str": str, "int": int, "float": float, "bool": bool, "abs": abs,
                             "min": min, "max": max, "round": round, "lower": str.lower, "upper": str.upper}
# Values an expression may build: `$x = $x + $x` in a `while` loop must not eat the memory.
MAX_VALUE_LEN = 1_000_000
MAX_INT_BITS = 4096


@dataclass
class Call:
    func: str
    args: list


@dataclass
class ListLit:
    items: list


@dataclass
class DictLit:
    items: list            # (key expr, value expr) pairs


@dataclass
class Index:
    obj: Any
    key: Any


@dataclass
class Attr:
    obj: Any
    name: str


@dataclass
class Method:
    obj: Any
    name: str
    args: list


# Methods an expression may call, per built-in type (NeMo's own flows call `$result.metadata.get(...)`);
# no `format`, which reaches attributes through "{0.__class__}".
METHODS: dict[type, set[str]] = {
    dict: {"get", "keys", "values", "items"},
    str: {"lower", "upper", "strip", "lstrip", "rstrip", "startswith", "endswith", "split", "join", "replace",
          "count", "find"},
    list: {"count", "index"},
}


class _ExprParser:
    def __init__(self, text: str, loc: Loc):
        self.text, self.loc = text, loc
        self.tokens: list[tuple[str, str, int]] = []
        self.i = 0
        pos = 0
        while pos < len(text):
            if not text[pos:].strip():
                break
            m = _TOKEN.match(text, pos)
            if not m or m.end() == pos:
                start = pos + (len(text[pos:]) - len(text[pos:].lstrip()))
                raise ColangSyntaxError(f"expected a value, `$variable`, operator or `(`; found {text[start]!r}",
                                        self.at(start))
            kind = m.lastgroup
            start = m.start(kind)
            self.tokens.append((kind, m.group(kind), start))
            pos = m.end()
        self.i = 0

    def at(self, col: int) -> Loc:
        return Loc(self.loc.file, self.loc.line, self.loc.col + col)

    def fail(self, expected: str, col: Optional[int] = None):
        if col is None:
            col = self.tokens[self.i][2] if self.i < len(self.tokens) else len(self.text)
        found = f"found {self.tokens[self.i][1]!r}" if self.i < len(self.tokens) else "found the end of the line"
        raise ColangSyntaxError(f"{expected}; {found}", self.at(col))

    def peek(self, value: Optional[str] = None):
        if self.i >= len(self.tokens):
            return None
        tok = self.tokens[self.i]
        if value is not None and (tok[1] != value or tok[0] == "string"):
            return None
        return tok

    def take(self):
        tok = self.tokens[self.i]
        self.i += 1
        return tok

    def expect(self, value: str):
        if not self.peek(value):
            self.fail(f"expected `{value}`")
        return self.take()

    def parse(self) -> Expr:
        if not self.tokens:
            self.fail("expected an expression")
        expr = self.or_()
        if self.i < len(self.tokens):
            self.fail("expected an operator (and, or, ==, !=, <, >, in, +, -, *, /) or the end of the expression")
        return expr

    def or_(self):
        left = self.and_()
        while self.peek("or"):
            self.take()
            left = Binary("or", left, self.and_())
        return left

    def and_(self):
        left = self.not_()
        while self.peek("and"):
            self.take()
            left = Binary("and", left, self.not_())
        return left

    def not_(self):
        if self.peek("not"):
            self.take()
            return Unary("not", self.not_())
        return self.compare()

    def compare(self):
        left = self.additive()
        tok = self.peek()
        if tok and tok[0] != "string" and tok[1] in ("==", "!=", "<", "<=", ">", ">=", "in"):
            self.take()
            return Binary(tok[1], left, self.additive())
        if tok and tok[1] == "not" and self.i + 1 < len(self.tokens) and self.tokens[self.i + 1][1] == "in":
            self.i += 2
            return Binary("not in", left, self.additive())
        if tok and tok[0] == "word" and tok[1] == "is":
            self.take()
            if self.peek("not"):
                self.take()
                return Binary("is not", left, self.additive())
            return Binary("is", left, self.additive())
        return left

    def additive(self):
        left = self.multiplicative()
        while self.peek("+") or self.peek("-"):
            op = self.take()[1]
            left = Binary(op, left, self.multiplicative())
        return left

    def multiplicative(self):
        left = self.unary()
        while self.peek("*") or self.peek("/") or self.peek("%"):
            op = self.take()[1]
            left = Binary(op, left, self.unary())
        return left

    def unary(self):
        if self.peek("-"):
            self.take()
            operand = self.unary()
            if isinstance(operand, Lit) and isinstance(operand.value, (int, float)) \
                    and not isinstance(operand.value, bool):
                return Lit(-operand.value)
            return Unary("-", operand)
        return self.postfix()

    def postfix(self):
        expr = self.atom()
        while True:
            if self.peek("["):
                self.take()
                key = self.or_()
                self.expect("]")
                expr = Index(expr, key)
            elif self.peek("."):
                self.take()
                if self.i >= len(self.tokens) or self.tokens[self.i][0] != "word":
                    self.fail("expected a field name after `.`")
                _kind, name, col = self.take()
                if name.startswith("_"):
                    raise ColangSyntaxError(f"field `.{name}`: names starting with `_` are not accessible",
                                            self.at(col), hint="use a plain field name such as `$result.text`")
                expr = self._method(expr, name, col) if self.peek("(") else Attr(expr, name)
            else:
                return expr

    def _method(self, obj, name: str, col: int):
        allowed = set().union(*METHODS.values())
        if name not in allowed:
            raise ColangSyntaxError(f"unknown method `.{name}(...)`", self.at(col),
                                    hint=f"expressions may call: {', '.join(sorted(allowed))}")
        self.expect("(")
        return Method(obj, name, self._items(")", self.or_))

    def _items(self, close: str, item):
        items = []
        while not self.peek(close):
            items.append(item())
            if not self.peek(","):
                break
            self.take()
        self.expect(close)
        return items

    def atom(self):
        if self.i >= len(self.tokens):
            self.fail("expected a value, `$variable` or `(`")
        kind, value, _col = self.take()
        if kind == "string":
            return Lit(_unescape(value[1:-1]))
        if kind == "number":
            return Lit(float(value) if any(c in value for c in ".eE") else int(value))
        if kind == "var":
            name, *fields = value[1:].split(".")
            col = _col + 1 + len(name)
            for f in [name] + fields:
                if f.startswith("_"):  # $x.__class__ ... would walk from any object to Python internals
                    at = _col + 1 if f == name else col + 1
                    raise ColangSyntaxError(f"{'variable' if f == name else 'field'} `{f}`: names starting "
                                            "with `_` are not accessible", self.at(at),
                                            hint="use a plain name such as `$result.text`")
                if f != name:
                    col += 1 + len(f)
            if fields and self.peek("("):  # `$result.metadata.get(...)`: a method call
                return self._method(Var(name, tuple(fields[:-1])), fields[-1], col - len(fields[-1]))
            return Var(name, tuple(fields))
        if kind == "word" and value in _KEYWORD_LITERALS:
            return Lit(_KEYWORD_LITERALS[value])
        if kind == "word" and self.peek("("):
            if value not in FUNCTIONS:
                raise ColangSyntaxError(f"unknown function {value!r}", self.at(_col),
                                        hint=f"expressions may call: {', '.join(sorted(FUNCTIONS))}")
            self.take()
            return Call(value, self._items(")", self.or_))
        if kind == "op" and value == "(":
            expr = self.or_()
            self.expect(")")
            return expr
        if kind == "op" and value == "[":
            return ListLit(self._items("]", self.or_))
        if kind == "op" and value == "{":
            def pair():
                key = self.or_()
                self.expect(":")
                return key, self.or_()
            return DictLit(self._items("}", pair))
        self.i -= 1
        self.fail("expected a value (\"text\", number, true/false/none, [list], {dict}), `$variable`, "
                  "a function call like len(...) or `(`")


MAX_EXPRESSION_DEPTH = 50


def parse_expression(text: str, loc: Loc) -> Expr:
    bare = _STRING.sub("", text)
    depth = max(sum(bare.count(c) for c in "([{"), len(re.findall(r"\bnot\b", bare)), bare.count("-"))
    if depth > MAX_EXPRESSION_DEPTH:  # evaluate() recurses as deep as the tree; refuse before that
        raise ColangSyntaxError(f"expression nested too deeply (more than {MAX_EXPRESSION_DEPTH} brackets, "
                                "`not` or `-`)", loc, hint="split it into several `$var = ...` steps")
    return _ExprParser(text, loc).parse()


class ColangRuntimeError(ConfigError):
    """An expression that cannot be evaluated (a type mismatch in arithmetic, a value too large)."""


def _field(value: Any, name: str) -> Any:
    if name.startswith("_"):  # the parser refuses these too; an AST built elsewhere must not either
        raise ConfigError(f"field `{name}`: names starting with `_` are not accessible")
    return value.get(name) if isinstance(value, dict) else getattr(value, name, None)


def _weight(value: Any, limit: int = MAX_VALUE_LEN) -> int:
    """Characters plus items of a value, counting a shared part each time it appears (what str() or
    == would walk), stopping early past `limit`: `[$x, $x]` nested 40 deep is small in memory and
    2**40 to print."""
    memo: dict[int, int] = {}

    def walk(v, depth: int) -> int:
        if isinstance(v, str):
            return len(v)
        if not isinstance(v, (list, tuple, dict)):
            return 1
        if depth > 100:
            return limit + 1  # deeper than str() or == should recurse
        key = id(v)
        if key in memo:
            return memo[key]
        total = 1
        for item in (v.items() if isinstance(v, dict) else v):
            total += walk(item, depth + 1)
            if total > limit:
                break
        memo[key] = total
        return total

    return walk(value, 0)


def _bounded(value: Any) -> Any:
    if isinstance(value, (str, list, dict, tuple)) and (len(value) > MAX_VALUE_LEN or (
            not isinstance(value, str) and _weight(value) > MAX_VALUE_LEN)):
        raise ColangRuntimeError(f"an expression built a value of more than {MAX_VALUE_LEN} items/characters "
                                 "(the allowed most)")
    if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > MAX_INT_BITS:
        raise ColangRuntimeError(f"an expression built a number larger than 2**{MAX_INT_BITS}")
    return value


def _arith(op: str, left: Any, right: Any) -> Any:
    if op == "*":  # refuse "x" * 10**9 before building it
        for seq, n in ((left, right), (right, left)):
            if isinstance(seq, (str, list)) and isinstance(n, int) and not isinstance(n, bool) \
                    and _weight(seq) * max(n, 0) > MAX_VALUE_LEN:
                raise ColangRuntimeError(f"an expression would build {_weight(seq) * n} items/characters, more "
                                         f"than the {MAX_VALUE_LEN} allowed")
    if op == "+" and isinstance(left, str) and not isinstance(right, str) and right is not None \
            and not isinstance(right, (list, dict)):
        right = str(right)  # "n = " + 3, as Colang 1.0 configs write it
    try:
        if op == "+":
            return _bounded(left + right)
        if op == "-":
            return _bounded(left - right)
        if op == "*":
            return _bounded(left * right)
        if op == "/":
            return left / right
        return left % right
    except ZeroDivisionError:
        raise ColangRuntimeError(f"division by zero ({left!r} {op} {right!r})") from None
    except TypeError:
        raise ColangRuntimeError(f"cannot compute {type(left).__name__} {op} {type(right).__name__} "
                                 f"({left!r:.40} {op} {right!r:.40})",
                                 hint="a variable that was never set is none") from None


def evaluate(expr: Expr, variables: dict[str, Any]) -> Any:
    """Evaluate a parsed expression; unknown variables are None (as in Colang 1.0)."""
    if isinstance(expr, Lit):
        return expr.value
    if isinstance(expr, Var):
        if expr.name.startswith("_"):
            raise ConfigError(f"`${expr.name}`: names starting with `_` are not accessible")
        value = variables.get(expr.name)
        for name in expr.fields:
            if name.startswith("_"):
                raise ConfigError(f"`${expr.name}.{'.'.join(expr.fields)}`: field names starting with `_` "
                                  "are not accessible")
            value = _field(value, name)
        return value
    if isinstance(expr, Attr):
        return _field(evaluate(expr.obj, variables), expr.name)
    if isinstance(expr, Method):
        obj = evaluate(expr.obj, variables)
        if type(obj) not in METHODS or expr.name not in METHODS[type(obj)]:
            raise ColangRuntimeError(f"`.{expr.name}(...)` cannot be called on {type(obj).__name__}",
                                     hint="a variable that was never set is none")
        args = [evaluate(a, variables) for a in expr.args]
        if expr.name == "replace" and len(args) >= 2 and all(isinstance(a, str) for a in args[:2]):
            grow = (obj.count(args[0]) if args[0] else len(obj) + 1) * max(0, len(args[1]) - len(args[0]))
            if len(obj) + grow > MAX_VALUE_LEN:
                raise ColangRuntimeError(f".replace(...) would build more than {MAX_VALUE_LEN} characters")
        if expr.name == "join" and args and isinstance(args[0], (list, tuple)) \
                and _weight(args[0]) + len(obj) * len(args[0]) > MAX_VALUE_LEN:
            raise ColangRuntimeError(f".join(...) would build more than {MAX_VALUE_LEN} characters")
        try:
            value = getattr(obj, expr.name)(*args)
        except (TypeError, ValueError) as exc:
            raise ColangRuntimeError(f".{expr.name}(...) failed: {exc}") from None
        if expr.name in ("keys", "values", "items"):
            value = list(value)
        return _bounded(value)
    if isinstance(expr, Index):
        obj, key = evaluate(expr.obj, variables), evaluate(expr.key, variables)
        if not isinstance(obj, (list, tuple, str, dict)):
            return None
        if isinstance(obj, dict):
            return obj.get(key) if not (isinstance(key, str) and key.startswith("_")) else None
        try:
            return obj[key]
        except (IndexError, TypeError):
            return None
    if isinstance(expr, ListLit):
        return _bounded([evaluate(e, variables) for e in expr.items])
    if isinstance(expr, DictLit):
        out = {}
        for k, v in expr.items:
            key = evaluate(k, variables)
            try:
                out[key] = evaluate(v, variables)
            except TypeError:
                raise ColangRuntimeError(f"a dict key must be a string or number, not {type(key).__name__}") from None
        return _bounded(out)
    if isinstance(expr, Call):
        args = [evaluate(a, variables) for a in expr.args]
        try:
            return _bounded(FUNCTIONS[expr.func](*args))
        except (TypeError, ValueError) as exc:
            raise ColangRuntimeError(f"{expr.func}(...) failed: {exc}") from None
    if isinstance(expr, Unary):
        if expr.op == "-":
            value = evaluate(expr.operand, variables)
            if not isinstance(value, (int, float)) or isinstance(value, bool):
                raise ColangRuntimeError(f"cannot negate {type(value).__name__}")
            return -value
        return not evaluate(expr.operand, variables)
    if expr.op == "and":
        return evaluate(expr.left, variables) and evaluate(expr.right, variables)
    if expr.op == "or":
        return evaluate(expr.left, variables) or evaluate(expr.right, variables)
    left, right = evaluate(expr.left, variables), evaluate(expr.right, variables)
    if expr.op in ("+", "-", "*", "/", "%"):
        return _arith(expr.op, left, right)
    try:
        return {"==": lambda: left == right, "!=": lambda: left != right, "<": lambda: left < right,
                "<=": lambda: left <= right, ">": lambda: left > right, ">=": lambda: left >= right,
                "in": lambda: left in right, "not in": lambda: left not in right,
                "is": lambda: left is right, "is not": lambda: left is not right}[expr.op]()
    except TypeError:
        return False  # comparing None with a number is "false", not a crash mid-conversation


# -- statements -----------------------------------------------------------------------------------------
_STATEMENTS = ("user <intent>, bot <message>, execute <action>, $var = ..., set $var = ..., if, else if, "
               "else, when user <intent>, else when user <intent>, while, break, continue, stop, abort, "
               "return, do <subflow>, create event <name>, event <name> (first step), priority <number>, "
               "meta, label <name>, goto <label>")
# Colang 1.0 keywords we refuse at load, each with the reason (better a clear error than a guess).
_REFUSED = {
    "include": "`include` of another rails configuration is not supported; copy its files into this folder",
    "import": "`import` of another rails configuration is not supported; copy its files into this folder",
    "expect": "`expect` (a test assertion in NeMo's Colang 1.0) is not supported",
    "check": "`check` (a test assertion in NeMo's Colang 1.0) is not supported",
    "run": "`run` is not supported; use `execute <action>`",
    "any": "`any` (a choice among branches in NeMo's Colang 1.0) is not supported; use `when user ...`",
    "infer": "`infer` is not supported",
    "context": "`context` is not supported; set variables with `$name = ...`",
}
# `define <kind>` forms of NeMo's parser that are not flows, messages or intents
_REFUSED_DEFINES = ("interruption", "repair", "test", "sample", "response", "snippet", "action", "topic")


def _name(text: str, loc: Loc, what: str) -> str:
    name = " ".join(text.split())
    if not name:
        raise ColangSyntaxError(f"expected {what}", loc)
    if name != "..." and not all(_NAME_WORD.fullmatch(w) for w in name.split(" ")):
        bad = next(w for w in name.split(" ") if not _NAME_WORD.fullmatch(w))
        raise ColangSyntaxError(f"expected {what} made of words (letters, digits, _ or -); found {bad!r}",
                                Loc(loc.file, loc.line, loc.col + text.find(bad)))
    return name


def _sub(loc: Loc, offset: int) -> Loc:
    return Loc(loc.file, loc.line, loc.col + offset)


# `execute check_input(...)`, `execute wolfram alpha request` (an action name may hold spaces)
_EXEC = re.compile(r"execute\s+(?P<name>[A-Za-z_][\w.]*(?:[ \t]+[A-Za-z_][\w.]*)*)\s*(?P<args>\(.*)?$")
_EVENT = re.compile(r"(?P<name>[A-Za-z_]\w*)\s*(?P<args>\(.*)?$")


def _parse_args(raw: Optional[str], start: int, text: str, loc: Loc) -> dict:
    args: dict[str, Expr] = {}
    if not raw:
        return args
    if not raw.endswith(")"):
        raise ColangSyntaxError("expected `)` closing the arguments", _sub(loc, len(text)))
    inner = raw[1:-1]
    for piece, offset in _split_args(inner):
        piece_loc = _sub(loc, start + 1 + offset)
        am = re.match(r"\s*([A-Za-z_]\w*)\s*=(?!=)\s*", piece)
        if not am:
            lead = len(piece) - len(piece.lstrip())
            raise ColangSyntaxError("expected a keyword argument like `name=$value`", _sub(piece_loc, lead))
        if am.group(1) in args:
            raise ColangSyntaxError(f"argument {am.group(1)!r} given twice", _sub(piece_loc, am.start(1)))
        args[am.group(1)] = parse_expression(piece[am.end():], _sub(piece_loc, am.end()))
    return args


def _parse_execute(text: str, loc: Loc, result: Optional[str]) -> Execute:
    m = _EXEC.match(text)
    if not m:
        raise ColangSyntaxError("expected an action name after `execute`, like `execute check_input` or "
                                "`execute check_input(text=$user_message)`", _sub(loc, len("execute") + 1))
    args = _parse_args(m.group("args"), m.start("args") if m.group("args") else 0, text, loc)
    return Execute(" ".join(m.group("name").split()), args, result, loc)


def _parse_event(text: str, offset: int, loc: Loc, what: str):
    m = _EVENT.match(text[offset:])
    if not m:
        raise ColangSyntaxError(f"expected an event name after `{what}`, like `{what} StartInputRails`",
                                _sub(loc, offset))
    args = _parse_args(m.group("args"), offset + m.start("args") if m.group("args") else 0, text, loc)
    return m.group("name"), args


def _split_args(inner: str) -> list[tuple[str, int]]:
    """Split on commas outside strings and brackets; returns (piece, offset) pairs."""
    pieces, depth, quote, start = [], 0, None, 0
    for i, ch in enumerate(inner):
        if quote:
            if ch == quote and inner[i - 1] != "\\":
                quote = None
        elif ch in "\"'":
            quote = ch
        elif ch in "([{":
            depth += 1
        elif ch in ")]}":
            depth -= 1
        elif ch == "," and depth == 0:
            pieces.append((inner[start:i], start))
            start = i + 1
    if inner[start:].strip() or pieces:
        pieces.append((inner[start:], start))
    return pieces


def _no_children(line: _Line, what: str) -> None:
    if line.children:
        raise ColangSyntaxError(f"unexpected indented block: `{what}` takes no block",
                                line.children[0].loc, hint="unindent this line")


class _Flow:
    """What the body of one flow declares besides its steps (priority, docstring, meta)."""

    def __init__(self):
        self.priority: Optional[float] = None
        self.docstring: Optional[str] = None
        self.meta: list[str] = []


def _statements(lines: list[_Line], flow: Optional[_Flow] = None, loop: int = 0) -> list:
    flow = flow if flow is not None else _Flow()
    body: list = []
    i = 0
    while i < len(lines):
        line = lines[i]
        text, loc = line.text, line.loc
        head = text.split(" ", 1)[0]
        rest = text[len(head):].strip()
        if text.startswith('"""'):
            _no_children(line, "docstring")
            if flow.docstring is None:
                flow.docstring = text[3:]
        elif head == "if":
            if not rest:
                raise ColangSyntaxError("expected a condition after `if`", _sub(loc, 2))
            branches = [(parse_expression(_colon(text[3:]), _sub(loc, 3)), _block2(line, flow, loop))]
            orelse: list = []
            while i + 1 < len(lines) and lines[i + 1].text.split(" ", 1)[0] in ("else", "elif"):
                nxt = lines[i + 1]
                m = re.match(r"(else\s+if|elif)\b\s*", nxt.text)
                if m:
                    if not nxt.text[m.end():]:
                        raise ColangSyntaxError("expected a condition after `else if`", _sub(nxt.loc, m.end()))
                    branches.append((parse_expression(_colon(nxt.text[m.end():]), _sub(nxt.loc, m.end())),
                                     _block2(nxt, flow, loop)))
                    i += 1
                elif nxt.text == "else":
                    orelse = _block2(nxt, flow, loop)
                    i += 1
                    break
                else:
                    raise ColangSyntaxError("expected `else`, `else if <condition>` here (after an `if` block)",
                                            nxt.loc)
            body.append(If(branches, orelse, loc))
        elif head == "while":
            if not rest:
                raise ColangSyntaxError("expected a condition after `while`", _sub(loc, 5))
            body.append(While(parse_expression(_colon(text[6:]), _sub(loc, 6)), _block2(line, flow, loop + 1), loc))
        elif head in ("break", "continue") and not rest:
            _no_children(line, head)
            if not loop:
                raise ColangSyntaxError(f"`{head}` outside a `while` loop", loc)
            body.append(Break(loc) if head == "break" else Continue(loc))
        elif head == "when":
            m = re.match(r"when\s+user\s+", text)
            if not m:
                raise ColangSyntaxError("expected `when user <intent>` (other `when` forms are not supported)",
                                        _sub(loc, 5))
            branches = [(_name(text[m.end():], _sub(loc, m.end()), "a user intent"), _block2(line, flow, loop))]
            orelse = None
            while i + 1 < len(lines) and lines[i + 1].text.split(" ", 1)[0] == "else":
                nxt = lines[i + 1]
                m = re.match(r"else\s+when\s+user\s+", nxt.text)
                if m:
                    branches.append((_name(nxt.text[m.end():], _sub(nxt.loc, m.end()), "a user intent"),
                                     _block2(nxt, flow, loop)))
                    i += 1
                elif nxt.text == "else":
                    orelse = _block2(nxt, flow, loop)
                    i += 1
                    break
                elif re.match(r"else\s+if\b", nxt.text):
                    raise ColangSyntaxError("expected `else when user <intent>` or `else` after a `when` block, "
                                            "found `else if`", nxt.loc)
                else:
                    raise ColangSyntaxError("expected `else when user <intent>` or `else`", nxt.loc)
            body.append(When(branches, orelse, loc))
        elif head in ("else", "elif"):
            raise ColangSyntaxError("`else` without a preceding `if` or `when` block", loc,
                                    hint="align it with its `if`/`when`")
        elif head == "user":
            _no_children(line, "user")
            body.append(UserStep(_name(rest, _sub(loc, 5), "a user intent after `user`"), loc))
        elif head == "bot":
            _no_children(line, "bot")
            var = rest.startswith("$")
            inline = re.match(r"((?:[A-Za-z_][\w\-']*\s+)*)(\"(?:[^\"\\]|\\.)*\"|'(?:[^'\\]|\\.)*')$", rest)
            if var:
                body.append(BotStep(rest, loc, expr=parse_expression(rest, _sub(loc, 4))))
            elif inline:
                name = " ".join(inline.group(1).split())
                body.append(BotStep(name, loc, text=_unescape(inline.group(2)[1:-1])))
            else:
                body.append(BotStep(_name(rest, _sub(loc, 4), "a bot message name after `bot`"), loc))
        elif head == "execute":
            _no_children(line, "execute")
            body.append(_parse_execute(text, loc, None))
        elif head == "do":
            _no_children(line, "do")
            if rest.startswith("$"):  # `do $input_flows[$i]`, as NeMo's own llm_flows.co does
                body.append(Do(rest, loc, parse_expression(rest, _sub(loc, 3))))
            else:
                body.append(Do(_name(rest, _sub(loc, 3), "a subflow name after `do`"), loc))
        elif text == "pass":
            _no_children(line, "pass")
        elif text == "done":
            _no_children(line, "done")
            body.append(Return(loc))
        elif text in ("stop", "abort"):
            _no_children(line, text)
            body.append(Stop(loc) if text == "stop" else Abort(loc))
        elif head == "return":
            _no_children(line, "return")
            body.append(Return(loc, parse_expression(rest, _sub(loc, 7)) if rest else None))
        elif head == "priority":
            _no_children(line, "priority")
            try:
                flow.priority = float(rest)
            except ValueError:
                raise ColangSyntaxError("expected a number after `priority`, like `priority 0.9`",
                                        _sub(loc, 9)) from None
        elif head == "meta":
            _no_children(line, "meta")
            flow.meta.append(rest)  # NeMo's flow annotations (e.g. `meta user_intent`); kept, not acted on
        elif head == "create":
            _no_children(line, "create event")
            m = re.match(r"create\s+event\s+", text)
            if not m:
                raise ColangSyntaxError("expected `create event <EventName>`", _sub(loc, 7))
            name, args = _parse_event(text, m.end(), loc, "create event")
            body.append(CreateEvent(name, args, loc))
        elif head == "event":
            _no_children(line, "event")
            name, args = _parse_event(text, 6, loc, "event")
            body.append(EventStep(name, args, loc))
        elif head in ("label", "checkpoint"):
            _no_children(line, head)
            body.append(Label(_name(rest, _sub(loc, len(head) + 1), f"a label name after `{head}`"), loc))
        elif head == "goto" or re.match(r"go\s+to\s", text):
            _no_children(line, "goto")
            at = len(head) + 1 if head == "goto" else re.match(r"go\s+to\s+", text).end()
            body.append(Goto(_name(text[at:], _sub(loc, at), "a label name after `goto`"), loc))
        elif head in _REFUSED:
            raise ColangSyntaxError(_REFUSED[head], loc)
        elif head.startswith("$") or head == "set":
            _no_children(line, "assignment")
            offset = 0 if head != "set" else len(text) - len(rest)
            m = re.match(r"\$([A-Za-z_]\w*)\s*=(?!=)\s*", text[offset:])
            if not m:
                raise ColangSyntaxError("expected an assignment like `$name = value`", _sub(loc, offset))
            if m.group(1).startswith("_"):
                raise ColangSyntaxError(f"variable `${m.group(1)}`: names starting with `_` are not accessible",
                                        _sub(loc, offset + 1))
            value = text[offset + m.end():]
            at = offset + m.end()
            if not value:
                raise ColangSyntaxError("expected a value after `=`", _sub(loc, at))
            if re.match(r"execute\b", value):
                body.append(_parse_execute(value, _sub(loc, at), m.group(1)))
                body[-1].loc = loc
            else:
                body.append(Assign(m.group(1), parse_expression(value, _sub(loc, at)), loc))
        else:
            raise ColangSyntaxError(f"unknown statement {head!r}; expected one of: {_STATEMENTS}", loc)
        i += 1
    return body


def _colon(condition: str) -> str:
    """`if $x:` as NeMo's own library writes it: a trailing colon after a condition is accepted."""
    return condition[:-1] if condition.rstrip().endswith(":") and not condition.rstrip().endswith("::") \
        else condition


def _block2(owner: _Line, flow: _Flow, loop: int) -> list:
    if not owner.children:
        raise ColangSyntaxError(f"expected an indented block after `{owner.text}`",
                                Loc(owner.loc.file, owner.loc.line, owner.loc.col + len(owner.text)))
    return _statements(owner.children, flow, loop)


def _check_labels(body: list, file_flow: str, loc: Loc) -> None:
    labels, gotos = {}, []
    stack = [body]
    while stack:
        for step in stack.pop():
            if isinstance(step, Label):
                if step.name in labels:
                    raise ColangSyntaxError(f"label {step.name!r} defined twice in {file_flow}", step.loc)
                labels[step.name] = step
            elif isinstance(step, Goto):
                gotos.append(step)
            elif isinstance(step, If):
                stack.extend(sub for _c, sub in step.branches)
                stack.append(step.orelse)
            elif isinstance(step, When):
                stack.extend(sub for _i, sub in step.branches)
                stack.append(step.orelse or [])
            elif isinstance(step, While):
                stack.append(step.body)
    for g in gotos:
        if g.label not in labels:
            raise ColangSyntaxError(f"`goto {g.label}`: no `label {g.label}` in {file_flow}", g.loc)


def _strings(define: _Line, what: str) -> list[str]:
    out = []
    for child in define.children:
        if child.text.startswith('"""'):
            continue  # a docstring
        if child.children:
            raise ColangSyntaxError("unexpected indented block under a quoted string", child.children[0].loc)
        m = _STRING.fullmatch(child.text)
        if not m:
            raise ColangSyntaxError(f"expected a quoted {what} like \"...\"", child.loc,
                                    hint="wrap the text in double quotes; escape inner quotes as \\\"")
        out.append(_unescape(m.group(1) if m.group(1) is not None else m.group(2)))
    if not out:
        raise ColangSyntaxError(f"expected at least one indented, quoted {what} after `{define.text}`",
                                _sub(define.loc, len(define.text)))
    return out


def parse(source: str, file: str = "<string>") -> Document:
    """Parse Colang 1.0 source text into a Document; raises ColangSyntaxError with file:line:col."""
    doc = Document()
    for top in _tree(_lines(source, file)):
        if top.text.startswith('"""') and not top.children:
            continue  # a file-level docstring
        if top.indent != 0:
            raise ColangSyntaxError("unexpected indentation: expected `define ...` at the start of the line",
                                    top.loc)
        m = re.match(r"define\s+(\w+)\b\s*", top.text)
        if not m:
            raise ColangSyntaxError("expected `define user`, `define bot`, `define flow` or `define subflow`",
                                    top.loc)
        kind, rest = m.group(1), top.text[m.end():]
        name_loc = _sub(top.loc, m.end())
        if kind == "user":
            doc.users.append(UserDef(_name(rest, name_loc, "an intent name after `define user`"),
                                     _strings(top, "utterance"), top.loc))
        elif kind == "bot":
            doc.bots.append(BotDef(_name(rest, name_loc, "a message name after `define bot`"),
                                   _strings(top, "bot message"), top.loc))
        elif kind == "template":  # NeMo's other name for `define bot`
            doc.bots.append(BotDef(_name(rest, name_loc, "a message name after `define template`"),
                                   _strings(top, "bot message"), top.loc))
        elif kind in _REFUSED_DEFINES:
            raise ColangSyntaxError(f"`define {kind}` (NeMo Colang 1.0) is not supported; rails use `define "
                                    "user|bot|flow|subflow`", _sub(top.loc, m.start(1)))
        elif kind in ("flow", "subflow", "extension", "parallel", "recursive"):
            # modifiers as NeMo writes them: `define parallel extension flow ...`
            modifiers = set()
            while kind in ("extension", "parallel", "recursive"):
                modifiers.add(kind)
                m2 = re.match(r"(flow|subflow|extension|parallel|recursive)\b\s*", rest)
                if not m2:
                    raise ColangSyntaxError(f"expected `define {' '.join(sorted(modifiers))} flow <name>`", name_loc)
                kind, rest, name_loc = m2.group(1), rest[m2.end():], _sub(name_loc, m2.end())
            extension = "extension" in modifiers
            if rest:
                name = _name(rest, name_loc, f"a {kind} name")
            elif kind == "flow":
                name = f"flow at {top.loc}"  # anonymous flows are allowed in Colang 1.0
            else:
                raise ColangSyntaxError("expected a subflow name after `define subflow`", name_loc)
            meta = _Flow()
            try:
                body = _block2(top, meta, 0)
            except RecursionError:  # hundreds of nested if/when blocks: refuse, do not crash
                raise ColangSyntaxError(f"blocks nested too deeply in {kind} {name!r}", top.loc,
                                        hint="a few dozen levels of if/when is plenty; split it into subflows") from None
            _check_labels(body, f"{kind} {name!r}", top.loc)
            for step in body[1:]:
                if isinstance(step, EventStep):
                    raise ColangSyntaxError("`event ...` is supported only as the first step of a flow (the "
                                            "flow then runs when `create event` makes that event)", step.loc)
            doc.flows.append(FlowDef(name, body, kind == "subflow", top.loc,
                                     priority=1.0 if meta.priority is None else meta.priority,
                                     extension=extension, docstring=meta.docstring, meta=meta.meta,
                                     parallel="parallel" in modifiers))
        else:
            raise ColangSyntaxError(f"expected `user`, `bot`, `flow`, `subflow`, `extension flow` or `parallel "
                                    f"flow` after `define`, found {kind!r}",
                                    _sub(top.loc, m.start(1)))
    return doc


def parse_file(path: str | Path) -> Document:
    path = Path(path)
    try:
        source = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"not UTF-8 text ({exc.reason} at byte {exc.start})", where=str(path)) from None
    return parse(source, str(path))
