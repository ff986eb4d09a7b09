"""The catalog knows your own models: register a trained checkpoint, attach evaluations.

`register_checkpoint` is called by the training stages at the end of every run (the catalog never
imports openseason.train; the caller passes what it knows). It reads the checkpoint's run card when
present for anything not passed, and records base model, datasets, method, hardware, measured
time and tokens as an asset of source "checkpoint", so `can-use` answers for what you trained.
Registering the same directory again replaces its record.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Iterable, Optional

from ..errors import CheckpointError, OpenseasonError
from .core import Catalog
from .normalize import finish_asset
from .schema import Asset, Dependency
from . import licenses as lic

SOURCE = "checkpoint"


def _run_card(ckpt: Path) -> dict:
    card = ckpt / "run_card.json"
    if not card.is_file():
        return {}
    try:
        return json.loads(card.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"run_card.json is not valid JSON: {exc.msg}", where=f"{card}:{exc.lineno}") from None


def register_checkpoint(cat: Catalog, ckpt_dir, *, base_model: Optional[str] = None, datasets: Iterable[str] = (),
                        method: Optional[str] = None, hardware: Optional[str] = None, seconds: Optional[float] = None,
                        tokens: Optional[float] = None, name: Optional[str] = None,
                        license: Optional[str] = None) -> dict:
    """Record `ckpt_dir` as a model asset with its lineage; returns {"name", "id", "can_use"}."""
    ckpt = Path(ckpt_dir).resolve()
    if not ckpt.is_dir():
        raise CheckpointError("checkpoint directory not found", where=str(ckpt))
    card = _run_card(ckpt)
    lineage = card.get("lineage") if isinstance(card.get("lineage"), dict) else {}
    base_model = base_model or lineage.get("base_model") or card.get("base_model")
    datasets = list(datasets) or list(lineage.get("datasets") or card.get("datasets") or [])
    method = method or card.get("method")
    asset = Asset(name=name or ckpt.name, type="model", source=SOURCE, origin=str(ckpt), access="open")
    asset.aliases = [str(ckpt)]
    asset.organization = "local"
    asset.finetune_method = method
    asset.training_hardware = hardware
    asset.training_time = f"{seconds:.1f} s" if seconds is not None else None
    if seconds is not None:
        asset.extra["training_seconds"] = float(seconds)
    asset.training_tokens = float(tokens) if tokens is not None else None
    asset.created_date = (card.get("created") or "")[:10] or None
    asset.url = ckpt.as_uri()
    # Weights you trained are yours: with no license chosen, the own-terms slot is "own" (no
    # restriction of its own) and the verdict comes from what the weights were made from.
    asset.weights_license = lic.normalize(license) if license else "own"
    asset.license = license
    relation = "adapter" if method and any(w in method.lower() for w in ("lora", "adapter", "peft")) else "finetune"
    if base_model:
        asset.base_model, asset.base_relation = str(base_model), relation
    for ds in datasets:
        asset.dependencies.append(Dependency(str(ds), "trained_on"))
    if base_model is None and not datasets:
        asset.license_notes = "registered without a base model or datasets: lineage unknown"
    asset = finish_asset(asset)
    cat.store.replace_collection(SOURCE, str(ckpt), [asset])
    cat.changed()
    stored = cat.find(asset.name, source=SOURCE)
    _note_in_run_card(ckpt, asset.name, cat)
    return {"name": asset.name, "id": stored.id if stored else None,
            "can_use": cat.can_use(asset.name, "commercial", source=SOURCE)}


def _note_in_run_card(ckpt: Path, name: str, cat: Catalog) -> None:
    """Remember where the checkpoint is registered, so evaluations can be attached to it later."""
    from ..checkpoint import update_run_card

    update_run_card(ckpt, catalog={"name": name, "db": str(cat.store.path)})


def attach_evaluation(cat: Catalog, name: str, results: dict) -> dict:
    """Attach one evaluation to the asset `name` (results: JSON-able dict, e.g. {"task": ..., "score": ...})."""
    if not isinstance(results, dict):
        raise OpenseasonError("evaluation results must be a dict of metrics", hint='e.g. {"perplexity": 12.3}')
    asset = cat.get(name)
    cat.store.add_evaluation(asset.id, results)
    cat.changed()
    return {"name": asset.name, "evaluations": len(cat.get(name).evaluations)}
