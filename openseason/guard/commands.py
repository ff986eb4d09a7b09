"""`openseason guard check CONFIG TEXT...` and `openseason guard chat CONFIG --model CKPT`.

Thin wrappers over `Rails.check` and `Rails.generate`; CONFIG is a rails folder or the name of an
example shipped with openseason (e.g. `support`).
"""
from __future__ import annotations

import json
import sys
from pathlib import Path


def register(subparsers) -> None:
    guard = subparsers.add_parser("guard", help="guardrails from Colang 1.0 configs (check, chat)")
    sub = guard.add_subparsers(dest="guard_command", metavar="VERB")
    sub.required = True

    p = sub.add_parser("check", help="print the rails' JSON decision for a message or conversation")
    p.add_argument("config", help="rails folder (config.yml + *.co) or a shipped example name")
    p.add_argument("text", nargs="+", help="user message(s); several form a conversation of user turns")
    p.add_argument("--model", help="openseason checkpoint used as the LLM for LLM rails (default: none)")
    p.set_defaults(func=_check)

    p = sub.add_parser("chat", help="chat in the terminal with a model behind the rails")
    p.add_argument("config", help="rails folder (config.yml + *.co) or a shipped example name")
    p.add_argument("--model", help="openseason checkpoint that writes free replies (default: rails only)")
    p.add_argument("--show-decision", action="store_true", help="print each turn's decision as JSON")
    p.set_defaults(func=_chat)


def load_rails(config: str, model: str | None = None):
    """Rails for a config folder or shipped example name, with an openseason LLM if `model` is given."""
    from . import Rails, RailsConfig, example_config
    from ..generation.client import LocalClient

    path = Path(config)
    if not path.exists() and "/" not in config:
        path = example_config(config)
    llm = LocalClient(model) if model else None
    return Rails(RailsConfig.from_path(path), llm=llm)


def _check(args) -> int:
    rails = load_rails(args.config, args.model)
    decision = rails.check([{"role": "user", "content": t} for t in args.text])
    print(json.dumps(decision.to_dict(), indent=2, ensure_ascii=False))
    return 0


def _chat(args) -> int:
    rails = load_rails(args.config, args.model)
    messages: list[dict] = []
    print("Type a message; an empty line or Ctrl-D ends the chat.", file=sys.stderr)
    while True:
        try:
            text = input("you> ").strip()
        except EOFError:
            break
        if not text:
            break
        messages.append({"role": "user", "content": text})
        result = rails.generate(messages)
        messages.append({"role": "assistant", "content": result.text})
        print(f"bot> {result.text}")
        if args.show_decision:
            print(json.dumps(result.decision.to_dict(), ensure_ascii=False), file=sys.stderr)
    return 0
