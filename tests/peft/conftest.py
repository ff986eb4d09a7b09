"""Fixtures for the PEFT tests: the released OpenFlamingo sources as a test-only peer."""
from __future__ import annotations

import importlib
import importlib.util
import sys
import types

import pytest


@pytest.fixture(scope="session")
def open_flamingo_src():
    """`open_flamingo.src` with its `helpers` and `flamingo_lm` modules imported.

    open_flamingo is installed with --no-deps; its package __init__ imports the model factory, which
    needs open_clip (not installed), so the two packages are registered as bare namespaces and only the
    modules we compare against are imported (they need torch, einops and einops-exts)."""
    spec = importlib.util.find_spec("open_flamingo")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("open_flamingo is a test-only peer: pip install --no-deps open_flamingo einops-exts")
    root = spec.submodule_search_locations[0]
    saved = {name: sys.modules.get(name) for name in ("open_flamingo", "open_flamingo.src")}
    for name, path in (("open_flamingo", root), ("open_flamingo.src", f"{root}/src")):
        if name not in sys.modules:
            package = types.ModuleType(name)
            package.__path__ = [path]
            sys.modules[name] = package
    src = types.SimpleNamespace(helpers=importlib.import_module("open_flamingo.src.helpers"),
                                flamingo_lm=importlib.import_module("open_flamingo.src.flamingo_lm"),
                                utils=importlib.import_module("open_flamingo.src.utils"))
    yield src
    for name, module in saved.items():
        if module is None:
            sys.modules.pop(name, None)
