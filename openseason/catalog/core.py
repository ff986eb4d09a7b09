"""The Catalog: one store, the built-in assets seeded on first use, name lookup, lineage, can-use.

    cat = Catalog(db)               # opens (and migrates) the SQLite file, seeds the built-in catalog
    cat.get("Alpaca")               # an Asset (OpenseasonError with close matches if unknown)
    cat.lineage("Alpaca")           # {"asset", "upstream": tree, "downstream": tree}
    cat.can_use("Alpaca")           # {"verdict": "no", "reasons": [...], ...}

The built-in catalog is data (data/builtin/*.yaml). It is re-seeded whenever those files change, so
an upgrade of openseason brings its corrected facts into an existing catalog file.
"""
from __future__ import annotations

import difflib
import hashlib
import os
from importlib import resources
from typing import Optional

from ..errors import OpenseasonError
from ..fileio import parse_yaml
from .graph import Graph
from .normalize import asset_from_record
from .schema import Asset, name_key
from .store import Store
from .verdict import can_use as _can_use

BUILTIN_FILES = ("upstream.yaml", "datasets.yaml", "models.yaml")


def builtin_texts() -> dict[str, str]:
    root = resources.files("openseason.catalog").joinpath("data/builtin")
    return {name: root.joinpath(name).read_text(encoding="utf-8") for name in BUILTIN_FILES}


def load_builtin() -> list[Asset]:
    """The curated built-in assets (a problem in them is a bug in openseason, so it raises)."""
    out = []
    for fname, text in builtin_texts().items():
        for i, raw in enumerate(parse_yaml(text, f"builtin/{fname}", error=OpenseasonError)):
            asset, problems = asset_from_record(raw, source="builtin", origin=f"builtin/{fname}#{i}")
            if problems:
                raise ValueError(f"built-in catalog {fname} asset {raw.get('name')!r}: {'; '.join(problems)}")
            out.append(asset)
    return out


class Catalog:
    def __init__(self, db: str | os.PathLike | None = None, *, builtin: bool = True):
        self.store = Store(db)
        self._graph: Optional[Graph] = None
        if builtin:
            self._seed_builtin()

    def close(self) -> None:
        self.store.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def _seed_builtin(self) -> None:
        digest = hashlib.sha256("".join(builtin_texts().values()).encode()).hexdigest()
        if self.store.get_meta("builtin_sha256") != digest:
            self.store.replace_collection("builtin", "builtin", load_builtin())
            self.store.set_meta("builtin_sha256", digest)
            self.changed()

    def changed(self) -> None:
        self._graph = None

    @property
    def graph(self) -> Graph:
        if self._graph is None:
            self._graph = Graph(self.store.all_assets())
        return self._graph

    # -- lookup ---------------------------------------------------------------------------------
    def find(self, name: str, source: Optional[str] = None) -> Optional[Asset]:
        if source:
            found = [a for a in self.graph.candidates(name) if a.source == source]
            return found[0] if found else None
        return self.graph.find(name)

    def get(self, name: str, source: Optional[str] = None) -> Asset:
        asset = self.find(name, source)
        if asset is None:
            names = sorted({a.name for a in self.graph.assets})
            close = difflib.get_close_matches(name, names, n=5, cutoff=0.6)
            keyed = [a.name for a in self.graph.assets if name_key(name) and name_key(name) in a.key][:5]
            hint = ", ".join(dict.fromkeys(close + keyed)) or "none"
            raise OpenseasonError(f"no asset named {name!r} in the catalog ({self.store.path})",
                                  hint=f"close names: {hint}; `openseason catalog search TEXT` lists matches")
        return asset

    def others_named(self, asset: Asset) -> list[Asset]:
        """Other records answering to the same name (duplicates, or the same asset from another source)."""
        return [a for a in self.graph.candidates(asset.name) if a.id != asset.id]

    # -- questions ------------------------------------------------------------------------------
    def lineage(self, name: str, depth: int = 20, source: Optional[str] = None) -> dict:
        asset = self.get(name, source)
        return {"asset": asset.name, "source": asset.source,
                "upstream": self.graph.upstream_tree(asset, depth)["upstream"],
                "downstream": self.graph.downstream_tree(asset, depth)["downstream"]}

    def can_use(self, name: str, purpose: str = "commercial", source: Optional[str] = None) -> dict:
        asset = self.get(name, source)
        result = _can_use(self.graph, asset, purpose)
        dups = [a for a in self.others_named(asset) if a.source == asset.source and a.key == asset.key]
        if dups:
            result["reasons"].append(f"[note] {len(dups) + 1} records of {asset.source} are named {asset.name!r}; "
                                     f"answered for the first ({asset.origin})")
        return result
