"""`openseason serve --rails DIR`: guardrails around the served model, on every endpoint.

The rails decide in front of the model and after it:

* before: input rails on every message the model will see, then the dialog flows. A blocked current
  turn or a flow's predefined bot message is the answer, and the model is never asked; otherwise
  the model writes the reply as usual. An EARLIER message an input rail flagged does not refuse the
  turns after it: it is removed from the conversation before the model sees it (`check_input`
  deletes it from the list it is given, in place; `input_verdict` returns the indices too).
* after: output rails (e.g. self check output, or a `bot ...` flow) read the finished reply and may
  replace it; streamed answers are then held back until they have been checked.
* /v1/completions: `check_prompt(prompt)` runs the input rails on the raw prompt (as one user
  message) and `check_completion(prompt, text)` the output rails; `completions_disabled` is true when
  config.yml says `rails: {completions: disabled}`, and the app answers 403 then.

LLM calls the rails themselves make (self check input/output, intent canonicalization) go to the
served model through the same continuous-batching engine as every other request.
"""
from __future__ import annotations

import sys
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

from ..errors import OpenseasonError
from .app import Hooks
from ..generation.client import LocalClient


@dataclass
class InputVerdict:
    reply: Optional[str]          # None: go on and generate; else the text to return instead
    drop: list[int] = field(default_factory=list)  # indices of messages to remove before the model sees them


@dataclass
class RailsHooks(Hooks):
    """Hooks plus what the rails add for the other endpoints (the app reads them when present)."""

    input_verdict: Optional[Callable[[list[dict]], InputVerdict]] = None
    check_prompt: Optional[Callable[[str], Optional[str]]] = None
    check_completion: Optional[Callable[[str, str], Optional[str]]] = None
    completions_disabled: bool = False
    completions_disabled_message: str = ("/v1/completions is disabled by this server's rails configuration; "
                                         "use /v1/chat/completions")


def resolve_rails_dir(rails_dir: str | Path) -> Path:
    """A rails folder, or the name of an example shipped with openseason (as `guard check` accepts)."""
    path = Path(rails_dir)
    if path.is_dir():
        return path
    if not path.exists() and "/" not in str(rails_dir) and "\\" not in str(rails_dir):
        from ..guard import EXAMPLES

        if (EXAMPLES / str(rails_dir)).is_dir():
            return EXAMPLES / str(rails_dir)
    from ..guard import EXAMPLES

    names = sorted(p.name for p in EXAMPLES.iterdir() if p.is_dir())
    raise OpenseasonError("rails directory not found, and no shipped example of that name", where=str(rails_dir),
                          hint=f"pass a folder with config.yml and *.co files, or an example: {', '.join(names)}")


def rails_hooks(rails_dir: str | Path, engine=None, rails=None, *, trust_actions: bool = False,
                strict: bool = False) -> RailsHooks:
    """Hooks that run the rails configured in `rails_dir` (a folder or a shipped example name such as
    `support`) around the served model (`engine`). `trust_actions` loads the folder's actions.py
    (its code runs); `strict` makes unknown config.yml keys errors. Problems surface here, at start-up,
    not on the first request."""
    from ..guard import Rails, RailsConfig
    from ..guard.rails_config import UnknownKeyWarning

    if rails is None:
        path = resolve_rails_dir(rails_dir)
        with warnings.catch_warnings():  # printed below, once
            warnings.simplefilter("ignore", UnknownKeyWarning)
            cfg = RailsConfig.from_path(path, strict=strict)
        for warning in cfg.unknown_keys:
            print(f"openseason: warning: {warning}", file=sys.stderr)
        rails = Rails(cfg, llm=LocalClient(engine) if engine is not None else None, load_actions=trust_actions)
    rails.validate()

    def input_verdict(messages: list[dict]) -> InputVerdict:
        decision = rails.check(messages)
        if decision.blocked:
            return InputVerdict(decision.reply or "", decision.dropped)
        if decision.rail == "dialog" and decision.reply:
            # a flow's predefined message answers; the model is not asked
            return InputVerdict(decision.reply, decision.dropped)
        return InputVerdict(None, decision.dropped)

    def check_input(messages: list[dict]) -> Optional[str]:
        verdict = input_verdict(messages)
        # Flagged earlier messages must not reach the model: the app encodes this same list after
        # the hook returns, so removing them here keeps them out of the prompt (and of check_output).
        for i in sorted(verdict.drop, reverse=True):
            del messages[i]
        return verdict.reply

    def check_output(messages: list[dict], text: str) -> Optional[str]:
        decision = rails.check_output(messages, text)
        return decision.reply if decision.blocked else None

    def check_prompt(prompt: str) -> Optional[str]:
        # a raw prompt is one user message to the rails: input rails, then a flow may answer it
        return input_verdict([{"role": "user", "content": prompt}]).reply

    def check_completion(prompt: str, text: str) -> Optional[str]:
        return check_output([{"role": "user", "content": prompt}], text)

    has_output = rails.has_output_rails
    return RailsHooks(check_input=check_input, check_output=check_output if has_output else None,
                      input_verdict=input_verdict, check_prompt=check_prompt,
                      check_completion=check_completion if has_output else None,
                      completions_disabled=rails.config.completions_disabled)
