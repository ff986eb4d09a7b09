"""Catalog import speed: our Ecosystem Graphs import (parse, normalize, resolve, store in SQLite)
against the floor of just parsing the same 173 YAML files with PyYAML's safe loader, in one process.

    python benchmarks/catalog_import.py [../shared/data/ecosystem-graphs]
"""
from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

import yaml

from openseason.catalog import Catalog
from openseason.catalog.importers.ecosystem_graphs import import_ecosystem_graphs


def main() -> None:
    root = Path(sys.argv[1] if len(sys.argv) > 1 else Path(__file__).resolve().parents[2] / "shared/data/ecosystem-graphs")
    files = sorted((root / "assets").glob("*.yaml"))
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    t0 = time.perf_counter()
    n = sum(len(yaml.load(f.read_text(encoding="utf-8"), Loader=loader) or []) for f in files)
    peer = time.perf_counter() - t0
    with tempfile.TemporaryDirectory() as d:
        with Catalog(Path(d) / "c.sqlite") as cat:
            t0 = time.perf_counter()
            report = import_ecosystem_graphs(cat, root)
            ours = time.perf_counter() - t0
            t0 = time.perf_counter()
            verdicts = [cat.can_use(a.name, source="ecosystem-graphs")["verdict"]
                        for a in cat.store.query(source="ecosystem-graphs", type="model")]
            can_use_s = time.perf_counter() - t0
    print(f"PyYAML parse only ({loader.__name__}): {n} assets in {peer:.2f} s")
    print(f"openseason import (parse + normalize + resolve + SQLite): {report['assets']} assets in {ours:.2f} s "
          f"(ratio {ours / peer:.1f}x the parse floor)")
    print(f"can-use on all {len(verdicts)} imported models: {can_use_s:.2f} s "
          f"(yes {verdicts.count('yes')}, no {verdicts.count('no')}, unknown {verdicts.count('unknown')})")


if __name__ == "__main__":
    main()
