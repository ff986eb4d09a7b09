"""Shared import bookkeeping: dependency resolution classes, duplicates, cycles, problems."""
from __future__ import annotations

from collections import Counter, defaultdict

from ..core import Catalog
from ..schema import Asset, name_key


def resolve_report(cat: Catalog, source: str, assets: list[Asset]) -> dict:
    """Classify every dependency of the imported assets and find duplicates and cycles.

    exact       the name is an imported asset's name, character for character
    normalized  same name up to case, spaces and punctuation ("LLaMa" -> "LLaMA")
    catalog     resolved through another record's name, alias or hub id (built-in, other imports)
    dangling    nothing answers to it: kept on the asset, listed here
    """
    graph = cat.graph
    names = {a.name for a in assets}
    keys = {a.key for a in assets}
    counts = Counter()
    dangling = []
    for a in assets:
        for dep in a.dependencies:
            counts["total"] += 1
            if dep.name in names:
                counts["exact"] += 1
            elif name_key(dep.name) in keys:
                counts["normalized"] += 1
            elif graph.find(dep.name, source, exclude=a) is not None:
                counts["catalog"] += 1
            else:
                counts["dangling"] += 1
                dangling.append({"where": a.origin, "asset": a.name, "dependency": dep.name})
    by_name = defaultdict(list)
    for a in assets:
        by_name[a.key].append(a)
    duplicates = [{"name": group[0].name, "where": [f"{x.origin} ({x.name})" for x in group]}
                  for group in by_name.values() if len(group) > 1]
    imported_ids = {a.id for a in assets}
    cycles = graph.cycles([x for x in graph.assets if x.id in imported_ids])
    return {
        "dependencies": {"total": counts["total"], "resolved_exact": counts["exact"],
                         "resolved_normalized": counts["normalized"], "resolved_catalog": counts["catalog"],
                         "dangling": counts["dangling"],
                         "dangling_names": len({name_key(d["dependency"]) for d in dangling})},
        "dangling": dangling,
        "duplicates": duplicates,
        "cycles": cycles,
    }


def finish(cat: Catalog, source: str, collection: str, assets: list[Asset], report: dict) -> dict:
    """Store the assets (replacing this collection's previous import) and complete the report."""
    cat.store.replace_collection(source, collection, assets)
    cat.changed()
    report.update(resolve_report(cat, source, assets))
    report["assets"] = len(assets)
    report["by_type"] = dict(Counter(a.type for a in assets))
    with cat.store.transaction():
        import json
        import datetime as _dt
        cat.store.conn.execute("INSERT INTO imports(source, collection, at, report) VALUES (?, ?, ?, ?)",
                               (source, collection, _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
                                json.dumps(report, ensure_ascii=False)))
    return report
