"""Python actions for `execute <name>`: NeMo Guardrails' `@action` decorator and the config folder's
`actions.py` / `actions/` package, loaded only when the user opts in.

    from openseason.guard import action            # or, in a NeMo config: from nemoguardrails.actions import action

    @action(name="check_blocked_terms", is_system_action=True)
    async def check_blocked_terms(context: dict = None):
        return "proprietary" not in context.get("bot_message", "")

A config folder's Python code is code from the config: it runs only with `Rails(..., load_actions=True)`
or `--trust-actions` on `guard check/chat` (DESIGN: nothing from a config is executed unless the user
says so). While it is imported, a small shim stands in for `nemoguardrails` and
`nemoguardrails.actions` in `sys.modules` (only when the real package is not installed), so the NeMo
import line works; the shim is removed again after the import. `load_actions_module("pkg.mod")`
registers the `@action` functions of an importable module (`--actions pkg.mod` on the CLI).
"""
from __future__ import annotations

import asyncio
import importlib
import importlib.util
import inspect
import sys
import threading
import types
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Optional

from ..errors import ConfigError


def action(fn: Optional[Callable] = None, *, name: Optional[str] = None, is_system_action: bool = False,
           execute_async: bool = False, output_mapping: Optional[Callable] = None):
    """Mark `fn` as an action named `name` (default: the function's name), as NeMo's decorator does.
    Usable bare (`@action`) or called (`@action(name=...)`)."""
    def mark(f: Callable) -> Callable:
        f.action_meta = {"name": name or f.__name__, "is_system_action": is_system_action,
                         "execute_async": execute_async, "output_mapping": output_mapping}
        return f

    return mark(fn) if fn is not None else mark


class ActionResult:
    """NeMo's ActionResult (return_value, events, context_updates), for configs that import it."""

    def __init__(self, return_value: Any = None, events: Optional[list] = None,
                 context_updates: Optional[dict] = None):
        self.return_value, self.events, self.context_updates = return_value, events or [], context_updates or {}


_SHIM_LOCK = threading.Lock()


@contextmanager
def nemo_shim():
    """`nemoguardrails.actions.action` importable while a config's actions load (if NeMo is absent)."""
    with _SHIM_LOCK:
        added = []
        if "nemoguardrails" not in sys.modules and importlib.util.find_spec("nemoguardrails") is None:
            root = types.ModuleType("nemoguardrails")
            root.__path__ = []  # a package, so `nemoguardrails.actions` imports
            acts = types.ModuleType("nemoguardrails.actions")
            acts.action, acts.ActionResult = action, ActionResult
            acts.__path__ = []
            acts_acts = types.ModuleType("nemoguardrails.actions.actions")
            acts_acts.action, acts_acts.ActionResult = action, ActionResult
            root.actions = acts
            acts.actions = acts_acts
            for mod in (root, acts, acts_acts):
                sys.modules[mod.__name__] = mod
                added.append(mod.__name__)
        try:
            yield
        finally:
            for name in added:
                sys.modules.pop(name, None)


def _collect(module) -> dict[str, Callable]:
    found = {}
    for _name, obj in vars(module).items():
        meta = getattr(obj, "action_meta", None)
        if callable(obj) and isinstance(meta, dict):
            found[meta["name"]] = obj
    return found


def load_config_actions(folder: str | Path) -> dict[str, Callable]:
    """The `@action` functions of `folder/actions.py` and of the package `folder/actions/`. Runs the
    config's code: call it only when the user has opted in."""
    folder = Path(folder)
    found: dict[str, Callable] = {}
    candidates = [folder / "actions.py", folder / "actions" / "__init__.py"]
    for i, file in enumerate(candidates):
        if not file.is_file():
            continue
        name = f"_openseason_rails_actions_{abs(hash(str(file.resolve())))}_{i}"
        kwargs = {"submodule_search_locations": [str(file.parent)]} if file.name == "__init__.py" else {}
        spec = importlib.util.spec_from_file_location(name, file, **kwargs)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module  # a package's own relative imports need it there
        try:
            with nemo_shim():
                spec.loader.exec_module(module)
                if kwargs:  # the package's submodules hold the actions too
                    for sub in sorted(file.parent.glob("*.py")):
                        if sub.name != "__init__.py":
                            found.update(_collect(importlib.import_module(f"{name}.{sub.stem}")))
        except ConfigError:
            raise
        except Exception as exc:
            raise ConfigError(f"loading the config's actions failed: {type(exc).__name__}: {exc}",
                              where=str(file)) from exc
        found.update(_collect(module))
    return found


def load_actions_module(module_path: str) -> dict[str, Callable]:
    """The `@action` functions of an importable module (`my_pkg.my_actions`)."""
    try:
        with nemo_shim():
            module = importlib.import_module(module_path)
    except ImportError as exc:
        raise ConfigError(f"cannot import actions module {module_path!r}: {exc}",
                          hint="pass a dotted module path importable from the current directory or PYTHONPATH") from None
    found = _collect(module)
    if not found:
        raise ConfigError(f"module {module_path!r} has no @action functions",
                          hint="decorate them with `from openseason.guard import action` (or NeMo's) `@action()`")
    return found


def call_action(fn: Callable, args: dict) -> Any:
    """Call an action, awaiting it when it is `async def` (NeMo's actions usually are); an
    ActionResult gives its return_value."""
    result = fn(**args)
    if inspect.isawaitable(result):
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            result = asyncio.run(_await(result))
        else:  # called from inside an event loop: run the coroutine on a loop of its own
            box: dict = {}
            t = threading.Thread(target=lambda: box.setdefault("r", asyncio.run(_await(result))))
            t.start()
            t.join()
            result = box["r"]
    if isinstance(result, ActionResult) or type(result).__name__ == "ActionResult":
        result = getattr(result, "return_value", None)
    return result


async def _await(awaitable):
    return await awaitable
