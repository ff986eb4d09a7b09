"""The catalog store: one SQLite file with schema migrations.

Each asset is a row with the full record as JSON plus indexed columns for the queries people run
(type, organization, license ids, access, date, parameter count). Every write is one transaction,
so a crash leaves the catalog as it was before the import or after it, never half of one.

Schema history (the `schema_version` table holds the number):
  v1  assets(name, type, organization, created_date, access, license, data) + dependencies(name, relation)
  v2  source/collection/origin, normalized license ids per role, params/tokens, name keys (aliases),
      evaluations, imports log, meta. Opening a v1 file upgrades it in place (licenses normalized,
      keys computed from the stored records).
"""
from __future__ import annotations

import contextlib
import datetime as _dt
import json
import os
import sqlite3
from pathlib import Path
from typing import Iterable, Optional

from ..errors import OpenseasonError
from .schema import Asset, name_key

SCHEMA_VERSION = 2

V1_DDL = """
CREATE TABLE schema_version (version INTEGER NOT NULL);
CREATE TABLE assets (
    id INTEGER PRIMARY KEY,
    name TEXT NOT NULL,
    type TEXT NOT NULL,
    organization TEXT,
    created_date TEXT,
    access TEXT,
    license TEXT,
    data TEXT NOT NULL
);
CREATE TABLE dependencies (
    asset_id INTEGER NOT NULL REFERENCES assets(id) ON DELETE CASCADE,
    name TEXT NOT NULL,
    relation TEXT NOT NULL DEFAULT 'depends'
);
INSERT INTO schema_version VALUES (1);
"""

V2_DDL = """
ALTER TABLE assets ADD COLUMN source TEXT NOT NULL DEFAULT 'builtin';
ALTER TABLE assets ADD COLUMN collection TEXT;
ALTER TABLE assets ADD COLUMN origin TEXT;
ALTER TABLE assets ADD COLUMN key TEXT;
ALTER TABLE assets ADD COLUMN weights_license TEXT;
ALTER TABLE assets ADD COLUMN code_license TEXT;
ALTER TABLE assets ADD COLUMN data_license TEXT;
ALTER TABLE assets ADD COLUMN params REAL;
ALTER TABLE assets ADD COLUMN tokens REAL;
ALTER TABLE dependencies ADD COLUMN key TEXT;
ALTER TABLE dependencies ADD COLUMN position INTEGER NOT NULL DEFAULT 0;
CREATE TABLE asset_keys (asset_id INTEGER NOT NULL REFERENCES assets(id) ON DELETE CASCADE, key TEXT NOT NULL);
CREATE TABLE evaluations (
    id INTEGER PRIMARY KEY,
    asset_id INTEGER NOT NULL REFERENCES assets(id) ON DELETE CASCADE,
    at TEXT NOT NULL,
    results TEXT NOT NULL
);
CREATE TABLE imports (id INTEGER PRIMARY KEY, source TEXT, collection TEXT, at TEXT, report TEXT);
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT);
CREATE INDEX assets_key ON assets(key);
CREATE INDEX assets_type ON assets(type);
CREATE INDEX assets_source ON assets(source, collection);
CREATE INDEX asset_keys_key ON asset_keys(key);
CREATE INDEX deps_asset ON dependencies(asset_id);
CREATE INDEX deps_key ON dependencies(key);
"""


def default_db_path() -> Path:
    """$OPENSEASON_CATALOG_DB, else $XDG_DATA_HOME/openseason/catalog.sqlite (~/.local/share/...)."""
    env = os.environ.get("OPENSEASON_CATALOG_DB")
    if env:
        return Path(env)
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "openseason" / "catalog.sqlite"


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def _statements(ddl: str) -> list[str]:
    return [s.strip() for s in ddl.split(";") if s.strip()]


def _migrate_v1_to_v2(conn: sqlite3.Connection) -> None:
    for stmt in _statements(V2_DDL):
        conn.execute(stmt)
    # v1 stored the record JSON with the raw license only; rebuild the derived columns from it.
    from .normalize import finish_asset
    rows = conn.execute("SELECT id, name, type, organization, created_date, access, license, data FROM assets").fetchall()
    for row in rows:
        data = json.loads(row[7] or "{}")
        data.update({k: v for k, v in zip(("name", "type", "organization", "created_date", "access", "license"),
                                          row[1:7]) if v is not None})
        deps = conn.execute("SELECT name, relation FROM dependencies WHERE asset_id=?", (row[0],)).fetchall()
        data["dependencies"] = [{"name": n, "relation": r} for n, r in deps]
        data.setdefault("source", "builtin" if data.get("source") is None else data["source"])
        asset = finish_asset(Asset.from_dict(data))
        asset.id = row[0]
        conn.execute("DELETE FROM dependencies WHERE asset_id=?", (row[0],))
        _write_derived(conn, asset, collection=data.get("collection"))


MIGRATIONS = {2: _migrate_v1_to_v2}


def _write_derived(conn: sqlite3.Connection, asset: Asset, collection: Optional[str]) -> None:
    conn.execute(
        "UPDATE assets SET name=?, type=?, organization=?, created_date=?, access=?, license=?, data=?, source=?,"
        " collection=?, origin=?, key=?, weights_license=?, code_license=?, data_license=?, params=?, tokens=?"
        " WHERE id=?",
        (asset.name, asset.type, asset.organization, asset.created_date, asset.access, asset.license,
         json.dumps(asset.to_dict(), ensure_ascii=False), asset.source, collection, asset.origin, asset.key,
         asset.weights_license, asset.code_license, asset.data_license, asset.params, asset.tokens, asset.id))
    conn.execute("DELETE FROM asset_keys WHERE asset_id=?", (asset.id,))
    conn.executemany("INSERT INTO asset_keys VALUES (?, ?)", [(asset.id, k) for k in asset.all_keys()])
    conn.executemany("INSERT INTO dependencies(asset_id, name, relation, key, position) VALUES (?, ?, ?, ?, ?)",
                     [(asset.id, d.name, d.relation, name_key(d.name), i) for i, d in enumerate(asset.dependencies)])


class Store:
    """An open catalog file. Use as a context manager or call close()."""

    def __init__(self, path: str | os.PathLike | None = None):
        self.path = Path(path) if path is not None else default_db_path()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            # Autocommit mode: transactions are explicit (see transaction()), so DDL in a migration
            # and the rows of an import commit together or not at all.
            self.conn = sqlite3.connect(str(self.path), timeout=30, isolation_level=None)
            self.conn.execute("PRAGMA foreign_keys = ON")
            self._migrate()
        except sqlite3.DatabaseError as exc:
            raise OpenseasonError(f"cannot open the catalog: {exc}", where=str(self.path),
                                  hint="pass --db with another path, or move the damaged file away") from None

    # -- schema ---------------------------------------------------------------------------------
    def version(self) -> int:
        has = self.conn.execute("SELECT name FROM sqlite_master WHERE type='table' AND name='schema_version'").fetchone()
        if not has:
            return 0
        row = self.conn.execute("SELECT MAX(version) FROM schema_version").fetchone()
        return int(row[0] or 0)

    def _migrate(self) -> None:
        version = self.version()
        if version > SCHEMA_VERSION:
            raise OpenseasonError(f"catalog schema v{version} is newer than this openseason (v{SCHEMA_VERSION})",
                                  where=str(self.path), hint="upgrade openseason or use another --db")
        if version == 0:
            with self.transaction():
                for stmt in _statements(V1_DDL):
                    self.conn.execute(stmt)
            version = 1
        for target in range(version + 1, SCHEMA_VERSION + 1):
            # One transaction per step: a crash mid-migration leaves the previous version intact.
            with self.transaction():
                MIGRATIONS[target](self.conn)
                self.conn.execute("DELETE FROM schema_version")
                self.conn.execute("INSERT INTO schema_version VALUES (?)", (target,))

    @contextlib.contextmanager
    def transaction(self):
        self.conn.execute("BEGIN IMMEDIATE")
        try:
            yield self.conn
        except BaseException:
            self.conn.execute("ROLLBACK")
            raise
        self.conn.execute("COMMIT")

    def close(self) -> None:
        self.conn.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # -- meta -----------------------------------------------------------------------------------
    def get_meta(self, key: str) -> Optional[str]:
        row = self.conn.execute("SELECT value FROM meta WHERE key=?", (key,)).fetchone()
        return row[0] if row else None

    def set_meta(self, key: str, value: str) -> None:
        with self.transaction():
            self.conn.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (key, value))

    # -- writes ---------------------------------------------------------------------------------
    def replace_collection(self, source: str, collection: str, assets: Iterable[Asset],
                           report: Optional[dict] = None) -> list[int]:
        """Replace everything one import (source + collection) wrote before with `assets`, atomically."""
        ids = []
        with self.transaction():
            self.conn.execute("DELETE FROM assets WHERE source=? AND collection=?", (source, collection))
            for asset in assets:
                asset.source = source
                cur = self.conn.execute("INSERT INTO assets(name, type, data, source) VALUES (?, ?, '{}', ?)",
                                        (asset.name, asset.type, source))
                asset.id = cur.lastrowid
                _write_derived(self.conn, asset, collection)
                ids.append(asset.id)
            if report is not None:
                self.conn.execute("INSERT INTO imports(source, collection, at, report) VALUES (?, ?, ?, ?)",
                                  (source, collection, _now(), json.dumps(report, ensure_ascii=False)))
        return ids

    def add_evaluation(self, asset_id: int, results: dict) -> None:
        with self.transaction():
            self.conn.execute("INSERT INTO evaluations(asset_id, at, results) VALUES (?, ?, ?)",
                              (asset_id, _now(), json.dumps(results, ensure_ascii=False)))

    # -- reads ----------------------------------------------------------------------------------
    def _load(self, rows) -> list[Asset]:
        out = []
        for row in rows:
            asset = Asset.from_dict(json.loads(row[1]))
            asset.id = row[0]
            asset.evaluations = [dict(json.loads(r[1]), at=r[0]) for r in self.conn.execute(
                "SELECT at, results FROM evaluations WHERE asset_id=? ORDER BY id", (row[0],))]
            out.append(asset)
        return out

    def all_assets(self) -> list[Asset]:
        return self._load(self.conn.execute("SELECT id, data FROM assets ORDER BY id"))

    def count(self, source: Optional[str] = None) -> int:
        if source:
            return self.conn.execute("SELECT COUNT(*) FROM assets WHERE source=?", (source,)).fetchone()[0]
        return self.conn.execute("SELECT COUNT(*) FROM assets").fetchone()[0]

    def by_key(self, key: str) -> list[Asset]:
        """Assets whose name, alias or hub id has this key, in insertion order."""
        return self._load(self.conn.execute(
            "SELECT DISTINCT a.id, a.data FROM assets a JOIN asset_keys k ON k.asset_id=a.id WHERE k.key=? ORDER BY a.id",
            (key,)))

    def query(self, *, type: Optional[str] = None, organization: Optional[str] = None,
              license: Optional[str] = None, access: Optional[str] = None, since: Optional[str] = None,
              until: Optional[str] = None, min_params: Optional[float] = None, max_params: Optional[float] = None,
              source: Optional[str] = None, text: Optional[str] = None, limit: Optional[int] = None) -> list[Asset]:
        """Assets matching every given filter (SQL on the indexed columns; `text` searches the record)."""
        where, args = [], []
        if type:
            where.append("type = ?"); args.append(type)
        if organization:
            where.append("LOWER(organization) LIKE ?"); args.append(f"%{organization.lower()}%")
        if license:
            from .licenses import normalize
            lid = normalize(license)
            lid = license.lower() if lid == "other" else lid
            where.append("(weights_license = ? OR code_license = ? OR data_license = ? OR LOWER(license) LIKE ?)")
            args += [lid, lid, lid, f"%{license.lower()}%"]
        if access:
            where.append("access = ?"); args.append(access.lower())
        if since:
            where.append("created_date >= ?"); args.append(since)
        if until:
            # a partial date ("2023-04") is <= every full date in that month
            where.append("substr(created_date, 1, ?) <= ?"); args += [len(until), until]
        if min_params is not None:
            where.append("params >= ?"); args.append(min_params)
        if max_params is not None:
            where.append("params <= ?"); args.append(max_params)
        if source:
            where.append("source = ?"); args.append(source)
        if text:
            where.append("(LOWER(name) LIKE ? OR LOWER(data) LIKE ?)")
            args += [f"%{text.lower()}%"] * 2
        sql = "SELECT id, data FROM assets"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY COALESCE(created_date, ''), name"
        if limit:
            sql += f" LIMIT {int(limit)}"
        return self._load(self.conn.execute(sql, args))

    def imports(self) -> list[dict]:
        return [{"source": s, "collection": c, "at": a, "report": json.loads(r)}
                for s, c, a, r in self.conn.execute("SELECT source, collection, at, report FROM imports ORDER BY id")]
