"""Import the LLaMA-Cult-and-More "Model Spec" table (chart.md): project, base model, data, finetune, hardware/cost.

Every table row becomes an asset (duplicated project names are kept and reported; short rows are
kept and reported). Base models like "LLaMA-7B/13B" expand to LLaMA-7B and LLaMA-13B; a base cell
that is only a size ("2.7B") is read as the size. The free-text data cell is kept and the datasets
and hosted generators it names (matched against the catalog's names and aliases, longest first)
become dependencies, so can-use sees "generated using text-davinci-003".
"""
from __future__ import annotations

import re
from pathlib import Path

from ...errors import DataError, where
from ..core import Catalog
from ..normalize import finish_asset
from ..schema import Asset, Dependency, parse_params
from .report import finish

SOURCE = "llama-cult"
_LINK = re.compile(r"\[([^\]]*)\]\(([^)]*)\)")


def _cells(line: str) -> list[str]:
    line = line.strip()
    if line.startswith("|"):
        line = line[1:]
    if line.endswith("|"):
        line = line[:-1]
    return [c.strip() for c in line.split("|")]


def _plain(text: str) -> str:
    return re.sub(r"\*\*|`", "", _LINK.sub(lambda m: m.group(1), text)).strip()


def split_bases(cell: str) -> tuple[list[str], str | None]:
    """("LLaMA-7B/13B") -> (["LLaMA-7B", "LLaMA-13B"], None); ("2.7B") -> ([], "2.7B")."""
    text = _plain(cell)
    if not text:
        return [], None
    if re.fullmatch(r"\d+(\.\d+)?\s*[BbMm]", text):
        return [], text
    parts = [p.strip() for p in text.split("/") if p.strip()]
    out = [parts[0]]
    prefix = parts[0].rsplit("-", 1)[0] + "-" if "-" in parts[0] else ""
    for p in parts[1:]:
        out.append(p if ("-" in p and not re.match(r"^\d", p)) or not prefix else prefix + p)
    return out, None


def _mention_patterns(cat: Catalog) -> list[tuple[re.Pattern, object]]:
    pats = []
    for a in cat.graph.assets:
        if a.source == SOURCE:
            continue
        wanted = a.type == "dataset" or (a.type == "model" and a.output_terms)
        if not wanted:
            continue
        for n in [a.name, *a.aliases]:
            tokens = re.findall(r"[A-Za-z0-9.]+", n)
            if not tokens or len("".join(tokens)) < 4:
                continue
            rx = r"(?<![A-Za-z0-9])" + r"[\s\-_/]*".join(re.escape(t) for t in tokens) + r"(?![A-Za-z0-9])"
            pats.append((len("".join(tokens)), re.compile(rx, re.IGNORECASE), a))
    pats.sort(key=lambda x: -x[0])
    return [(p, a) for _, p, a in pats]


def link_mentions(text: str, patterns) -> list[tuple[str, str]]:
    """[(asset name, relation)] for datasets and hosted generators named in free text, longest match first."""
    found = []
    masked = text
    for pat, asset in patterns:
        m = pat.search(masked)
        # "in self-instruct style" names a method, not the dataset
        while m and re.match(r"[\s\-]*(style|way|manner)\b", masked[m.end():], re.I):
            m = pat.search(masked, m.end())
        if not m:
            continue
        masked = masked[:m.start()] + " " * (m.end() - m.start()) + masked[m.end():]
        rel = "trained_on" if asset.type == "dataset" else "distilled_from"
        if (asset.name, rel) not in found:
            found.append((asset.name, rel))
    return found


def import_llama_cult(cat: Catalog, path) -> dict:
    path = Path(path).resolve()
    if not path.is_file():
        raise DataError("file not found", where=str(path), hint="pass LLaMA-Cult-and-More's chart.md")
    lines = path.read_text(encoding="utf-8").splitlines()
    header = next((i for i, l in enumerate(lines)
                   if l.strip().startswith("|") and "base model" in l.lower() and "project" in l.lower()), None)
    if header is None:
        raise DataError("no Model Spec table (a '|project|base model|data|finetune|hardware/Cost|' header)",
                        where=str(path), hint="is this the LLaMA-Cult-and-More chart.md?")
    columns = [c.lower() for c in _cells(lines[header])]
    patterns = _mention_patterns(cat)
    assets, problems = [], []
    i = header + 1
    if i < len(lines) and re.fullmatch(r"[\s|:\-]+", lines[i]):
        i += 1
    while i < len(lines) and lines[i].strip().startswith("|"):
        lineno = i + 1
        loc = where(path.name, lineno)
        cells = _cells(lines[i])
        i += 1
        if len(cells) < len(columns):
            problems.append({"where": loc, "asset": _plain(cells[0]) if cells else None,
                             "problem": f"row has {len(cells)} of {len(columns)} cells; missing ones read as empty"})
            cells += [""] * (len(columns) - len(cells))
        row = dict(zip(columns, cells))
        project = row.get("project", "")
        link = _LINK.search(project)
        title = _plain(project)
        org, _, short = title.partition("/") if "/" in title else ("", "", title)
        asset = Asset(name=title or f"<row {lineno}>", source=SOURCE, origin=loc,
                      organization=org.strip() or None, url=link.group(2) if link else None)
        if short.strip() and short.strip() != title:
            asset.aliases = [short.strip()]
        bases, size = split_bases(row.get("base model", ""))
        finetune = _plain(row.get("finetune", ""))
        relation = "adapter" if re.search(r"lora|peft|adapt", finetune, re.I) else "finetune"
        asset.dependencies = [Dependency(b, relation) for b in bases]
        if bases:
            asset.base_model, asset.base_relation = bases[0], relation
            asset.params = max((parse_params(b) or 0 for b in bases), default=0) or None
        if size:
            asset.size, asset.params = size, parse_params(size)
        data = _plain(row.get("data", ""))
        asset.finetune_data = data or None
        for dep_name, rel in link_mentions(data, patterns):
            asset.dependencies.append(Dependency(dep_name, rel, note="named in the data column"))
        asset.finetune_method = finetune or None
        hw = _plain(row.get("hardware/cost", ""))
        asset.training_hardware = hw or None
        asset.training_cost = hw if "$" in hw else None
        asset.type = "model" if (bases or data or size) else "application"
        extra_cols = {k: v for k, v in row.items() if k not in ("project", "base model", "data", "finetune", "hardware/cost")}
        asset.extra.update(extra_cols)
        assets.append(finish_asset(asset))
    report = {"source": SOURCE, "path": str(path), "rows": len(assets), "problems": problems,
              "ignored": "only the Model Spec table is imported; the prose lists above and below it are not assets"}
    return finish(cat, SOURCE, str(path), assets, report)
