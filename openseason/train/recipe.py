"""Recipes: YAML files of options (the fields of a train.options dataclass; see recipes/ at the
repository root).

Unknown keys are errors with file:line:col, so a typo never silently falls back to a default.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from ..errors import ConfigError
from .options import option_names


def load_recipe(path: str | Path, options_class) -> dict[str, Any]:
    """The option: value mapping of a recipe file; `options_class` (e.g. FinetuneOptions) names the
    valid keys. A bare file name is also looked up among the bundled recipes. Parsed with
    `fileio.parse_yaml` (safe semantics; YAML aliases are refused with file:line:col)."""
    from ..fileio import parse_yaml

    path = Path(path)
    if not path.exists():
        bundled = Path(__file__).resolve().parents[2] / "recipes" / path.name
        if path.parent == Path(".") and bundled.exists():
            path = bundled
        else:
            raise ConfigError("recipe file not found", where=str(path),
                              hint="see recipes/*.yaml in the repository for examples")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"not UTF-8 text ({exc.reason} at byte {exc.start})", where=str(path)) from None
    node, data = parse_yaml(text, path, error=ConfigError, with_node=True, what="malformed YAML")
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError("a recipe must be a mapping of option: value", where=f"{path}:1:1")
    allowed = set(option_names(options_class))
    for key_node, _ in node.value:
        key = str(key_node.value).replace("-", "_")
        if key not in allowed:
            mark = key_node.start_mark
            raise ConfigError(f"unknown recipe option {key_node.value!r}",
                              where=f"{path}:{mark.line + 1}:{mark.column + 1}",
                              hint=f"valid options: {', '.join(sorted(allowed))}")
    return {str(k).replace("-", "_"): v for k, v in data.items()}
