"""`openseason catalog ...`: thin CLI wrappers over the catalog library.

    catalog import ecosystem-graphs PATH | hf-card README.md | llama-cult chart.md
    catalog list / search TEXT   [--type --organization --license --access --since --until --min-params --max-params --source]
    catalog show NAME            catalog lineage NAME          catalog can-use NAME --commercial|--research
    catalog export --format json|mermaid|dot   catalog timeline -o tl.png [--page-by family|year]
    catalog tree --out tree.svg [--family F]   catalog table --format csv|markdown [--view chart]
    catalog conflicts [NAME]                   catalog serve
    catalog register CKPT_DIR --base-model NAME --dataset NAME ...   catalog licenses
Every verb takes --db PATH (default $OPENSEASON_CATALOG_DB or $XDG_DATA_HOME/openseason/catalog.sqlite).
"""
from __future__ import annotations

import argparse
import json
import sys

from ..errors import OpenseasonError


def _db_parent() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(add_help=False)
    p.add_argument("--db", default=None,
                   help="catalog SQLite file (default: $OPENSEASON_CATALOG_DB or $XDG_DATA_HOME/openseason/catalog.sqlite)")
    return p


def _size(text: str) -> float:
    from .schema import parse_params
    try:
        return float(text)
    except ValueError:
        value = parse_params(text + " parameters")
        if value is None:
            raise argparse.ArgumentTypeError(f"not a size: {text!r} (use e.g. 7B, 350M, 1.2e9)")
        return value


def _depth(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise argparse.ArgumentTypeError(f"not a depth: {text!r} (use 0, 1, 2, ...)")
    return value


def _filters_parent(formats=("table", "json", "mermaid", "dot")) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(add_help=False)
    p.add_argument("--type", choices=["model", "dataset", "application"])
    p.add_argument("--organization", help="substring of the organization, case-insensitive")
    p.add_argument("--license", help="license id or spelling (apache-2.0, 'CC BY-NC 4.0', llama2, ...)")
    p.add_argument("--access", choices=["open", "limited", "closed", "unknown"])
    p.add_argument("--since", help="created on or after this date (2023, 2023-04, 2023-04-12)")
    p.add_argument("--until", help="created on or before this date")
    p.add_argument("--min-params", type=_size, help="at least this many parameters (7B, 350M)")
    p.add_argument("--max-params", type=_size)
    p.add_argument("--source", choices=["builtin", "ecosystem-graphs", "hf-card", "llama-cult", "checkpoint"])
    p.add_argument("--limit", type=int)
    p.add_argument("--format", choices=list(formats), default=formats[0])
    return p


def _query(cat, args, text=None):
    return cat.store.query(type=args.type, organization=args.organization, license=args.license,
                           access=args.access, since=args.since, until=args.until, min_params=args.min_params,
                           max_params=args.max_params, source=args.source, text=text, limit=args.limit)


def _emit(cat, assets, fmt, title, dangling_for=None):
    from . import views
    if fmt == "json":
        print(views.to_json(assets))
    elif fmt == "mermaid":
        print(views.to_mermaid(cat.graph, assets, dangling_for), end="")
    elif fmt == "dot":
        print(views.to_dot(cat.graph, assets, dangling_for), end="")
    else:
        from rich.console import Console
        Console().print(views.table(assets, title=f"{title} ({len(assets)})"))


def _summarize_import(report: dict, as_json: bool) -> int:
    if as_json:
        print(json.dumps(report, indent=2, ensure_ascii=False))
        return 0
    deps = report.get("dependencies", {})
    print(f"imported {report['assets']} assets {report.get('by_type', {})} from {report['path']} ({report['source']})")
    print(f"dependencies: {deps.get('total', 0)} total; resolved {deps.get('resolved_exact', 0)} exactly, "
          f"{deps.get('resolved_normalized', 0)} ignoring case/punctuation, {deps.get('resolved_catalog', 0)} "
          f"through other catalog names/aliases; {deps.get('dangling', 0)} dangling "
          f"({deps.get('dangling_names', 0)} distinct names, kept on their assets)")
    for d in report.get("dangling", [])[:10]:
        print(f"  dangling: {d['where']} {d['asset']!r} -> {d['dependency']!r}")
    if len(report.get("dangling", [])) > 10:
        print(f"  ... {len(report['dangling']) - 10} more (--json for all)")
    for d in report.get("duplicates", []):
        print(f"  duplicate name {d['name']!r}: {', '.join(d['where'])} (all kept)")
    for c in report.get("cycles", []):
        print(f"  cycle: {' -> '.join(c)}")
    for p in report.get("malformed_files", []):
        print(f"  malformed YAML: {p['where']}: {p['error']} (file not imported)")
    for p in report.get("problems", []):
        print(f"  problem: {p['where']} {p.get('asset') or ''}: {p['problem']}")
    return 0


def cmd_import(args) -> int:
    from ..errors import DataError
    from . import import_ecosystem_graphs, import_hf_card, import_llama_cult
    if args.kind == "ecosystem-graphs":
        report = import_ecosystem_graphs(args.path, db=args.db)
    elif args.kind == "hf-card":
        report = import_hf_card(args.path, name=args.name, db=args.db)
    else:
        report = import_llama_cult(args.path, db=args.db)
    malformed = report.get("malformed_files", [])
    if malformed and not report.get("assets"):  # every file given was unreadable: that is a failure, not "0 imported"
        first = malformed[0]
        raise DataError(f"{first['error']} (nothing imported" + (f"; {len(malformed) - 1} more malformed file(s))"
                                                                  if len(malformed) > 1 else ")"),
                        where=first["where"], hint="fix the YAML, or import the folder that holds the good files")
    return _summarize_import(report, args.json)


def cmd_list(args) -> int:
    from .core import Catalog
    with Catalog(args.db) as cat:
        _emit(cat, _query(cat, args, getattr(args, "text", None)), args.format, "catalog")
    return 0


def cmd_show(args) -> int:
    from .core import Catalog
    from . import views
    with Catalog(args.db) as cat:
        asset = cat.get(args.name, args.source)
        others = cat.others_named(asset)
        if args.json:
            d = asset.to_dict()
            d["other_records"] = [{"name": o.name, "source": o.source, "origin": o.origin} for o in others]
            print(json.dumps(d, indent=2, ensure_ascii=False))
            return 0
        from rich.console import Console
        from rich.table import Table
        esc = views.esc  # every value here comes from imported files: never markup
        t = Table(title=esc(f"{asset.name} ({asset.type}, {asset.source})"), show_header=False)
        t.add_column("field", style="cyan")
        t.add_column("value", overflow="fold")
        for key, value in asset.to_dict().items():
            if value in (None, [], {}, "") or key in ("id",):
                continue
            if key == "dependencies":
                value = ", ".join(f"{d['name']} ({d['relation']})" for d in value)
            why = asset.explanations.get(key)
            t.add_row(key, esc(value) + (f"\n[dim]{esc(why)}[/]" if why and key != "explanations" else ""))
        for o in others:
            t.add_row("also recorded", esc(f"{o.name} from {o.source} ({o.origin})"))
        Console().print(t)
    return 0


def cmd_lineage(args) -> int:
    from .core import Catalog
    from . import views
    with Catalog(args.db) as cat:
        if args.format in ("mermaid", "dot"):
            asset = cat.get(args.name, args.source)
            # the same cut as the tree: `depth` edges upstream and `depth` edges downstream
            assets = cat.graph.reachable(asset, "both", args.depth)
            expanded = {i for i, d in cat.graph.distances(asset, "up", args.depth).items() if d < args.depth}
            _emit(cat, assets, args.format, "lineage", dangling_for=expanded)
            return 0
        result = cat.lineage(args.name, args.depth, args.source)
        if args.format == "json" or args.json:
            print(json.dumps(result, indent=2, ensure_ascii=False))
        else:
            from rich.console import Console
            Console().print(views.lineage_tree(result))
    return 0


def cmd_can_use(args) -> int:
    from . import can_use
    result = can_use(args.name, commercial=not args.research, db=args.db, source=args.source)
    if args.json:
        print(json.dumps(result, indent=2, ensure_ascii=False))
        return 0
    print(f"{result['verdict'].upper()}: {result['summary']}")
    for line in result["reasons"]:
        print(f"  {line}")
    if result["conditions"] and result["verdict"] == "yes":
        print("conditions:")
        for c in result["conditions"]:
            print(f"  - {c}")
    return 0


def cmd_export(args) -> int:
    from .core import Catalog
    from . import views
    from ..fileio import write_text_atomic
    with Catalog(args.db) as cat:
        assets = _query(cat, args)
        fmt = "json" if args.format == "table" else args.format
        text = {"json": lambda: views.to_json(assets) + "\n", "mermaid": lambda: views.to_mermaid(cat.graph, assets),
                "dot": lambda: views.to_dot(cat.graph, assets)}[fmt]()
    if args.output:
        write_text_atomic(args.output, text)
        print(f"wrote {len(assets)} assets as {fmt} to {args.output}")
    else:
        sys.stdout.write(text)
    return 0


def _report_drawing(result: dict) -> None:
    for page in result["pages"]:
        extra = f"; earlier than {page['dense_from']}, in the gutter: {', '.join(page['outliers'])}" if page["outliers"] else ""
        print(f"wrote {page['path']} ({page['assets']} models in {len(page['lanes'])} lanes, "
              f"{page['size_px'][0]}x{page['size_px'][1]} px{extra})")


def cmd_timeline(args) -> int:
    from .core import Catalog
    from .timeline import render_timeline
    with Catalog(args.db) as cat:
        assets = _query(cat, args)
        if args.type is None:
            assets = [a for a in assets if a.type == "model"]
        try:
            result = render_timeline(cat.graph, assets, args.output, page_by=args.page_by, max_rows=args.max_rows)
        except ValueError as exc:
            raise OpenseasonError(str(exc), hint="widen the filters (--source builtin, --since 2023)") from None
    _report_drawing(result)
    return 0


def cmd_tree(args) -> int:
    from .core import Catalog
    from .tree import render_tree
    with Catalog(args.db) as cat:
        assets = _query(cat, args)
        try:
            result = render_tree(cat.graph, assets, args.out, family=args.family, page_by=args.page_by,
                                 max_rows=args.max_rows)
        except ValueError as exc:
            raise OpenseasonError(str(exc), where=args.out,
                                  hint="widen the filters; --family takes a lane name from a full drawing "
                                       "(LLaMA, Pythia, T5, ...); the output must end in .svg, .png or .pdf") from None
    _report_drawing(result)
    return 0


def cmd_conflicts(args) -> int:
    from .core import Catalog
    from .conflicts import find_conflicts
    from . import views
    with Catalog(args.db) as cat:
        if args.name:
            cat.get(args.name)            # an unknown name is an error with close matches, not an empty list
        found = find_conflicts(cat.graph, name=args.name)
    if args.json:
        print(json.dumps(found, indent=2, ensure_ascii=False))
        return 0
    from rich.console import Console
    from rich.table import Table
    t = Table(title=f"facts the sources disagree on ({len(found)})")
    for c in ("asset", "field", "source: value (record, origin)"):
        t.add_column(c, overflow="fold")
    for c in found:
        t.add_row(views.esc(c["asset"]), c["field"], "\n".join(
            views.esc(f"{v['source']}: {v['value']} ({v['name']}, {v['origin']})"
                      + (f" -- {v['explanation']}" if v.get("explanation") else "")) for v in c["values"]))
    Console().print(t)
    return 0


def cmd_table(args) -> int:
    from .core import Catalog
    from . import tables
    from ..fileio import write_text_atomic
    with Catalog(args.db) as cat:
        assets = _query(cat, args)
        if args.view == "chart" and args.source is None:
            assets = [a for a in assets if a.source == "llama-cult"]
        elif args.type is None:
            assets = [a for a in assets if a.type == "model"]
        table = tables.rows(cat.graph, assets)
    if args.sort:
        table = tables.sort_rows(table, args.sort, args.descending)
    columns = tables.VIEWS[args.view]
    fmt = args.format if args.format in ("csv", "markdown") else "markdown"
    text = tables.to_csv(table, columns) if fmt == "csv" else tables.to_markdown(table, columns)
    if args.output:
        write_text_atomic(args.output, text)
        print(f"wrote {len(table)} rows as {fmt} to {args.output}")
    else:
        sys.stdout.write(text)
    return 0


def cmd_serve(args) -> int:
    from .web import serve
    serve(args.db, args.host, args.port)
    return 0


def cmd_register(args) -> int:
    from . import register_checkpoint
    result = register_checkpoint(args.ckpt_dir, base_model=args.base_model, datasets=args.dataset,
                                 method=args.method, hardware=args.hardware, seconds=args.seconds,
                                 tokens=args.tokens, name=args.name, license=args.license, db=args.db)
    print(json.dumps({"name": result["name"], "verdict": result["can_use"]["verdict"]}))
    return 0


def cmd_licenses(args) -> int:
    from . import licenses, views
    from rich.console import Console
    from rich.table import Table
    t = Table(title="license table")
    for c in ("id", "spdx", "commercial", "research", "name"):
        t.add_column(c, overflow="fold")
    for lic in licenses.all_licenses():
        t.add_row(*(views.esc(v) for v in (lic.id, lic.spdx or "", lic.commercial, lic.research, lic.name)))
    Console().print(t)
    return 0


def register(subparsers) -> None:
    db = _db_parent()
    filters = _filters_parent()
    cat = subparsers.add_parser("catalog", help="catalog of open LLMs and datasets: lineage and licenses")
    sub = cat.add_subparsers(dest="catalog_command", metavar="VERB")
    sub.required = True

    p = sub.add_parser("import", parents=[db], help="import Ecosystem Graphs YAML, a HF model card, or the LLaMA-Cult chart")
    p.add_argument("kind", choices=["ecosystem-graphs", "hf-card", "llama-cult"])
    p.add_argument("path")
    p.add_argument("--name", help="hf-card: the asset name (default: model-index name, first heading, or folder)")
    p.add_argument("--json", action="store_true", help="print the full import report as JSON")
    p.set_defaults(func=cmd_import)

    p = sub.add_parser("list", parents=[db, filters], help="list assets, filtered")
    p.set_defaults(func=cmd_list)
    p = sub.add_parser("search", parents=[db, filters], help="search names, descriptions and fields")
    p.add_argument("text")
    p.set_defaults(func=cmd_list)

    p = sub.add_parser("show", parents=[db], help="every field of one asset")
    p.add_argument("name")
    p.add_argument("--source", help="pick the record of this source when several share the name")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_show)

    p = sub.add_parser("lineage", parents=[db], help="what an asset is built on and what is built from it")
    p.add_argument("name")
    p.add_argument("--source")
    p.add_argument("--depth", type=_depth, default=20, help="edges to follow each way (every --format)")
    p.add_argument("--format", choices=["tree", "json", "mermaid", "dot"], default="tree")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_lineage)

    p = sub.add_parser("can-use", parents=[db], help="may I use it commercially (or for research), and why")
    p.add_argument("name")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--commercial", action="store_true", default=True, help="commercial use (the default)")
    g.add_argument("--research", action="store_true", help="non-commercial research use")
    p.add_argument("--source")
    p.add_argument("--json", action="store_true", help='print {"verdict": ..., "reasons": [...]}')
    p.set_defaults(func=cmd_can_use)

    p = sub.add_parser("export", parents=[db, filters], help="export assets as JSON, Mermaid or DOT")
    p.add_argument("-o", "--output")
    p.set_defaults(func=cmd_export)

    paging = argparse.ArgumentParser(add_help=False)
    paging.add_argument("--page-by", choices=["family", "year"],
                        help="one file per page of families (out-p1.png, ...) or per year (out-2023.png, ...); "
                             "drawings taller than --max-rows rows are paged by family anyway")
    paging.add_argument("--max-rows", type=int, default=70, help="label rows per page (default 70)")
    p = sub.add_parser("timeline", parents=[db, filters, paging], help="evolution timeline PNG, coloured by verdict")
    p.add_argument("-o", "--output", required=True)
    p.set_defaults(func=cmd_timeline)

    p = sub.add_parser("tree", parents=[db, filters, paging],
                       help="evolution tree (families over time; open / restricted / API-only) as SVG or PNG")
    p.add_argument("--out", "-o", required=True, help="tree.svg, tree.png or tree.pdf")
    p.add_argument("--family", help="draw one family (LLaMA, Pythia, T5, ...) with its derivatives")
    p.set_defaults(func=cmd_tree)

    p = sub.add_parser("conflicts", parents=[db], help="facts two sources disagree on (licenses, access, size, date)")
    p.add_argument("name", nargs="?", help="only the records answering to this name")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_conflicts)

    table_filters = _filters_parent(("markdown", "csv"))
    p = sub.add_parser("table", parents=[db, table_filters],
                       help="size and license table (or the LLaMA-Cult chart) as Markdown or CSV")
    p.add_argument("--view", choices=["table", "chart"], default="table",
                   help="table: sizes, licenses, commercial use and why; chart: the LLaMA-Cult columns")
    p.add_argument("--sort", choices=["name", "date", "params", "context", "training_tokens", "license",
                                      "commercial", "organization"])
    p.add_argument("--descending", action="store_true")
    p.add_argument("-o", "--output")
    p.set_defaults(func=cmd_table)

    p = sub.add_parser("serve", parents=[db], help="interactive catalog page on 127.0.0.1")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8765)
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("register", parents=[db], help="record a trained checkpoint with its lineage")
    p.add_argument("ckpt_dir")
    p.add_argument("--base-model")
    p.add_argument("--dataset", action="append", default=[])
    p.add_argument("--method")
    p.add_argument("--hardware")
    p.add_argument("--seconds", type=float)
    p.add_argument("--tokens", type=float)
    p.add_argument("--name")
    p.add_argument("--license", help="license you chose for your weights (default: none of its own)")
    p.set_defaults(func=cmd_register)

    p = sub.add_parser("licenses", help="the license table can-use reasons with")
    p.set_defaults(func=cmd_licenses)
