"""Catalog of open LLMs and datasets: lineage, sizes, costs, and what their licenses allow.

Library entry points (each CLI verb under `openseason catalog` wraps one of these):
  Catalog(db)                           open a catalog file (built-in assets seeded on first use)
  can_use(name, commercial=True, db=)   {"verdict": "yes"|"no"|"unknown", "reasons": [...]}
  lineage(name, db=)                    upstream and downstream trees
  import_ecosystem_graphs / import_hf_card / import_llama_cult(path, db=)   import reports
  register_checkpoint(ckpt_dir, ...)    record a trained checkpoint with its lineage
  attach_evaluation(name, results)      attach evaluation results to an asset
"""
from __future__ import annotations

from .core import Catalog
from .store import default_db_path


def can_use(name: str, *, commercial: bool = True, db=None, source=None) -> dict:
    """May `name` be used commercially (or, with commercial=False, for research)? With reasons."""
    with Catalog(db) as cat:
        return cat.can_use(name, "commercial" if commercial else "research", source=source)


def lineage(name: str, *, depth: int = 20, db=None, source=None) -> dict:
    with Catalog(db) as cat:
        return cat.lineage(name, depth, source=source)


def import_ecosystem_graphs(path, *, db=None) -> dict:
    from .importers.ecosystem_graphs import import_ecosystem_graphs as run
    with Catalog(db) as cat:
        return run(cat, path)


def import_hf_card(path, *, name=None, db=None) -> dict:
    from .importers.hf_card import import_hf_card as run
    with Catalog(db) as cat:
        return run(cat, path, name=name)


def import_llama_cult(path, *, db=None) -> dict:
    from .importers.llama_cult import import_llama_cult as run
    with Catalog(db) as cat:
        return run(cat, path)


def register_checkpoint(ckpt_dir, *, base_model=None, datasets=(), method=None, hardware=None, seconds=None,
                        tokens=None, db=None, name=None, license=None) -> dict:
    """Register a trained checkpoint as an asset with its lineage so can-use works on it."""
    from .checkpoints import register_checkpoint as run
    with Catalog(db) as cat:
        return run(cat, ckpt_dir, base_model=base_model, datasets=datasets, method=method, hardware=hardware,
                   seconds=seconds, tokens=tokens, name=name, license=license)


def attach_evaluation(name: str, results: dict, *, db=None) -> dict:
    """Attach one evaluation (a JSON-able dict of metrics) to the asset called `name`."""
    from .checkpoints import attach_evaluation as run
    with Catalog(db) as cat:
        return run(cat, name, results)


__all__ = ["Catalog", "can_use", "lineage", "import_ecosystem_graphs", "import_hf_card", "import_llama_cult",
           "register_checkpoint", "attach_evaluation", "default_db_path"]
