"""`openseason serve --rails DIR`: guardrails around the served model.

The rails decide in front of the model and after it:

* before: input rails on every user turn of the window, then the dialog flows. A blocked turn or a
  flow's predefined bot message is the answer, and the model is never asked; otherwise the model
  writes the reply as usual.
* after: output rails (e.g. self check output) read the finished reply and may replace it; streamed
  answers are then held back until they have been checked.

LLM calls the rails themselves make (self check input/output, intent canonicalization) go to the
served model through the same continuous-batching engine as every other request.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional

from ..errors import OpenseasonError
from .app import Hooks
from ..generation.client import LocalClient


def rails_hooks(rails_dir: str | Path, engine=None, rails=None) -> Hooks:
    """Hooks that run the rails configured in `rails_dir` around the served model (`engine`)."""
    from ..guard import Rails, RailsConfig

    rails_dir = Path(rails_dir)
    if rails is None:
        if not rails_dir.is_dir():
            raise OpenseasonError("rails directory not found", where=str(rails_dir),
                                  hint="pass a folder with config.yml and .co files")
        rails = Rails(RailsConfig.from_path(rails_dir), llm=LocalClient(engine) if engine is not None else None)

    def check_input(messages: list[dict]) -> Optional[str]:
        decision = rails.check(messages)
        if decision.blocked:
            return decision.reply or ""
        if decision.rail == "dialog" and decision.reply:
            return decision.reply        # a flow's predefined message answers; the model is not asked
        return None

    def check_output(messages: list[dict], text: str) -> Optional[str]:
        if not rails.config.output_flows:
            return None
        decision = rails.check_output(messages, text)
        return decision.reply if decision.blocked else None

    return Hooks(check_input=check_input,
                 check_output=check_output if rails.config.output_flows else None)
