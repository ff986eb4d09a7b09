"""The evolution tree as a timeline PNG: one row per family, assets placed by date, lineage arrows.

Families are the connected groups of base-model relations (a finetune sits in its base's family);
x is the creation date, marker size grows with parameter count, colour says the commercial
verdict (green yes, red no, grey unknown), so the 2023 wave and its licenses read at a glance.
"""
from __future__ import annotations

import datetime as _dt
from pathlib import Path

from .graph import Graph
from .schema import BASE_RELATIONS, Asset
from .verdict import can_use

COLORS = {"yes": "#2e7d32", "no": "#c62828", "unknown": "#9e9e9e"}


def _date(a: Asset):
    if not a.created_date:
        return None
    parts = [int(p) for p in a.created_date.split("-")]
    while len(parts) < 3:
        parts.append(1 if len(parts) else 1)
    return _dt.date(*parts[:3])


def _family(graph: Graph, a: Asset, seen=None) -> str:
    seen = seen or set()
    if a.family:
        return a.family
    for e in graph.edges(a):
        if e.target is not None and e.dep.relation in BASE_RELATIONS and e.target.id not in seen:
            seen.add(a.id)
            return _family(graph, e.target, seen)
    return a.name


def render_timeline(graph: Graph, assets, out_path, title: str = "Open LLM evolution") -> Path:
    """Write the timeline PNG of the dated models among `assets`; returns the path."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.dates as mdates

    models = [a for a in assets if a.type == "model" and _date(a) is not None]
    if not models:
        raise ValueError("no dated models to draw")
    families: dict[str, list[Asset]] = {}
    for a in models:
        families.setdefault(_family(graph, a), []).append(a)
    order = sorted(families, key=lambda f: min(_date(a) for a in families[f]))
    row = {f: i for i, f in enumerate(order)}
    pos = {}
    # A family's members fan out over its band (in date order) so labels of same-month releases do not collide.
    band = [max(1.0, 0.28 * len(families[f])) for f in order]
    base = {f: sum(band[:i]) + band[i] / 2 for i, f in enumerate(order)}
    fig, ax = plt.subplots(figsize=(15, max(4, 0.5 * sum(band) + 1.5)))
    for fam in order:
        members = sorted(families[fam], key=_date)
        for j, a in enumerate(members):
            x = mdates.date2num(_date(a))
            n = len(members)
            y = base[fam] + ((j / (n - 1) - 0.5) * (band[row[fam]] - 0.4) if n > 1 else 0)
            pos[a.id] = (x, y)
            verdict = can_use(graph, a)["verdict"]
            size = 30 + 12 * (max(a.params or 1e9, 1e8) / 1e9) ** 0.5
            ax.scatter([x], [y], s=size, color=COLORS[verdict], zorder=3, edgecolor="black", linewidth=0.4)
            ax.annotate(a.name, (x, y), xytext=(4, 3), textcoords="offset points", fontsize=7,
                        parse_math=False)  # imported names are text: "$x$" is not a formula
    for a in models:
        for e in graph.edges(a):
            if e.target is not None and e.target.id in pos and e.dep.relation in BASE_RELATIONS + ("component",):
                (x0, y0), (x1, y1) = pos[e.target.id], pos[a.id]
                ax.annotate("", xy=(x1, y1), xytext=(x0, y0),
                            arrowprops=dict(arrowstyle="->", color="#607d8b", lw=0.7, alpha=0.7))
    ax.set_yticks([base[f] for f in order])
    ax.set_yticklabels(order, fontsize=8, parse_math=False)
    ax.xaxis.set_major_formatter(mdates.DateFormatter("%Y-%m"))
    ax.grid(axis="x", alpha=0.3)
    for verdict, color in COLORS.items():
        ax.scatter([], [], color=color, label=f"commercial use: {verdict}")
    ax.legend(loc="upper left", fontsize=8)
    ax.set_title(title, parse_math=False)
    fig.tight_layout()
    out = Path(out_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    tmp.replace(out)
    return out
