"""`openseason guard check CONFIG TEXT...`, `guard chat CONFIG --model CKPT` and
`guard calibrate CONFIG --paraphrases FILE`.

Thin wrappers over `Rails.check`, `Rails.generate` and `evaluate.calibrate`; CONFIG is a rails folder
or the name of an example shipped with openseason (e.g. `support`). `--trust-actions` loads the
config folder's actions.py / actions/ (its code runs); `--actions pkg.mod` registers the `@action`
functions of a module; `--strict` makes unknown config.yml keys errors (warnings otherwise, on stderr).
"""
from __future__ import annotations

import json
import sys
import warnings
from pathlib import Path


def register(subparsers) -> None:
    guard = subparsers.add_parser("guard", help="guardrails from Colang 1.0 configs (check, chat)")
    sub = guard.add_subparsers(dest="guard_command", metavar="VERB")
    sub.required = True

    p = sub.add_parser("check", help="print the rails' JSON decision for a message or conversation")
    p.add_argument("config", help="rails folder (config.yml + *.co) or a shipped example name")
    p.add_argument("text", nargs="+", help="user message(s); several form a conversation of user turns")
    p.add_argument("--model", help="openseason checkpoint used as the LLM for LLM rails (default: none)")
    _common(p)
    p.set_defaults(func=_check)

    p = sub.add_parser("chat", help="chat in the terminal with a model behind the rails")
    p.add_argument("config", help="rails folder (config.yml + *.co) or a shipped example name")
    p.add_argument("--model", help="openseason checkpoint that writes free replies (default: rails only)")
    p.add_argument("--show-decision", action="store_true", help="print each turn's decision as JSON")
    _common(p)
    p.set_defaults(func=_chat)

    p = sub.add_parser("calibrate", help="intent accuracy across similarity thresholds; suggests one")
    p.add_argument("config", help="rails folder (config.yml + *.co) or a shipped example name")
    p.add_argument("--paraphrases", required=True, help="labelled messages, one `intent | message` a line")
    p.add_argument("--json", action="store_true", help="print the full report as JSON")
    _common(p)
    p.set_defaults(func=_calibrate)


def _common(p) -> None:
    p.add_argument("--trust-actions", action="store_true",
                   help="load the config folder's actions.py / actions/ (runs the config's Python code)")
    p.add_argument("--actions", action="append", default=[], metavar="MODULE",
                   help="register the @action functions of an importable module (repeatable)")
    p.add_argument("--strict", action="store_true", help="unknown config.yml keys are errors, not warnings")


def load_rails(config: str, model: str | None = None, *, trust_actions: bool = False,
               actions: tuple[str, ...] = (), strict: bool = False):
    """Rails for a config folder or shipped example name, with an openseason LLM if `model` is given;
    unknown-key warnings go to stderr."""
    from . import Rails, RailsConfig, example_config
    from .actions import load_actions_module
    from .rails_config import UnknownKeyWarning
    from ..generation.client import LocalClient

    path = Path(config)
    if not path.exists() and "/" not in config:
        path = example_config(config)
    with warnings.catch_warnings():  # printed below, once, in the CLI's own format
        warnings.simplefilter("ignore", UnknownKeyWarning)
        cfg = RailsConfig.from_path(path, strict=strict)
    for warning in cfg.unknown_keys:
        print(f"openseason: warning: {warning}", file=sys.stderr)
    registered = {}
    for module in actions:
        registered.update(load_actions_module(module))
    llm = LocalClient(model) if model else None
    return Rails(cfg, llm=llm, actions=registered, load_actions=trust_actions)


def _rails(args, model=None):
    return load_rails(args.config, model, trust_actions=args.trust_actions, actions=tuple(args.actions),
                      strict=args.strict)


def _check(args) -> int:
    rails = _rails(args, args.model)
    decision = rails.check([{"role": "user", "content": t} for t in args.text])
    print(json.dumps(decision.to_dict(), indent=2, ensure_ascii=False))
    return 0


def _chat(args) -> int:
    rails = _rails(args, args.model)
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


def _calibrate(args) -> int:
    from .evaluate import calibrate, load_paraphrases

    rails = _rails(args)
    report = calibrate(rails, load_paraphrases(args.paraphrases))
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    print(f"{'threshold':>9}  {'accuracy':>8}  {'coverage':>8}  {'precision':>9}")
    for row in report["table"]:
        mark = "  <- suggested" if row["threshold"] == report["suggested_threshold"] else ""
        print(f"{row['threshold']:>9.2f}  {row['accuracy']:>8.3f}  {row['coverage']:>8.3f}  "
              f"{row['precision']:>9.3f}{mark}")
    print(f"configured threshold {report['current_threshold']}: accuracy {report['current_accuracy']:.3f} on "
          f"{report['total']} messages; suggested {report['suggested_threshold']} "
          f"(accuracy {report['suggested_accuracy']:.3f}): set "
          "rails.dialog.user_messages.embeddings_only_similarity_threshold")
    return 0
