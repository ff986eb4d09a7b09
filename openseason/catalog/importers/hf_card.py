"""Import a Hugging Face model card (README.md with YAML front matter between `---` lines).

Read: license (+ license_name / license_link for `other`), base_model (one or several) with
base_model_relation (finetune | adapter | merge | quantized; inferred from tags/library when absent),
datasets, language, tags, pipeline_tag, library_name, model-index name. The asset's name is --name,
else the model-index name, else the card's first `# ` heading, else the folder name; all of these
become aliases so any of them finds it.
"""
from __future__ import annotations

import re
from pathlib import Path

from ...errors import DataError, where
from ...fileio import parse_yaml
from ..core import Catalog
from ..normalize import finish_asset
from ..licenses import normalize
from ..schema import Asset, Dependency, as_text
from .report import finish

SOURCE = "hf-card"


def parse_front_matter(path: Path) -> tuple[dict, str, int]:
    """(metadata, body, line where the body starts); DataError with file:line:col when malformed."""
    text = path.read_text(encoding="utf-8")
    lines = text.splitlines()
    if not lines or lines[0].strip() != "---":
        raise DataError("no YAML front matter (the card must start with a '---' line)", where=where(path, 1),
                        hint="model cards keep their metadata between two '---' lines at the top")
    try:
        end = next(i for i in range(1, len(lines)) if lines[i].strip() == "---")
    except StopIteration:
        raise DataError("front matter is not closed by a second '---' line", where=where(path, 1)) from None
    meta = parse_yaml("\n".join(lines[1:end]), path, line_offset=1, what="malformed YAML front matter") or {}
    if not isinstance(meta, dict):
        raise DataError("front matter is not a mapping", where=where(path, 2))
    return meta, "\n".join(lines[end + 1:]), end + 2


def _relation(meta: dict, n_bases: int) -> str:
    rel = str(meta.get("base_model_relation") or "").lower()
    if rel in ("finetune", "adapter", "merge", "quantized"):
        return rel
    tags = {str(t).lower() for t in (meta.get("tags") or [])}
    if str(meta.get("library_name", "")).lower() == "peft" or tags & {"lora", "peft", "adapter"}:
        return "adapter"
    if n_bases > 1 or tags & {"merge", "mergekit"}:
        return "merge"
    if tags & {"gguf", "gptq", "awq", "quantized", "4-bit", "8-bit"}:
        return "quantized"
    return "finetune"


def asset_from_card(path, name: str | None = None) -> tuple[Asset, list[dict]]:
    path = Path(path)
    if not path.is_file():
        raise DataError("file not found", where=str(path), hint="pass the model card README.md")
    meta, body, body_line = parse_front_matter(path)
    problems = []
    names = []
    if name:
        names.append(name)
    index = meta.get("model-index")
    if isinstance(index, list) and index and isinstance(index[0], dict) and index[0].get("name"):
        names.append(str(index[0]["name"]))
    if meta.get("model_name"):
        names.append(str(meta["model_name"]))
    for i, line in enumerate(body.splitlines()):
        m = re.match(r"^#\s+(.+?)\s*#*\s*$", line)
        if m:
            names.append(re.sub(r"[*`]", "", m.group(1)).strip())
            break
    names.append(path.resolve().parent.name)
    names = [n for n in dict.fromkeys(names) if n]
    asset = Asset(name=names[0], type="model", source=SOURCE, origin=str(path))
    asset.aliases = names[1:]
    bases = meta.get("base_model") or []
    bases = [bases] if isinstance(bases, str) else [str(b) for b in bases]
    relation = _relation(meta, len(bases))
    asset.dependencies = [Dependency(b, relation) for b in bases]
    if bases:
        asset.base_model, asset.base_relation = bases[0], relation
    datasets = meta.get("datasets") or []
    asset.datasets = [datasets] if isinstance(datasets, str) else [str(d) for d in datasets]
    raw_license = meta.get("license")
    if isinstance(raw_license, list):
        raw_license = raw_license[0] if raw_license else None
    if raw_license is None:
        problems.append({"where": str(path), "asset": asset.name, "problem": "card states no license"})
    asset.license = as_text(raw_license)
    lid = normalize(raw_license) if raw_license is not None else "unknown"
    if lid == "other" and meta.get("license_name"):
        named = normalize(meta["license_name"])
        lid = named if named not in ("unknown",) else "other"
        asset.license = f"{raw_license}: {meta['license_name']}"
    asset.weights_license = lid
    asset.access = "open"
    asset.modality = as_text(meta.get("pipeline_tag"))
    asset.hub_id = next((n for n in names if re.fullmatch(r"[\w.-]+/[\w.-]+", n)), None)
    known = {"license", "license_name", "base_model", "base_model_relation", "datasets", "model-index", "model_name"}
    asset.extra = {k: v for k, v in meta.items() if k not in known}
    asset.extra["card_body_line"] = body_line
    return finish_asset(asset), problems


def import_hf_card(cat: Catalog, path, name: str | None = None) -> dict:
    asset, problems = asset_from_card(path, name)
    report = {"source": SOURCE, "path": str(Path(path).resolve()), "name": asset.name, "problems": problems}
    return finish(cat, SOURCE, str(Path(path).resolve()), [asset], report)
