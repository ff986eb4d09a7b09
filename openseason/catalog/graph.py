"""The lineage graph: dependency names resolved to assets, upstream and downstream walks, cycles.

Dependencies are stored as the names the source wrote; they are resolved here, at query time,
case-, punctuation- and alias-insensitively (an asset's aliases and hub id count as names). When
several records answer to a name, the one from the same source wins (so an imported graph stays
self-consistent), then the source priority checkpoint > hf-card > builtin > llama-cult >
ecosystem-graphs. A name nothing answers to is *dangling*: kept and reported, never dropped.
"""
from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from typing import Iterable, Optional

from .schema import SOURCES_PRIORITY, Asset, Dependency, name_key


@dataclass
class Edge:
    src: Asset               # the asset that depends
    dep: Dependency
    target: Optional[Asset]  # None when dangling


class Graph:
    def __init__(self, assets: Iterable[Asset]):
        self.assets = list(assets)
        self.by_id = {a.id: a for a in self.assets}
        self.index: dict[str, list[Asset]] = defaultdict(list)
        for asset in self.assets:
            for key in asset.all_keys():
                self.index[key].append(asset)
        self._edges: dict[int, list[Edge]] = {}
        self._down: Optional[dict[int, list[Edge]]] = None

    # -- resolution -----------------------------------------------------------------------------
    @staticmethod
    def _rank(asset: Asset, prefer_source: Optional[str]) -> tuple:
        same = 0 if prefer_source and asset.source == prefer_source else 1
        prio = SOURCES_PRIORITY.index(asset.source) if asset.source in SOURCES_PRIORITY else len(SOURCES_PRIORITY)
        # an exact name beats an alias match
        return (same, prio, asset.id or 0)

    def candidates(self, name: str) -> list[Asset]:
        return list(self.index.get(name_key(name), []))

    def find(self, name: str, prefer_source: Optional[str] = None, exclude: Optional[Asset] = None) -> Optional[Asset]:
        key = name_key(name)
        found = [a for a in self.index.get(key, []) if a is not exclude]
        if not found:
            return None
        exact = [a for a in found if a.key == key]
        pool = exact or found
        return min(pool, key=lambda a: self._rank(a, prefer_source))

    def edges(self, asset: Asset) -> list[Edge]:
        if asset.id not in self._edges:
            self._edges[asset.id] = [Edge(asset, d, self.find(d.name, asset.source, exclude=asset))
                                     for d in asset.dependencies]
        return self._edges[asset.id]

    def downstream_edges(self, asset: Asset) -> list[Edge]:
        if self._down is None:
            self._down = defaultdict(list)
            for a in self.assets:
                for e in self.edges(a):
                    if e.target is not None:
                        self._down[e.target.id].append(e)
        return self._down.get(asset.id, [])

    # -- walks ----------------------------------------------------------------------------------
    def upstream_tree(self, asset: Asset, max_depth: int = 20, _path: tuple = ()) -> dict:
        node = {"name": asset.name, "type": asset.type, "source": asset.source, "upstream": []}
        if asset.id in _path:
            node["cycle"] = True
            return node
        if len(_path) >= max_depth:
            node["truncated"] = True
            return node
        for e in self.edges(asset):
            if e.target is None:
                node["upstream"].append({"name": e.dep.name, "relation": e.dep.relation, "dangling": True})
            else:
                child = self.upstream_tree(e.target, max_depth, _path + (asset.id,))
                child["relation"] = e.dep.relation
                node["upstream"].append(child)
        return node

    def downstream_tree(self, asset: Asset, max_depth: int = 20, _path: tuple = ()) -> dict:
        node = {"name": asset.name, "type": asset.type, "source": asset.source, "downstream": []}
        if asset.id in _path:
            node["cycle"] = True
            return node
        if len(_path) >= max_depth:
            node["truncated"] = True
            return node
        for e in self.downstream_edges(asset):
            child = self.downstream_tree(e.src, max_depth, _path + (asset.id,))
            child["relation"] = e.dep.relation
            node["downstream"].append(child)
        return node

    def reachable(self, asset: Asset, direction: str = "both", max_depth: Optional[int] = None) -> list[Asset]:
        """Every asset connected to `asset` upstream and/or downstream, at most `max_depth` edges away."""
        return [self.by_id[i] for i in self.distances(asset, direction, max_depth)]

    def distances(self, asset: Asset, direction: str = "both", max_depth: Optional[int] = None) -> dict[int, int]:
        """{asset id: edges from `asset`} for everything reachable within `max_depth` (None: no limit).

        Breadth-first, and upstream and downstream walks do not mix: with "both", the LLaMA
        finetunes of Alpaca's data are not Alpaca's lineage."""
        if direction not in ("up", "down", "both"):
            raise ValueError("direction must be 'up', 'down' or 'both'")
        dist = {asset.id: 0}
        for way in ("up", "down"):
            if direction not in (way, "both"):
                continue
            seen = {asset.id: 0}
            frontier = [asset]
            while frontier and (max_depth is None or seen[frontier[0].id] < max_depth):
                nxt = []
                for a in frontier:
                    step = ([e.target for e in self.edges(a) if e.target is not None] if way == "up"
                            else [e.src for e in self.downstream_edges(a)])
                    for b in step:
                        if b.id not in seen:
                            seen[b.id] = seen[a.id] + 1
                            nxt.append(b)
                frontier = nxt
            for i, d in seen.items():
                dist[i] = min(d, dist.get(i, d))
        return dist

    def cycles(self, assets: Optional[Iterable[Asset]] = None) -> list[list[str]]:
        """Dependency cycles among `assets` (default all), each as the list of names around it."""
        pool = list(assets) if assets is not None else self.assets
        ids = {a.id for a in pool}
        color: dict[int, int] = {}
        found: list[list[str]] = []
        seen_sets: set[frozenset] = set()

        for start in pool:
            if color.get(start.id):
                continue
            # iterative DFS: (asset, iterator over its in-set targets)
            stack = [(start, iter([e.target for e in self.edges(start) if e.target is not None and e.target.id in ids]))]
            path = [start]
            color[start.id] = 1
            while stack:
                node, it = stack[-1]
                nxt = next(it, None)
                if nxt is None:
                    color[node.id] = 2
                    stack.pop()
                    path.pop()
                    continue
                state = color.get(nxt.id, 0)
                if state == 1:
                    cyc = path[path.index(nxt):] + [nxt]
                    key = frozenset(a.id for a in cyc)
                    if key not in seen_sets:
                        seen_sets.add(key)
                        found.append([a.name for a in cyc])
                elif state == 0:
                    color[nxt.id] = 1
                    path.append(nxt)
                    stack.append((nxt, iter([e.target for e in self.edges(nxt)
                                             if e.target is not None and e.target.id in ids])))
        return found
