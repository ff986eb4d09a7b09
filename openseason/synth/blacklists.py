"""Keyword blacklists for generated instructions: tasks a text-only model cannot do.

`paper` is the Self-Instruct list (arXiv 2212.10560, bootstrap step); `alpaca` is Stanford Alpaca's
longer list. A keyword matches as a whole word or phrase, case-insensitively.
"""
from __future__ import annotations

import re
from pathlib import Path

from ..errors import ConfigError

PRESETS: dict[str, tuple[str, ...]] = {
    "paper": ("image", "images", "graph", "graphs", "picture", "pictures", "file", "files", "map", "maps",
              "draw", "plot", "go to"),
    "alpaca": ("image", "images", "graph", "graphs", "picture", "pictures", "file", "files", "map", "maps",
               "draw", "plot", "go to", "video", "audio", "music", "flowchart", "diagram"),
    "none": (),
}


def resolve(spec) -> tuple[str, ...]:
    """A preset name, a path to a file with one keyword per line, or a list of keywords."""
    if spec is None:
        return PRESETS["paper"]
    if isinstance(spec, (list, tuple)):
        return tuple(str(s) for s in spec)
    if spec in PRESETS:
        return PRESETS[spec]
    path = Path(spec)
    if path.is_file():
        return tuple(line.strip() for line in path.read_text(encoding="utf-8").splitlines()
                     if line.strip() and not line.startswith("#"))
    raise ConfigError(f"unknown blacklist {spec!r}", hint=f"use one of {sorted(PRESETS)} or a file with one keyword per line")


def compile_blacklist(words) -> list[tuple[str, re.Pattern]]:
    return [(w, re.compile(rf"\b{re.escape(w)}\b", re.IGNORECASE)) for w in words]
