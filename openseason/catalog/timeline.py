"""The timeline PNG: one lane per family, models placed by date, lineage arrows, verdict colours.

Colour says the commercial verdict (green yes, red no, grey unknown); the layout (dense date range
with earlier models in a marked gutter, non-overlapping labels, paging) is evolution.py's.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional

from .evolution import Style, render
from .graph import Graph
from .verdict import can_use

COLORS = {"yes": "#2e7d32", "no": "#c62828", "unknown": "#9e9e9e"}


def render_timeline(graph: Graph, assets, out_path, title: str = "Open LLM evolution",
                    page_by: Optional[str] = None, max_rows: int = 70) -> dict:
    """Write the timeline of the dated models among `assets`; returns {"paths": [...], "pages": [...]}."""
    memo: dict[int, str] = {}

    def color(a):
        if a.id not in memo:
            memo[a.id] = can_use(graph, a)["verdict"]
        return COLORS[memo[a.id]]

    style = Style(color, [(f"commercial use: {v}", c) for v, c in COLORS.items()], connectors="arrows")
    return render(graph, assets, Path(out_path), style, title=title, page_by=page_by, max_rows=max_rows)
