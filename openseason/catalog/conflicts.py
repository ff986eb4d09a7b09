"""Conflicting facts between sources: the same asset recorded by two sources that disagree.

Records are "the same asset" when they answer to a common name (name, alias or hub id, compared
case- and punctuation-insensitively) and come from different sources; two records of one source
with the same name are duplicates, which the importers already report. A fact conflicts when both
records state it and the statements disagree:

  * a license id per role (weights, data, code) -- "unknown" and unstated are not statements, and a
    custom text ("other") is not compared with an id;
  * access (open / limited / closed);
  * the parameter count, by more than 10%;
  * the creation date, by more than 31 days at the precision both give (2023-04 vs 2023-06-09).

Nothing is resolved here: the catalog keeps every record, `can-use` answers per record, and this
report (`catalog conflicts`, and a mark on the page) tells the reader which facts to check.
"""
from __future__ import annotations

import datetime as _dt
from itertools import combinations
from typing import Optional

from .graph import Graph
from .schema import Asset

FIELDS = ("weights_license", "data_license", "code_license", "access", "params", "created_date")
_NOT_STATED = {None, "", "unknown", "other"}


def _date(text: str) -> tuple[_dt.date, int]:
    parts = [int(p) for p in text.split("-")[:3]]
    precision = len(parts)
    while len(parts) < 3:
        parts.append(1)
    return _dt.date(*parts), precision


def _disagree(field: str, a, b) -> bool:
    if field.endswith("license") or field == "access":
        return a not in _NOT_STATED and b not in _NOT_STATED and a != b
    if a is None or b is None:
        return False
    if field == "params":
        return abs(a - b) > 0.10 * max(a, b)
    if field == "created_date":
        (da, pa), (db, pb) = _date(a), _date(b)
        p = min(pa, pb)
        if p == 1:
            return abs(da.year - db.year) > 1 or (da.year != db.year and pa == pb)
        if p == 2:
            da, db = da.replace(day=1), db.replace(day=1)
        return abs((da - db).days) > 31
    return a != b


def groups(graph: Graph) -> list[list[Asset]]:
    """Records of more than one source that answer to a common name (union over shared keys)."""
    parent: dict[int, int] = {}

    def find(i):
        while parent.setdefault(i, i) != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for key, members in graph.index.items():
        for other in members[1:]:
            parent[find(other.id)] = find(members[0].id)
    out: dict[int, list[Asset]] = {}
    for a in graph.assets:
        out.setdefault(find(a.id), []).append(a)
    return [g for g in out.values() if len({a.source for a in g}) > 1]


def find_conflicts(graph: Graph, name: Optional[str] = None, fields=FIELDS) -> list[dict]:
    """[{"asset", "field", "values": [{"source", "name", "value", "explanation", "origin", "id"}]}]."""
    found = []
    for group in groups(graph):
        group = sorted(group, key=lambda a: (Graph._rank(a, None), a.id))
        label = group[0].name
        if name is not None and not any(k == _key(name) for a in group for k in a.all_keys()):
            continue
        for field in fields:
            pairs = [(a, b) for a, b in combinations(group, 2)
                     if a.source != b.source and _disagree(field, getattr(a, field), getattr(b, field))]
            if not pairs:
                continue
            ids = {x.id for p in pairs for x in p}
            involved = [a for a in group if a.id in ids]
            found.append({"asset": label, "field": field, "values": [
                {"source": a.source, "name": a.name, "value": getattr(a, field), "id": a.id, "origin": a.origin,
                 "explanation": _explanation(a, field)} for a in involved]})
    return found


def _key(name: str) -> str:
    from .schema import name_key
    return name_key(name)


def _explanation(a: Asset, field: str) -> Optional[str]:
    # importers keep the source's explanation under our field name or under the source's own
    alt = {"weights_license": "license", "data_license": "license", "code_license": "license",
           "params": "size"}.get(field)
    return a.explanations.get(field) or (a.explanations.get(alt) if alt else None)


def conflicts_by_asset(graph: Graph) -> dict[int, list[dict]]:
    """{asset id: the conflicts it takes part in} (for marking records on the page)."""
    out: dict[int, list[dict]] = {}
    for c in find_conflicts(graph):
        for v in c["values"]:
            out.setdefault(v["id"], []).append(c)
    return out
