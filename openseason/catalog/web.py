"""`openseason catalog serve`: the catalog as an interactive page on 127.0.0.1.

Plain HTML + JS (data/web/index.html, no build step, nothing fetched from a CDN). The server is the
standard library's threading HTTP server over an in-memory snapshot of the catalog taken at start:
    GET /                       the page
    GET /api/assets             every asset (slim record) with its resolved dependency edges
    GET /api/can-use?name=N&purpose=commercial|research
    GET /api/lineage?name=N
It binds 127.0.0.1 unless told otherwise.
"""
from __future__ import annotations

import json
import threading
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from urllib.parse import parse_qs, urlparse

from ..errors import OpenseasonError
from .core import Catalog
from .verdict import can_use


def _slim(graph, a) -> dict:
    return {"id": a.id, "name": a.name, "type": a.type, "organization": a.organization, "date": a.created_date,
            "params": a.params, "access": a.access, "weights_license": a.weights_license,
            "data_license": a.data_license, "code_license": a.code_license, "source": a.source,
            "description": a.description, "aliases": a.aliases, "hub_id": a.hub_id,
            "deps": [{"name": e.dep.name, "relation": e.dep.relation, "id": e.target.id if e.target else None}
                     for e in graph.edges(a)]}


class _Snapshot:
    def __init__(self, db):
        with Catalog(db) as cat:
            self.graph = cat.graph
            self.by_name = {}
            self.payload = json.dumps([_slim(self.graph, a) for a in self.graph.assets], ensure_ascii=False).encode()
            self.db_path = str(cat.store.path)
        self.lock = threading.Lock()

    def asset(self, name: str, id_: str | None):
        if id_ and id_.isdigit() and int(id_) in self.graph.by_id:
            return self.graph.by_id[int(id_)]
        return self.graph.find(name)


def make_server(db=None, host: str = "127.0.0.1", port: int = 8765) -> ThreadingHTTPServer:
    """Build (not start) the server; port 0 picks a free port (see server.server_address)."""
    snap = _Snapshot(db)
    page = resources.files("openseason.catalog").joinpath("data/web/index.html").read_bytes()

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, fmt, *args):  # keep test and terminal output quiet
            pass

        def _send(self, status, body: bytes, ctype: str):
            self.send_response(status)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Cache-Control", "no-store")
            self.end_headers()
            self.wfile.write(body)

        def _json(self, obj, status=HTTPStatus.OK):
            self._send(status, json.dumps(obj, ensure_ascii=False).encode(), "application/json; charset=utf-8")

        def do_GET(self):
            url = urlparse(self.path)
            q = {k: v[0] for k, v in parse_qs(url.query).items()}
            if url.path in ("/", "/index.html"):
                return self._send(HTTPStatus.OK, page, "text/html; charset=utf-8")
            if url.path == "/api/assets":
                return self._send(HTTPStatus.OK, snap.payload, "application/json; charset=utf-8")
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
