"""Colang flows compiled to flat instruction lists, so a flow can pause at a `user`/`when` step and
resume on a later turn from nothing but (flow name, program counter, variables).

    ("user", intent, loc)                      pause; the next message must have this intent
    ("when", [(intent, target)], else, loc)    pause; branch on the next message's intent
    ("bot", name, loc, inline text or None, expr or None)  ("exec", Execute)  ("set", Assign)  ("do", name, loc, expr or None)
    ("jf", expr, target)  ("jmp", target)  ("stop", loc)  ("return", expr or None, loc)
    ("event", name, args, loc)                 `create event`: runs the flows that start with `event name`
    ("on", name, loc)                          a flow's first `event name` step (matched by the caller)

`while` compiles to a conditional jump back; `break`/`continue`/`goto` to plain jumps; `abort` to stop.
"""
from __future__ import annotations

from . import colang


def compile_flow(flow: colang.FlowDef) -> list[tuple]:
    code: list[tuple] = []
    labels: dict[str, int] = {}
    gotos: list[tuple[int, colang.Goto]] = []
    _emit(flow.body, code, labels, gotos, None, first=True)
    for at, step in gotos:
        code[at] = ("jmp", labels[step.label])  # the parser checked every label exists
    return code


def _emit(body: list, code: list, labels: dict, gotos: list, loop, first: bool = False) -> None:
    for n, step in enumerate(body):
        if isinstance(step, colang.UserStep):
            code.append(("user", step.intent, step.loc))
        elif isinstance(step, colang.BotStep):
            code.append(("bot", step.name, step.loc, step.text, step.expr))
        elif isinstance(step, colang.Execute):
            code.append(("exec", step))
        elif isinstance(step, colang.Assign):
            code.append(("set", step))
        elif isinstance(step, colang.Do):
            code.append(("do", step.subflow, step.loc, step.expr))
        elif isinstance(step, (colang.Stop, colang.Abort)):
            code.append(("stop", step.loc))
        elif isinstance(step, colang.Return):
            code.append(("return", step.value, step.loc))
        elif isinstance(step, colang.CreateEvent):
            code.append(("event", step.name, step.args, step.loc))
        elif isinstance(step, colang.EventStep):
            if not (first and n == 0):
                raise colang.ColangSyntaxError("`event ...` is supported only as the first step of a flow",
                                               step.loc)
            code.append(("on", step.name, step.loc))
        elif isinstance(step, colang.Label):
            labels[step.name] = len(code)
        elif isinstance(step, colang.Goto):
            gotos.append((len(code), step))
            code.append(None)
        elif isinstance(step, (colang.Break, colang.Continue)):
            # loop = (start pc, list of break sites to patch)
            if isinstance(step, colang.Continue):
                code.append(("jmp", loop[0]))
            else:
                loop[1].append(len(code))
                code.append(None)
        elif isinstance(step, colang.While):
            start = len(code)
            code.append(None)
            inner = (start, [])
            _emit(step.body, code, labels, gotos, inner)
            code.append(("jmp", start))
            code[start] = ("jf", step.cond, len(code))
            for at in inner[1]:
                code[at] = ("jmp", len(code))
        elif isinstance(step, colang.If):
            ends = []
            for cond, sub in step.branches:
                jf = len(code)
                code.append(None)  # patched below with the jump past this branch
                _emit(sub, code, labels, gotos, loop)
                ends.append(len(code))
                code.append(None)
                code[jf] = ("jf", cond, len(code))
            _emit(step.orelse, code, labels, gotos, loop)
            for at in ends:
                code[at] = ("jmp", len(code))
        elif isinstance(step, colang.When):
            at = len(code)
            code.append(None)
            targets, ends = [], []
            for intent, sub in step.branches:
                targets.append((intent, len(code)))
                _emit(sub, code, labels, gotos, loop)
                ends.append(len(code))
                code.append(None)
            else_target = None
            if step.orelse is not None:
                else_target = len(code)
                _emit(step.orelse, code, labels, gotos, loop)
            code[at] = ("when", targets, else_target, step.loc)
            for end in ends:
                code[end] = ("jmp", len(code))
        else:  # pragma: no cover - the parser makes only the types above
            raise TypeError(f"unknown step {step!r}")
