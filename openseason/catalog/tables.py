"""The size-and-license table and the LLaMA-Cult chart as rows: for the page, CSV and Markdown.

One row per asset: parameters, context length, training tokens, the license that governs it, the
commercial-use verdict with the reason that decided it, finetuning method and data, hardware and
cost. Empty cells mean the sources do not say -- nothing is guessed. The "chart" view is the
LLaMA-Cult-and-More columns (project, base model, data, finetune, hardware/cost) for any asset that
has them, so the imported chart and the built-in catalog read side by side.
"""
from __future__ import annotations

import csv
import io
import re
from typing import Iterable, Optional

from .graph import Graph
from .schema import BASE_RELATIONS, Asset
from .verdict import can_use

TABLE_COLUMNS = ("name", "type", "organization", "date", "params", "context", "training_tokens", "license",
                 "commercial", "commercial_reason", "finetune_method", "data", "hardware", "cost", "source",
                 "conflicts")
CHART_COLUMNS = ("name", "base_model", "data", "finetune_method", "hardware", "cost", "commercial",
                 "commercial_reason", "source")
VIEWS = {"table": TABLE_COLUMNS, "chart": CHART_COLUMNS}

_CONTEXT = re.compile(r"(\d+(?:\.\d+)?)\s*([kK])?[- ]token context")


def fmt_count(p) -> str:
    """7e9 -> 7B, 1.4e12 -> 1.4T, None -> ''."""
    if not p:
        return ""
    for div, unit in ((1e12, "T"), (1e9, "B"), (1e6, "M"), (1e3, "K")):
        if p >= div:
            return f"{p / div:.3g}{unit}"
    return f"{p:.0f}"


def context_length(a: Asset) -> Optional[int]:
    """The context length in tokens, when the record states one (extra.context_length or '2048-token context')."""
    stated = a.extra.get("context_length") if isinstance(a.extra, dict) else None
    if isinstance(stated, (int, float)) and stated > 0:
        return int(stated)
    for text in (a.finetune_method, a.size, a.description, a.license_notes):
        m = _CONTEXT.search(text or "")
        if m:
            return int(float(m.group(1)) * (1000 if m.group(2) else 1))
    return None


def deciding_reason(result: dict) -> str:
    """The first reason that carries the verdict ([no] for no, [unknown] for unknown, the own license for yes)."""
    tag = f"[{result['verdict']}]"
    for line in result["reasons"]:
        if line.startswith(tag):
            return line[len(tag):].strip()
    return result["summary"]


def _base(graph: Graph, a: Asset) -> str:
    # the names as the source wrote them ("LLaMA-7B, LLaMA-13B" says more than "LLaMA" twice)
    return ", ".join(dict.fromkeys(e.dep.name for e in graph.edges(a) if e.dep.relation in BASE_RELATIONS))


def row(graph: Graph, a: Asset, conflicts: Optional[list] = None) -> dict:
    """Every column of both views for one asset, as display strings (numbers also raw, for sorting)."""
    verdict = can_use(graph, a, "commercial")
    data = a.finetune_data or ", ".join(e.dep.name for e in graph.edges(a) if e.dep.relation == "trained_on")
    return {
        "id": a.id, "name": a.name, "type": a.type, "organization": a.organization or "",
        "date": a.created_date or "", "params": fmt_count(a.params), "params_n": a.params,
        "context": str(context_length(a) or ""), "training_tokens": fmt_count(a.training_tokens or
                                                                            (a.tokens if a.type == "model" else None)),
        "training_tokens_n": a.training_tokens, "license": a.primary_license() or "",
        "commercial": verdict["verdict"], "commercial_reason": deciding_reason(verdict),
        "finetune_method": a.finetune_method or "", "data": data or "",
        "hardware": a.training_hardware or "", "cost": a.training_cost or "", "base_model": _base(graph, a),
        "source": a.source, "conflicts": ", ".join(sorted({c["field"] for c in conflicts or []})),
    }


def rows(graph: Graph, assets: Iterable[Asset], with_conflicts: bool = True) -> list[dict]:
    from .conflicts import conflicts_by_asset
    marks = conflicts_by_asset(graph) if with_conflicts else {}
    return [row(graph, a, marks.get(a.id)) for a in assets]


def to_csv(table: list[dict], columns=TABLE_COLUMNS) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(columns)
    for r in table:
        w.writerow([r.get(c, "") for c in columns])
    return buf.getvalue()


def _md_cell(value) -> str:
    # a pipe or a newline in imported text would break the Markdown table
    return str(value).replace("\\", "\\\\").replace("|", "\\|").replace("\r", " ").replace("\n", " ")


def to_markdown(table: list[dict], columns=TABLE_COLUMNS) -> str:
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for r in table:
        lines.append("| " + " | ".join(_md_cell(r.get(c, "")) for c in columns) + " |")
    return "\n".join(lines) + "\n"


def sort_rows(table: list[dict], key: str, descending: bool = False) -> list[dict]:
    """Numbers sort as numbers (params, training tokens); empty cells always last."""
    num = {"params": "params_n", "training_tokens": "training_tokens_n"}.get(key)
    if key == "context":
        pick = lambda r: int(r["context"]) if r["context"] else None
    elif num:
        pick = lambda r: r.get(num)
    else:
        pick = lambda r: (r.get(key) or "").lower() or None
    full = [r for r in table if pick(r) is not None]
    empty = [r for r in table if pick(r) is None]
    return sorted(full, key=pick, reverse=descending) + empty
