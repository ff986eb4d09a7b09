"""Prompt templates as data files (openseason/synth/templates) and the small text helpers stages share."""
from __future__ import annotations

import re
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Optional

from ..errors import ConfigError
from ..fileio import parse_yaml

TEMPLATE_DIR = Path(str(resources.files("openseason.synth") / "templates"))


@lru_cache(maxsize=None)
def _read(path: str) -> str:
    return Path(path).read_text(encoding="utf-8")


def load_template(name: str, directory: Optional[str | Path] = None) -> str:
    """A template by file name, from `directory` when given (user overrides) else the built-in ones."""
    path = Path(directory or TEMPLATE_DIR) / name
    if not path.is_file():
        raise ConfigError("template not found", where=str(path),
                          hint=f"the built-in templates are in {TEMPLATE_DIR}; copy one and edit it")
    return _read(str(path))


def load_yaml_template(name: str, directory: Optional[str | Path] = None) -> dict:
    path = Path(directory or TEMPLATE_DIR) / name
    return parse_yaml(load_template(name, directory), path, error=ConfigError)


def render(template: str, **values) -> str:
    """Replace {{name}} placeholders (single braces stay literal: prompts are full of code and JSON)."""
    def sub(match: re.Match) -> str:
        key = match.group(1)
        if key not in values:
            raise ConfigError(f"template placeholder {{{{{key}}}}} has no value", hint=f"known: {sorted(values)}")
        return str(values[key])

    return re.sub(r"\{\{(\w+)\}\}", sub, template)


def clean(text: str) -> str:
    """Collapse whitespace runs to one space and strip."""
    return re.sub(r"\s+", " ", text).strip()
