"""Views of the catalog: a rich terminal table, JSON, Mermaid and DOT graph exports, lineage trees.

The graph exports draw one node per asset (shape by type) and one edge per resolved dependency,
labelled with its relation; dangling dependency names get a dashed node so nothing disappears.
"""
from __future__ import annotations

import json
import re
from typing import Iterable

from .graph import Graph
from .schema import Asset
from .tables import fmt_count


def esc(value) -> str:
    """Text from imported data, made safe to put into rich markup (a name like `[/red]` is not a tag)."""
    from rich.markup import escape
    return escape(str(value))


def table(assets: Iterable[Asset], title: str = "catalog"):
    """A rich Table of the assets (name, type, organization, date, size, access, licenses, source)."""
    from rich.table import Table
    t = Table(title=esc(title), show_lines=False)
    for col in ("name", "type", "organization", "date", "params", "access", "weights", "data", "code", "source"):
        t.add_column(col, overflow="fold")
    for a in assets:
        t.add_row(*(esc(v) for v in (a.name, a.type, a.organization or "", a.created_date or "",
                                     fmt_count(a.params), a.access, a.weights_license or "",
                                     a.data_license or "", a.code_license or "", a.source)))
    return t


def asset_json(a: Asset) -> dict:
    return a.to_dict()


def to_json(assets: Iterable[Asset]) -> str:
    return json.dumps([asset_json(a) for a in assets], indent=2, ensure_ascii=False)


def _node_id(a_or_name) -> str:
    text = a_or_name if isinstance(a_or_name, str) else f"{a_or_name.source}:{a_or_name.name}:{a_or_name.id}"
    return "n" + re.sub(r"[^0-9A-Za-z]", "_", text)


def _edges(graph: Graph, assets: list[Asset], dangling_for=None):
    ids = {a.id for a in assets}
    for a in assets:
        for e in graph.edges(a):
            if e.target is None:
                if dangling_for is None or a.id in dangling_for:
                    yield a, None, e.dep
            elif e.target.id in ids:
                yield a, e.target, e.dep


def to_mermaid(graph: Graph, assets: Iterable[Asset], dangling_for=None) -> str:
    """A Mermaid flowchart (arrows point from an asset to what it is built on).

    `dangling_for`: ids whose dependencies outside the catalog are drawn (default all); a lineage
    cut at some depth passes the assets it expanded, so the edge of the cut stays clean."""
    assets = list(assets)
    shapes = {"model": ("[", "]"), "dataset": ("[(", ")]"), "application": ("([", "])")}
    lines = ["flowchart LR"]
    esc = lambda s: s.replace('"', "#quot;")
    for a in assets:
        lo, hi = shapes.get(a.type, ("[", "]"))
        lines.append(f'  {_node_id(a)}{lo}"{esc(a.name)}"{hi}')
    dangling = set()
    for a, target, dep in _edges(graph, assets, dangling_for):
        if target is None:
            nid = _node_id("dangling:" + dep.name)
            if nid not in dangling:
                dangling.add(nid)
                lines.append(f'  {nid}["{esc(dep.name)} (not in catalog)"]:::dangling')
            lines.append(f"  {_node_id(a)} -.->|{dep.relation}| {nid}")
        else:
            lines.append(f"  {_node_id(a)} -->|{dep.relation}| {_node_id(target)}")
    lines.append("  classDef dangling stroke-dasharray: 5 5")
    return "\n".join(lines) + "\n"


def to_dot(graph: Graph, assets: Iterable[Asset], dangling_for=None) -> str:
    """Graphviz DOT (render with `dot -Tsvg`)."""
    assets = list(assets)
    shapes = {"model": "box", "dataset": "cylinder", "application": "ellipse"}
    q = lambda s: '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'
    lines = ["digraph catalog {", "  rankdir=LR;", "  node [fontname=Helvetica];"]
    for a in assets:
        lines.append(f"  {_node_id(a)} [label={q(a.name)}, shape={shapes.get(a.type, 'box')}];")
    dangling = set()
    for a, target, dep in _edges(graph, assets, dangling_for):
        if target is None:
            nid = _node_id("dangling:" + dep.name)
            if nid not in dangling:
                dangling.add(nid)
                lines.append(f"  {nid} [label={q(dep.name + ' (not in catalog)')}, style=dashed];")
            lines.append(f"  {_node_id(a)} -> {nid} [label={q(dep.relation)}, style=dashed];")
        else:
            lines.append(f"  {_node_id(a)} -> {_node_id(target)} [label={q(dep.relation)}];")
    lines.append("}")
    return "\n".join(lines) + "\n"


def lineage_tree(lineage: dict):
    """A rich Tree with the upstream and downstream branches of one asset."""
    from rich.tree import Tree
    root = Tree(f"[bold]{esc(lineage['asset'])}[/] ({esc(lineage['source'])})")

    def add(branch, nodes, key):
        for n in nodes:
            label = f"{esc(n['name'])} [dim]{esc(n.get('relation', ''))}[/]"
            if n.get("dangling"):
                label += " [red](not in catalog)[/]"
            if n.get("cycle"):
                label += " [yellow](cycle)[/]"
            add(branch.add(label), n.get(key, []), key)

    add(root.add("[cyan]upstream (built on)[/]"), lineage["upstream"], "upstream")
    add(root.add("[cyan]downstream (built from it)[/]"), lineage["downstream"], "downstream")
    return root
