"""`openseason catalog serve`: the catalog as an interactive page on 127.0.0.1.

Plain HTML + JS (data/web/index.html, no build step) with the graph drawn by cytoscape.js and its
dagre layout, vendored in static/vendor/ and served from the package (nothing from a CDN). The
server is the standard library's threading HTTP server over a snapshot of the catalog taken at start:
    GET /                       the page
    GET /static/vendor/F        the vendored JavaScript (a fixed list of files)
    GET /api/assets             every asset (slim record) with its resolved dependency edges and conflicts
    GET /api/can-use?name=N&purpose=commercial|research
    GET /api/lineage?name=N
    GET /api/table?view=table|chart       rows of the size/license table or the LLaMA-Cult chart (JSON)
    GET /api/table.csv / .md ?view=...    the same as CSV or Markdown
    GET /api/conflicts                    facts the sources disagree on
    GET /api/families                     lanes of the evolution tree (for paging it)
    GET /api/tree.svg?family=F|page=N     the evolution tree, one family or one page
It binds 127.0.0.1 unless told otherwise.
"""
from __future__ import annotations

import json
import tempfile
import threading
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from urllib.parse import parse_qs, urlparse

from ..errors import OpenseasonError
from .core import Catalog
from .verdict import can_use


VENDOR = {"cytoscape.min.js", "cytoscape-dagre.min.js"}


def _slim(graph, a, conflicts=()) -> dict:
    return {"conflicts": sorted({c["field"] for c in conflicts}),"id": a.id, "name": a.name, "type": a.type, "organization": a.organization, "date": a.created_date,
            "params": a.params, "access": a.access, "weights_license": a.weights_license,
            "data_license": a.data_license, "code_license": a.code_license, "source": a.source,
            "description": a.description, "aliases": a.aliases, "hub_id": a.hub_id,
            "deps": [{"name": e.dep.name, "relation": e.dep.relation, "id": e.target.id if e.target else None}
                     for e in graph.edges(a)]}


class _Snapshot:
    def __init__(self, db):
        from .conflicts import conflicts_by_asset, find_conflicts
        with Catalog(db) as cat:
            self.graph = cat.graph
            self.conflicts = find_conflicts(self.graph)
            marks = conflicts_by_asset(self.graph)
            self.payload = json.dumps([_slim(self.graph, a, marks.get(a.id, ())) for a in self.graph.assets],
                                      ensure_ascii=False).encode()
            self.db_path = str(cat.store.path)
        self.lock = threading.Lock()
        self.cache: dict = {}
        self.tmp = tempfile.TemporaryDirectory(prefix="openseason-catalog-")

    def cached(self, key, make):
        with self.lock:                 # one drawing or table at a time; each is made once
            if key not in self.cache:
                self.cache[key] = make()
            return self.cache[key]

    def table(self, view: str) -> list[dict]:
        from . import tables
        def make():
            assets = [a for a in self.graph.assets if a.type == "model"] if view == "table" else \
                     [a for a in self.graph.assets if a.source == "llama-cult" or a.finetune_method]
            return tables.rows(self.graph, assets)
        return self.cached(("table", view), make)

    def tree(self, family: str | None, page: int) -> tuple[bytes, int]:
        from pathlib import Path
        from .tree import render_tree
        def make():
            out = Path(self.tmp.name) / f"tree-{len(self.cache)}.svg"
            result = render_tree(self.graph, self.graph.assets, out, family=family)
            return [Path(p).read_bytes() for p in result["paths"]]
        pages = self.cached(("tree", family), make)
        return pages[min(max(page, 1), len(pages)) - 1], len(pages)

    def families(self) -> list[dict]:
        from .evolution import dedupe, lanes, date_of
        def make():
            models = dedupe(self.graph, [a for a in self.graph.assets if a.type == "model" and date_of(a)])
            return [{"name": l.name, "models": len(l.members)} for l in lanes(self.graph, models)
                    if not l.name.endswith(": standalone")]
        return self.cached(("families",), make)

    def asset(self, name: str, id_: str | None):
        if id_ and id_.isdigit() and int(id_) in self.graph.by_id:
            return self.graph.by_id[int(id_)]
        return self.graph.find(name)


def make_server(db=None, host: str = "127.0.0.1", port: int = 8765) -> ThreadingHTTPServer:
    """Build (not start) the server; port 0 picks a free port (see server.server_address)."""
    snap = _Snapshot(db)
    page = resources.files("openseason.catalog").joinpath("data/web/index.html").read_bytes()
    vendor = resources.files("openseason.catalog").joinpath("static/vendor")

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, fmt, *args):  # keep test and terminal output quiet
            pass

        def _send(self, status, body: bytes, ctype: str, headers=None):
            self.send_response(status)
            self.send_header("Content-Type", ctype)
            for k, v in (headers or {}).items():
                self.send_header(k, v)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Cache-Control", "no-store")
            self.end_headers()
            self.wfile.write(body)

        def _json(self, obj, status=HTTPStatus.OK):
            self._send(status, json.dumps(obj, ensure_ascii=False).encode(), "application/json; charset=utf-8")

        def do_GET(self):
            url = urlparse(self.path)
            q = {k: v[0] for k, v in parse_qs(url.query).items()}
            if url.path == "/favicon.ico":
                return self._send(HTTPStatus.NO_CONTENT, b"", "image/x-icon")
            if url.path in ("/", "/index.html"):
                return self._send(HTTPStatus.OK, page, "text/html; charset=utf-8")
            if url.path == "/api/assets":
                return self._send(HTTPStatus.OK, snap.payload, "application/json; charset=utf-8")
            if url.path.startswith("/static/vendor/") and url.path.rsplit("/", 1)[1] in VENDOR:
                return self._send(HTTPStatus.OK, vendor.joinpath(url.path.rsplit("/", 1)[1]).read_bytes(),
                                  "text/javascript; charset=utf-8")
            if url.path in ("/api/table", "/api/table.csv", "/api/table.md"):
                from . import tables
                view = q.get("view", "table")
                if view not in tables.VIEWS:
                    return self._json({"error": "view must be table or chart"}, HTTPStatus.BAD_REQUEST)
                rows = snap.table(view)
                if url.path == "/api/table":
                    return self._json({"columns": list(tables.VIEWS[view]), "rows": rows})
                if url.path.endswith(".csv"):
                    return self._send(HTTPStatus.OK, tables.to_csv(rows, tables.VIEWS[view]).encode(),
                                      "text/csv; charset=utf-8")
                return self._send(HTTPStatus.OK, tables.to_markdown(rows, tables.VIEWS[view]).encode(),
                                  "text/markdown; charset=utf-8")
            if url.path == "/api/conflicts":
                return self._json(snap.conflicts)
            if url.path == "/api/families":
                return self._json(snap.families())
            if url.path == "/api/tree.svg":
                family = q.get("family") or None
                if family is not None and family not in {f["name"] for f in snap.families()}:
                    return self._json({"error": f"no family lane named {family!r}"}, HTTPStatus.NOT_FOUND)
                page_no = int(q["page"]) if q.get("page", "").isdigit() and len(q["page"]) < 6 else 1
                try:
                    svg, pages = snap.tree(family, page_no)
                except ValueError as exc:
                    return self._json({"error": str(exc)}, HTTPStatus.NOT_FOUND)
                return self._send(HTTPStatus.OK, svg, "image/svg+xml", {"X-Pages": str(pages)})
            if url.path in ("/api/can-use", "/api/lineage"):
                asset = snap.asset(q.get("name", ""), q.get("id"))
                if asset is None:
                    return self._json({"error": f"no asset named {q.get('name')!r}"}, HTTPStatus.NOT_FOUND)
                with snap.lock:
                    if url.path == "/api/can-use":
                        purpose = q.get("purpose", "commercial")
                        if purpose not in ("commercial", "research"):
                            return self._json({"error": "purpose must be commercial or research"}, HTTPStatus.BAD_REQUEST)
                        return self._json(can_use(snap.graph, asset, purpose))
                    return self._json({"asset": asset.name,
                                       "upstream": snap.graph.upstream_tree(asset)["upstream"],
                                       "downstream": snap.graph.downstream_tree(asset)["downstream"]})
            return self._json({"error": "not found"}, HTTPStatus.NOT_FOUND)

    try:
        return ThreadingHTTPServer((host, port), Handler)
    except OSError as exc:
        raise OpenseasonError(f"cannot listen on {host}:{port}: {exc.strerror}", hint="pick another --port") from None


def serve(db=None, host: str = "127.0.0.1", port: int = 8765) -> None:
    """Serve the catalog page until interrupted."""
    server = make_server(db, host, port)
    h, p = server.server_address[:2]
    print(f"catalog page on http://{h}:{p}/  (Ctrl-C to stop)", flush=True)
    try:
        server.serve_forever()
    finally:
        server.server_close()
