"""openseason: build instruction-following language models from open parts, end to end."""
from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["LLM", "__version__"]


def __getattr__(name):
    # Keep `import openseason` light: the generation stack (torch, tokenizers) loads on first use.
    if name == "LLM":
        from .generation.llm import LLM

        return LLM
    raise AttributeError(f"module 'openseason' has no attribute {name!r}")
