"""Import Ecosystem Graphs (stanford-crfm/ecosystem-graphs) `assets/*.yaml`.

Each file is a YAML list of assets; values are scalars or {value, explanation}. Every asset is
kept, including duplicates (reported with file:line) and assets whose fields have problems (a
dict without a value, a stray top-level `value:`); a file that is not valid YAML is reported with
file:line:col and the rest of the import goes on. So is a file with YAML aliases (`*name`): nested
aliases expand exponentially ("billion laughs"), so they are refused, never expanded.
"""
from __future__ import annotations

from pathlib import Path

from ...errors import DataError, where
from ...fileio import parse_yaml
from ..core import Catalog
from ..normalize import asset_from_record
from .report import finish

SOURCE = "ecosystem-graphs"

def _asset_files(path: Path) -> list[Path]:
    if path.is_file():
        return [path]
    if (path / "assets").is_dir():
        path = path / "assets"
    if not path.is_dir():
        raise DataError("no such file or directory", where=str(path),
                        hint="pass the ecosystem-graphs checkout, its assets/ folder, or one assets/*.yaml file")
    files = sorted(p for p in path.iterdir() if p.suffix in (".yaml", ".yml"))
    if not files:
        raise DataError("no *.yaml files here", where=str(path), hint="pass the folder that holds assets/*.yaml")
    return files


def import_ecosystem_graphs(cat: Catalog, path) -> dict:
    path = Path(path).resolve()
    files = _asset_files(path)
    assets, problems, malformed = [], [], []
    for f in files:
        try:
            text = f.read_text(encoding="utf-8")
        except UnicodeDecodeError as exc:
            malformed.append({"where": str(f), "error": f"not UTF-8 text ({exc.reason} at byte {exc.start})"})
            continue
        try:  # aliases are refused: nested ones expand exponentially when the assets are stored
            node, data = parse_yaml(text, f, with_node=True)
        except DataError as exc:
            malformed.append({"where": exc.where, "error": exc.message})
            continue
        if data is None:
            problems.append({"where": str(f), "asset": None, "problem": "empty file"})
            continue
        if not isinstance(data, list):
            problems.append({"where": str(f), "asset": None,
                             "problem": f"top level is a {type(data).__name__}, expected a list of assets; file skipped"})
            continue
        for i, raw in enumerate(data):
            line = node.value[i].start_mark.line + 1
            loc = where(f.name, line)
            if not isinstance(raw, dict):
                problems.append({"where": loc, "asset": None, "problem": f"item is a {type(raw).__name__}, not an asset; skipped"})
                continue
            asset, probs = asset_from_record(raw, source=SOURCE, origin=loc)
            if not asset.name:
                asset.name = f"<unnamed {f.name}:{line}>"
            problems += [{"where": loc, "asset": asset.name, "problem": p} for p in probs]
            assets.append(asset)
    report = {"source": SOURCE, "path": str(path), "files": len(files), "problems": problems, "malformed_files": malformed}
    return finish(cat, SOURCE, str(path), assets, report)
