"""Option dataclasses: one field per option (default, documentation, CLI group), the CLI flags built
from them, and the values the user passed. Every stage with options uses these (train, consistency,
vision), so none of them reaches into another stage for its flag machinery.
"""
from __future__ import annotations

import argparse
import dataclasses
import typing
from dataclasses import field
from typing import Any, Optional, Union


def option(default: Any, doc: str, *, group: str = "run", choices: Optional[tuple] = None) -> Any:
    """A dataclass field carrying its documentation (CLI help) and CLI group."""
    return field(default=default, metadata={"doc": doc, "group": group, "choices": choices})


def option_names(cls) -> tuple[str, ...]:
    return tuple(f.name for f in dataclasses.fields(cls))


def _scalar_type(hint) -> type:
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    return args[0] if typing.get_origin(hint) is Union and args else hint


def add_arguments(parser: argparse.ArgumentParser, cls) -> None:
    """One flag per field (`--max-steps` for max_steps), grouped, with the field's doc and default."""
    hints = typing.get_type_hints(cls)
    groups: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        group_name = f.metadata.get("group", "run")
        group = groups.get(group_name) or groups.setdefault(group_name, parser.add_argument_group(group_name))
        kind = _scalar_type(hints[f.name])
        doc = f.metadata.get("doc", "").replace("%", "%%")
        if f.default is not None and kind is not bool:
            doc += f" (default {f.default})"
        flag = "--" + f.name.replace("_", "-")
        if kind is bool and f.default is True:   # on by default: only --no-X can say anything
            group.add_argument(flag, action=argparse.BooleanOptionalAction, default=None, help=doc)
        elif kind is bool:
            group.add_argument(flag, action="store_true", default=None, help=doc)
        else:
            group.add_argument(flag, type=kind, choices=f.metadata.get("choices"), default=None, help=doc)


def given_options(args: argparse.Namespace, cls) -> dict[str, Any]:
    """The options the user passed on the command line (None = not given)."""
    return {name: getattr(args, name) for name in option_names(cls)}
