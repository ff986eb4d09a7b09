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
from typing import Any, Optional, Union

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


Expr = Union[Lit, Var, Unary, Binary]


# -- statements ---------------------------------------------------------------------------------------
@dataclass
class UserStep:
    intent: str            # "..." means any user message
    loc: Loc


@dataclass
class BotStep:
    name: str              # "..." means a reply written by the LLM
    loc: Loc


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


@dataclass
class Do:
    subflow: str
    loc: Loc


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
    out = []
    for lineno, raw in enumerate(source.splitlines(), start=1):
        raw = raw.expandtabs(4)
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
  | (?P<number>-?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?)
  | (?P<var>\$[A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*)
  | (?P<op>==|!=|<=|>=|<|>|\(|\)|,|=)
  | (?P<word>[A-Za-z_]\w*)
  )""", re.VERBOSE)

_KEYWORD_LITERALS = {"true": True, "True": True, "false": False, "False": False, "none": None,
                     "None": None, "null": None}


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
        if value is not None and tok[1] != value:
            return None
        return tok

    def take(self):
        tok = self.tokens[self.i]
        self.i += 1
        return tok

    def parse(self) -> Expr:
        if not self.tokens:
            self.fail("expected an expression")
        expr = self.or_()
        if self.i < len(self.tokens):
            self.fail("expected an operator (and, or, ==, !=, <, >, in) or the end of the expression")
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
        left = self.atom()
        tok = self.peek()
        if tok and tok[1] in ("==", "!=", "<", "<=", ">", ">=", "in"):
            self.take()
            return Binary(tok[1], left, self.atom())
        if tok and tok[1] == "not" and self.i + 1 < len(self.tokens) and self.tokens[self.i + 1][1] == "in":
            self.i += 2
            return Binary("not in", left, self.atom())
        return left

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
            for f in fields:
                if f.startswith("_"):  # $x.__class__ ... would walk from any object to Python internals
                    raise ColangSyntaxError(f"field `.{f}`: names starting with `_` are not accessible",
                                            self.at(col + 1), hint="use a plain field name such as `$result.text`")
                col += 1 + len(f)
            return Var(name, tuple(fields))
        if kind == "word" and value in _KEYWORD_LITERALS:
            return Lit(_KEYWORD_LITERALS[value])
        if value == "(":
            expr = self.or_()
            if not self.peek(")"):
                self.fail("expected `)`")
            self.take()
            return expr
        self.i -= 1
        self.fail("expected a value (\"text\", number, true/false/none), `$variable` or `(`")


MAX_EXPRESSION_DEPTH = 50


def parse_expression(text: str, loc: Loc) -> Expr:
    depth = max(text.count("("), len(re.findall(r"\bnot\b", text)))
    if depth > MAX_EXPRESSION_DEPTH:  # evaluate() recurses as deep as the tree; refuse before that
        raise ColangSyntaxError(f"expression nested too deeply (more than {MAX_EXPRESSION_DEPTH} `(` or `not`)",
                                loc, hint="split it into several `$var = ...` steps")
    return _ExprParser(text, loc).parse()


def evaluate(expr: Expr, variables: dict[str, Any]) -> Any:
    """Evaluate a parsed expression; unknown variables are None (as in Colang 1.0)."""
    if isinstance(expr, Lit):
        return expr.value
    if isinstance(expr, Var):
        value = variables.get(expr.name)
        for name in expr.fields:
            if name.startswith("_"):  # the parser refuses these too; an AST built elsewhere must not either
                raise ConfigError(f"`${expr.name}.{'.'.join(expr.fields)}`: field names starting with `_` "
                                  "are not accessible")
            value = value.get(name) if isinstance(value, dict) else getattr(value, name, None)
        return value
    if isinstance(expr, Unary):
        return not evaluate(expr.operand, variables)
    if expr.op == "and":
        return evaluate(expr.left, variables) and evaluate(expr.right, variables)
    if expr.op == "or":
        return evaluate(expr.left, variables) or evaluate(expr.right, variables)
    left, right = evaluate(expr.left, variables), evaluate(expr.right, variables)
    try:
        return {"==": lambda: left == right, "!=": lambda: left != right, "<": lambda: left < right,
                "<=": lambda: left <= right, ">": lambda: left > right, ">=": lambda: left >= right,
                "in": lambda: left in right, "not in": lambda: left not in right}[expr.op]()
    except TypeError:
        return False  # comparing None with a number is "false", not a crash mid-conversation


# -- statements -----------------------------------------------------------------------------------------
_STATEMENTS = ("user <intent>, bot <message>, execute <action>, $var = ..., if, else if, else, "
               "when user <intent>, else when user <intent>, stop, return, do <subflow>")


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


_EXEC = re.compile(r"execute\s+(?P<name>[A-Za-z_][\w.]*)\s*(?P<args>\(.*)?$")


def _parse_execute(text: str, loc: Loc, result: Optional[str]) -> Execute:
    m = _EXEC.match(text)
    if not m:
        raise ColangSyntaxError("expected an action name after `execute`, like `execute check_input` or "
                                "`execute check_input(text=$user_message)`", _sub(loc, len("execute") + 1))
    args: dict[str, Expr] = {}
    raw = m.group("args")
    if raw:
        start = m.start("args")
        if not raw.endswith(")"):
            raise ColangSyntaxError("expected `)` closing the action's arguments", _sub(loc, len(text)))
        inner = raw[1:-1]
        for piece, offset in _split_args(inner):
            piece_loc = _sub(loc, start + 1 + offset)
            am = re.match(r"\s*([A-Za-z_]\w*)\s*=(?!=)\s*", piece)
            if not am:
                lead = len(piece) - len(piece.lstrip())
                raise ColangSyntaxError("expected a keyword argument like `name=$value`",
                                        _sub(piece_loc, lead))
            if am.group(1) in args:
                raise ColangSyntaxError(f"argument {am.group(1)!r} given twice", _sub(piece_loc, am.start(1)))
            args[am.group(1)] = parse_expression(piece[am.end():], _sub(piece_loc, am.end()))
    return Execute(m.group("name"), args, result, loc)


def _split_args(inner: str) -> list[tuple[str, int]]:
    """Split on commas outside strings and parentheses; returns (piece, offset) pairs."""
    pieces, depth, quote, start = [], 0, None, 0
    for i, ch in enumerate(inner):
        if quote:
            if ch == quote and inner[i - 1] != "\\":
                quote = None
        elif ch in "\"'":
            quote = ch
        elif ch == "(":
            depth += 1
        elif ch == ")":
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


def _block(lines: list[_Line], owner: _Line) -> list:
    if not lines:
        raise ColangSyntaxError(f"expected an indented block after `{owner.text}`",
                                Loc(owner.loc.file, owner.loc.line, owner.loc.col + len(owner.text)))
    return _statements(lines)


def _statements(lines: list[_Line]) -> list:
    body: list = []
    i = 0
    while i < len(lines):
        line = lines[i]
        text, loc = line.text, line.loc
        head = text.split(" ", 1)[0]
        rest = text[len(head):].strip()
        if head == "if":
            if not rest:
                raise ColangSyntaxError("expected a condition after `if`", _sub(loc, 2))
            branches = [(parse_expression(text[3:], _sub(loc, 3)), _block(line.children, line))]
            orelse: list = []
            while i + 1 < len(lines) and lines[i + 1].text.split(" ", 1)[0] == "else" \
                    or (i + 1 < len(lines) and lines[i + 1].text.split(" ", 1)[0] == "elif"):
                nxt = lines[i + 1]
                m = re.match(r"(else\s+if|elif)\b\s*", nxt.text)
                if m:
                    if not nxt.text[m.end():]:
                        raise ColangSyntaxError("expected a condition after `else if`", _sub(nxt.loc, m.end()))
                    branches.append((parse_expression(nxt.text[m.end():], _sub(nxt.loc, m.end())),
                                     _block(nxt.children, nxt)))
                    i += 1
                elif nxt.text == "else":
                    orelse = _block(nxt.children, nxt)
                    i += 1
                    break
                else:
                    raise ColangSyntaxError("expected `else`, `else if <condition>` here (after an `if` block)",
                                            nxt.loc)
            body.append(If(branches, orelse, loc))
        elif head == "when":
            m = re.match(r"when\s+user\s+", text)
            if not m:
                raise ColangSyntaxError("expected `when user <intent>`", _sub(loc, 5))
            branches = [(_name(text[m.end():], _sub(loc, m.end()), "a user intent"), _block(line.children, line))]
            orelse = None
            while i + 1 < len(lines) and lines[i + 1].text.split(" ", 1)[0] == "else":
                nxt = lines[i + 1]
                m = re.match(r"else\s+when\s+user\s+", nxt.text)
                if m:
                    branches.append((_name(nxt.text[m.end():], _sub(nxt.loc, m.end()), "a user intent"),
                                     _block(nxt.children, nxt)))
                    i += 1
                elif nxt.text == "else":
                    orelse = _block(nxt.children, nxt)
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
            body.append(BotStep(_name(rest, _sub(loc, 4), "a bot message name after `bot`"), loc))
        elif head == "execute":
            _no_children(line, "execute")
            body.append(_parse_execute(text, loc, None))
        elif head == "do":
            _no_children(line, "do")
            body.append(Do(_name(rest, _sub(loc, 3), "a subflow name after `do`"), loc))
        elif text == "stop":
            _no_children(line, "stop")
            body.append(Stop(loc))
        elif text == "return":
            _no_children(line, "return")
            body.append(Return(loc))
        elif head.startswith("$"):
            _no_children(line, "assignment")
            m = re.match(r"\$([A-Za-z_]\w*)\s*=(?!=)\s*", text)
            if not m:
                raise ColangSyntaxError("expected an assignment like `$name = value`", loc)
            value = text[m.end():]
            if not value:
                raise ColangSyntaxError("expected a value after `=`", _sub(loc, m.end()))
            if re.match(r"execute\b", value):
                body.append(_parse_execute(value, _sub(loc, m.end()), m.group(1)))
                body[-1].loc = loc
            else:
                body.append(Assign(m.group(1), parse_expression(value, _sub(loc, m.end())), loc))
        else:
            raise ColangSyntaxError(f"unknown statement {head!r}; expected one of: {_STATEMENTS}", loc)
        i += 1
    return body


def _strings(define: _Line, what: str) -> list[str]:
    out = []
    for child in define.children:
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
        elif kind in ("flow", "subflow"):
            if rest:
                name = _name(rest, name_loc, f"a {kind} name")
            elif kind == "flow":
                name = f"flow at {top.loc}"  # anonymous flows are allowed in Colang 1.0
            else:
                raise ColangSyntaxError("expected a subflow name after `define subflow`", name_loc)
            try:
                body = _block(top.children, top)
            except RecursionError:  # hundreds of nested if/when blocks: refuse, do not crash
                raise ColangSyntaxError(f"blocks nested too deeply in {kind} {name!r}", top.loc,
                                        hint="a few dozen levels of if/when is plenty; split it into subflows") from None
            doc.flows.append(FlowDef(name, body, kind == "subflow", top.loc))
        else:
            raise ColangSyntaxError(f"expected `user`, `bot`, `flow` or `subflow` after `define`, found {kind!r}",
                                    _sub(top.loc, m.start(1)))
    return doc


def parse_file(path: str | Path) -> Document:
    path = Path(path)
    try:
        source = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"not UTF-8 text ({exc.reason} at byte {exc.start})", where=str(path)) from None
    return parse(source, str(path))
