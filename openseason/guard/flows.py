"""Colang flows compiled to flat instruction lists, so a flow can pause at a `user`/`when` step and
resume on a later turn from nothing but (flow name, program counter, variables).

    ("user", intent, loc)                      pause; the next message must have this intent
    ("when", [(intent, target)], else, loc)    pause; branch on the next message's intent
    ("bot", name, loc)  ("exec", Execute)  ("set", Assign)  ("do", name, loc)
    ("jf", expr, target)  ("jmp", target)  ("stop", loc)  ("return", loc)
"""
from __future__ import annotations

from . import colang


def compile_flow(flow: colang.FlowDef) -> list[tuple]:
    code: list[tuple] = []
    _emit(flow.body, code)
    return code


def _emit(body: list, code: list) -> None:
    for step in body:
        if isinstance(step, colang.UserStep):
            code.append(("user", step.intent, step.loc))
        elif isinstance(step, colang.BotStep):
            code.append(("bot", step.name, step.loc))
        elif isinstance(step, colang.Execute):
            code.append(("exec", step))
        elif isinstance(step, colang.Assign):
            code.append(("set", step))
        elif isinstance(step, colang.Do):
            code.append(("do", step.subflow, step.loc))
        elif isinstance(step, colang.Stop):
            code.append(("stop", step.loc))
        elif isinstance(step, colang.Return):
            code.append(("return", step.loc))
        elif isinstance(step, colang.If):
            ends = []
            for cond, sub in step.branches:
                jf = len(code)
                code.append(None)  # patched below with the jump past this branch
                _emit(sub, code)
                ends.append(len(code))
                code.append(None)
                code[jf] = ("jf", cond, len(code))
            _emit(step.orelse, code)
            for at in ends:
                code[at] = ("jmp", len(code))
        elif isinstance(step, colang.When):
            at = len(code)
            code.append(None)
            targets, ends = [], []
            for intent, sub in step.branches:
                targets.append((intent, len(code)))
                _emit(sub, code)
                ends.append(len(code))
                code.append(None)
            else_target = None
            if step.orelse is not None:
                else_target = len(code)
                _emit(step.orelse, code)
            code[at] = ("when", targets, else_target, step.loc)
            for end in ends:
                code[end] = ("jmp", len(code))
        else:  # pragma: no cover - the parser makes only the types above
            raise TypeError(f"unknown step {step!r}")
