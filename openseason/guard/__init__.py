"""Guardrails from Colang 1.0 configs, decided by offline embeddings in milliseconds.

    from openseason.guard import RailsConfig, Rails
    rails = Rails(RailsConfig.from_path("my_rails"))          # embeddings only, no LLM
    rails.check("can I get a refund?").to_dict()              # intent, score, flow, rail that fired
    rails.generate(messages).text                             # the reply under the rails

See rails.py for the pipeline, colang.py for the language subset, rails_config.py for config.yml.
"""
from __future__ import annotations

from pathlib import Path

from .actions import action
from .colang import ColangSyntaxError, parse, parse_file
from ..generation.client import LocalClient, ScriptedClient, UnexpectedCall
from .rails import Decision, GenerateResult, Intent, Rails
from .rails_config import RailsConfig

EXAMPLES = Path(__file__).with_name("examples")

# The rails call their LLM through the one LLMClient protocol (openseason.generation.client); the
# in-process and scripted clients are re-exported here for convenience.
__all__ = ["action", "ColangSyntaxError", "Decision", "EXAMPLES", "GenerateResult", "Intent", "LocalClient", "Rails",
           "RailsConfig", "ScriptedClient", "UnexpectedCall", "example_config", "parse", "parse_file"]


def example_config(name: str) -> Path:
    """Path of a rails config shipped with openseason (e.g. "support")."""
    path = EXAMPLES / name
    if not path.is_dir():
        from ..errors import ConfigError

        raise ConfigError(f"no example rails config {name!r}",
                          hint=f"available: {sorted(p.name for p in EXAMPLES.iterdir() if p.is_dir())}")
    return path
