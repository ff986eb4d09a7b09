"""The evolution tree (`catalog tree --out tree.svg`): families as branches over time.

Each family is a lane; a derivative hangs off its base with an elbow (base -> down -> along to its
date), other model dependencies are dotted. Colour says what you can get: open weights you may use
commercially, weights under a restricted license, API-only / closed (no weights), unknown terms.
SVG, PNG or PDF by the file name. The full Ecosystem Graphs import is paged by family (or by year)
where one drawing would not be readable; `family=` draws one family with its derivatives.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional

from .evolution import Style, family_of, render
from .graph import Graph
from .schema import Asset
from .verdict import can_use

CATEGORIES = {
    "open": ("open weights, commercial use allowed", "#2e7d32"),
    "restricted": ("weights under a restricted license", "#ef6c00"),
    "api": ("API-only or closed (no weights)", "#6a1b9a"),
    "unknown": ("terms unknown", "#9e9e9e"),
}


def category(graph: Graph, a: Asset) -> str:
    """open | restricted | api | unknown (see CATEGORIES)."""
    if a.access in ("closed", "limited") and a.weights_license in (None, "none", "unknown") \
            or a.weights_license == "none":
        return "api"
    verdict = can_use(graph, a)["verdict"]
    return {"yes": "open", "no": "restricted"}.get(verdict, "unknown")


def render_tree(graph: Graph, assets, out_path, *, family: Optional[str] = None, page_by: Optional[str] = None,
                max_rows: int = 70, title: str = "Evolution tree of language models") -> dict:
    """Write the evolution tree of the dated models among `assets` (one `family` if given)."""
    assets = list(assets)
    if family is not None:
        from .schema import name_key
        assets = [a for a in assets if a.type == "model" and name_key(family_of(graph, a)) == name_key(family)]
        if not assets:
            raise ValueError(f"no models in a family named {family!r}")
        title = f"{title}: {family}"
    memo: dict[int, str] = {}

    def color(a):
        if a.id not in memo:
            memo[a.id] = category(graph, a)
        return CATEGORIES[memo[a.id]][1]

    style = Style(color, list(CATEGORIES.values()), connectors="elbows")
    return render(graph, assets, Path(out_path), style, title=title, page_by=page_by, max_rows=max_rows)
