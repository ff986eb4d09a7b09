"""Layout shared by the timeline PNG and the evolution tree: families as lanes over time.

* A *family* is the root of an asset's base-model chain (a finetune sits in its base's family; for
  Ecosystem Graphs, whose dependencies have no kind, a model's first open model dependency counts
  as its base). Families of one model are gathered per organization ("Google: standalone"), so
  700 assets make a few dozen lanes, not hundreds.
* The time axis covers the data's dense range (from the 5% quantile), so one 2020 model does not
  squeeze the 2023 wave against the right edge; earlier models are drawn in a marked gutter at
  the left with their real dates in the label.
* Labels never overlap: each lane has as many rows as its busiest stretch needs, a label takes the
  first row where it fits (widths measured in points for the figure's real scale), and the drawing
  reports the overlaps matplotlib measures afterwards (tests assert zero).
* Pages: `page_by="family"` splits lanes into pages of at most `max_rows` rows, `page_by="year"`
  draws one page per year; without it, a drawing taller than `max_rows` rows is paged by family.
"""
from __future__ import annotations

import datetime as _dt
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

from .graph import Graph
from .schema import BASE_RELATIONS, Asset

ROW_IN = 0.2          # height of one label row, inches
FONT = 7.0            # label font size, points
CHAR_PT = 0.62 * FONT  # upper bound of the average glyph width of DejaVu Sans at FONT
FIG_W = 16.0
RIGHT_IN = 0.3
LANE_CHARS = 34       # longer lane names are shortened with an ellipsis (the full name is in the tooltip/SVG title)
TOP_IN, BOTTOM_IN = 0.9, 0.9


def date_of(a: Asset) -> Optional[_dt.date]:
    if not a.created_date:
        return None
    try:
        parts = [int(p) for p in a.created_date.split("-")[:3]]
        while len(parts) < 3:
            parts.append(1)
        return _dt.date(*parts)
    except ValueError:
        return None


def base_of(graph: Graph, a: Asset) -> Optional[Asset]:
    """The model `a` is built from: a base relation, else (kind unstated) its first open model dependency."""
    edges = [e for e in graph.edges(a) if e.target is not None and e.target.id != a.id]
    for e in edges:
        if e.dep.relation in BASE_RELATIONS:
            return e.target
    if a.type != "model":
        return None
    models = [e.target for e in edges if e.dep.relation in ("depends", "component") and e.target.type == "model"]
    open_ = [m for m in models if m.access == "open"]
    return (open_ or models or [None])[0]


def family_of(graph: Graph, a: Asset) -> str:
    seen = set()
    while a.id not in seen:
        seen.add(a.id)
        if a.family:
            return a.family
        b = base_of(graph, a)
        if b is None:
            return a.name
        a = b
    return a.name


def dedupe(graph: Graph, assets: list[Asset]) -> list[Asset]:
    """One record per name across sources (the preferred source), so a model is drawn once."""
    best: dict[str, Asset] = {}
    for a in assets:
        cur = best.get(a.key)
        if cur is None or Graph._rank(a, None) < Graph._rank(cur, None):
            best[a.key] = a
    keep = {a.id for a in best.values()}
    return [a for a in assets if a.id in keep]


@dataclass
class Lane:
    name: str
    members: list[Asset]
    rows: int = 1
    y0: float = 0.0                     # top of the lane, in rows
    slot: dict[int, int] = field(default_factory=dict)
    right: dict[int, bool] = field(default_factory=dict)   # label right of the marker (else left)


def lanes(graph: Graph, models: list[Asset]) -> list[Lane]:
    fams: dict[str, list[Asset]] = {}
    for a in models:
        fams.setdefault(family_of(graph, a), []).append(a)
    out: dict[str, list[Asset]] = {}
    for fam, members in fams.items():
        if len(members) == 1:
            org = members[0].organization or "unknown organization"
            out.setdefault(f"{org}: standalone", []).append(members[0])
        else:
            out.setdefault(fam, []).extend(members)
    ls = [Lane(name, sorted(m, key=lambda a: (date_of(a), a.name))) for name, m in out.items()]
    return sorted(ls, key=lambda l: (date_of(l.members[0]), l.name))


def dense_range(dates: list[_dt.date], q: float = 0.10) -> tuple[_dt.date, _dt.date]:
    """(lo, hi) of the dense part of the dates: from the q-quantile (to the month), to the last date.

    Dates just before the quantile (within a quarter of the dense span) are taken in, so the cut
    falls in a gap, not in the middle of a busy stretch."""
    ds = sorted(dates)
    hi = ds[-1] + _dt.timedelta(days=20)
    i = int(q * (len(ds) - 1))
    while i > 0 and (ds[i] - ds[i - 1]).days <= 0.25 * (hi - ds[i]).days:
        i -= 1
    lo = ds[i].replace(day=1)
    if (lo - ds[0]).days < 62:
        lo = ds[0].replace(day=1)
    if (hi - lo).days < 120:
        hi = lo + _dt.timedelta(days=120)
    return lo, hi


def _lane_label(name: str) -> str:
    return name if len(name) <= LANE_CHARS else name[:LANE_CHARS - 1] + "\u2026"


def label_of(a: Asset, outlier: bool) -> str:
    return f"{a.name} ({a.created_date})" if outlier else a.name


def _place(lane: Lane, xs: dict[int, float], labels: dict[int, str], width_pt: float) -> None:
    """Give each member the first row where its marker and label fit (x in points from the axes' left)."""
    taken: list[list[tuple[float, float]]] = []
    for a in lane.members:
        x = xs[a.id]
        w = CHAR_PT * len(labels[a.id]) + 6
        lane.right[a.id] = x + 4 + w <= width_pt + RIGHT_IN * 72 - 4
        span = (x - 4, x + 4 + w) if lane.right[a.id] else (x - 4 - w, x + 4)
        for r, spans in enumerate(taken):
            if all(span[1] + 2 < s0 or span[0] > s1 + 2 for s0, s1 in spans):
                spans.append(span)
                lane.slot[a.id] = r
                break
        else:
            taken.append([span])
            lane.slot[a.id] = len(taken) - 1
    lane.rows = max(1, len(taken))


@dataclass
class Style:
    """What differs between the timeline and the tree: colours, connectors, legend."""
    color: Callable[[Asset], str]
    legend: list[tuple[str, str]]
    connectors: str = "arrows"          # "arrows" (straight, any dependency) or "elbows" (base links)


def _paths(out: Path, n: int, names: list[str]) -> list[Path]:
    if n == 1:
        return [out]
    return [out.with_name(f"{out.stem}-{name}{out.suffix}") for name in names]


def render(graph: Graph, assets, out_path, style: Style, *, title: str, page_by: Optional[str] = None,
           max_rows: int = 70, dpi: int = 100) -> dict:
    """Draw the dated models among `assets`; returns {"paths", "pages": [...per-page layout facts]}."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.dates as mdates

    with matplotlib.rc_context({"svg.fonttype": "none"}):      # SVG text stays text: searchable, small
        return _render(graph, assets, out_path, style, title, page_by, max_rows, dpi, plt, mdates)


def _render(graph, assets, out_path, style, title, page_by, max_rows, dpi, plt, mdates) -> dict:
    if page_by not in (None, "family", "year"):
        raise ValueError(f"page_by must be 'family' or 'year', not {page_by!r}")
    models = dedupe(graph, [a for a in assets if a.type == "model" and date_of(a) is not None])
    if not models:
        raise ValueError("no dated models to draw")
    out = Path(out_path)
    if out.suffix.lower() not in (".png", ".svg", ".pdf"):
        raise ValueError(f"{out}: the file name must end in .png, .svg or .pdf")
    all_lanes = lanes(graph, models)

    pages: list[tuple[str, list[Asset], Optional[tuple]]] = []
    if page_by == "year":
        years = sorted({date_of(a).year for a in models})
        for y in years:
            pages.append((str(y), [a for a in models if date_of(a).year == y],
                          (_dt.date(y, 1, 1), _dt.date(y, 12, 31))))
    else:
        pages.append(("all", models, None))

    longest = max(len(_lane_label(l.name)) for l in all_lanes)
    left_in = 0.35 + longest * 0.6 * 8 / 72          # lane names at 8 pt are never cut
    width_pt = (FIG_W - left_in - RIGHT_IN) * 72
    drawn = []
    for page_name, members, xr in pages:
        ids = {a.id for a in members}
        page_lanes = [Lane(l.name, [a for a in l.members if a.id in ids]) for l in all_lanes]
        page_lanes = [l for l in page_lanes if l.members]
        lo, hi = xr or dense_range([date_of(a) for a in members])
        gutter = (hi - lo).days * 0.07 if any(date_of(a) < lo for a in members) else 0.0
        x0 = mdates.date2num(lo) - gutter
        x1 = mdates.date2num(hi)
        xs, labels, outliers = {}, {}, []
        for a in members:
            d = date_of(a)
            outl = d < lo
            if outl:
                outliers.append(a.name)
            xd = (x0 + gutter * 0.35) if outl else mdates.date2num(min(d, hi))
            xs[a.id] = (xd - x0) / (x1 - x0) * width_pt
            labels[a.id] = label_of(a, outl)
        for l in page_lanes:
            _place(l, xs, labels, width_pt)
        # pages of lanes: by family when asked, or when one drawing would be taller than max_rows
        chunks, cur, rows = [], [], 0
        for l in page_lanes:
            if cur and rows + l.rows > max_rows and (page_by == "family" or page_by is None):
                chunks.append(cur)
                cur, rows = [], 0
            cur.append(l)
            rows += l.rows
        chunks.append(cur)
        for ci, chunk in enumerate(chunks):
            suffix = page_name if page_by == "year" else f"p{ci + 1}"
            drawn.append((suffix, chunk, x0, x1, lo, gutter, xs, labels, outliers, len(chunks)))

    names = [d[0] for d in drawn]
    paths = _paths(out, len(drawn), names)
    out.parent.mkdir(parents=True, exist_ok=True)
    facts = []
    for (suffix, chunk, x0, x1, lo, gutter, xs, labels, outliers, nchunks), path in zip(drawn, paths):
        total_rows = sum(l.rows for l in chunk)
        y = 0.0
        for l in chunk:
            l.y0 = y
            y += l.rows + 0.6
        height = TOP_IN + BOTTOM_IN + (y + 0.4) * ROW_IN
        fig = plt.figure(figsize=(FIG_W, height))
        ax = fig.add_axes([left_in / FIG_W, BOTTOM_IN / height, (FIG_W - left_in - RIGHT_IN) / FIG_W,
                           (height - TOP_IN - BOTTOM_IN) / height])
        ax.set_xlim(x0, x1)
        ax.set_ylim(y + 0.4, -0.4)
        pos = {}
        for i, l in enumerate(chunk):
            if i % 2 == 0:
                ax.axhspan(l.y0 - 0.3, l.y0 + l.rows - 0.3, color="#f3f5f7", zorder=0)
            for a in l.members:
                xd = x0 + xs[a.id] / ((FIG_W - left_in - RIGHT_IN) * 72) * (x1 - x0)
                pos[a.id] = (xd, l.y0 + l.slot[a.id] + 0.2)
        texts, pts = [], {"o": ([], [], []), "<": ([], [], [])}
        for l in chunk:
            for a in l.members:
                xd, yy = pos[a.id]
                outl = a.name in outliers and date_of(a) < lo
                px, py, pc = pts["<" if outl else "o"]
                px.append(xd); py.append(yy); pc.append(style.color(a))
                right = l.right[a.id]
                texts.append(ax.annotate(labels[a.id], (xd, yy), xytext=(5 if right else -5, -0.5),
                                         textcoords="offset points", fontsize=FONT, va="center",
                                         ha="left" if right else "right", parse_math=False, zorder=4))
        for marker, (px, py, pc) in pts.items():   # one scatter per marker kind, not one per model
            if px:
                ax.scatter(px, py, s=28, marker=marker, c=pc, zorder=3, edgecolors="black", linewidths=0.4)
        # connectors as two line collections (one annotate() per edge took most of the drawing time)
        from matplotlib.collections import LineCollection
        solid, dotted = [], []
        for a_id, (xd, yy) in pos.items():
            a = graph.by_id[a_id]
            base = base_of(graph, a)
            for e in graph.edges(a):
                if e.target is None or e.target.id not in pos or e.target.id == a_id:
                    continue
                bx, by = pos[e.target.id]
                if style.connectors == "elbows":
                    if base is e.target:
                        solid.append([(bx, by), (bx, yy), (xd, yy)])
                    else:
                        dotted.append([(bx, by), (xd, yy)])
                elif e.dep.relation in BASE_RELATIONS + ("component", "depends"):
                    solid.append([(bx, by), (xd, yy)])
        ax.add_collection(LineCollection(solid, colors="#78909c", linewidths=0.7, alpha=0.75, zorder=1))
        ax.add_collection(LineCollection(dotted, colors="#b0bec5", linewidths=0.6, linestyles=":", zorder=1))
        ax.set_yticks([l.y0 + (l.rows - 1) / 2 + 0.2 for l in chunk])
        ax.set_yticklabels([_lane_label(l.name) for l in chunk], fontsize=8, parse_math=False)
        ax.tick_params(axis="y", length=0)
        ax.xaxis.set_major_locator(mdates.AutoDateLocator(minticks=6, maxticks=14))
        ax.xaxis.set_major_formatter(mdates.ConciseDateFormatter(ax.xaxis.get_major_locator()))
        ax.tick_params(axis="x", top=True, labeltop=True, labelsize=8)   # dates at the top as well
        ax.grid(axis="x", alpha=0.35)
        if gutter:
            edge = mdates.date2num(lo)
            ax.axvspan(x0, edge, color="#eceff1", zorder=0)
            ax.axvline(edge, color="#546e7a", ls="--", lw=0.8)
            ax.text(edge, y + 0.3, " earlier models (real dates in labels) | dense range from " + lo.isoformat()[:7] + " ",
                    ha="right", va="bottom", fontsize=7, color="#546e7a")
        for label, color in style.legend:
            ax.scatter([], [], color=color, edgecolor="black", linewidth=0.4, label=label)
        fig.legend(loc="upper right", fontsize=7, ncol=len(style.legend), frameon=False,
                   bbox_to_anchor=(1 - RIGHT_IN / FIG_W, 1 - 0.05 / height))
        page_title = title + (f" -- {suffix}" if page_by == "year" else (f" (page {suffix[1:]} of {nchunks})" if nchunks > 1 else ""))
        fig.text(left_in / FIG_W, 1 - 0.08 / height, page_title, fontsize=11, va="top", parse_math=False)
        renderer = fig.canvas.get_renderer()     # text extents need layout only, not a full draw
        boxes = [t.get_window_extent(renderer) for t in texts]
        overlaps = sum(1 for i in range(len(boxes)) for j in range(i + 1, len(boxes))
                       if boxes[i].overlaps(boxes[j]) and boxes[i].intersection(boxes[i], boxes[j]).width > 1
                       and boxes[i].intersection(boxes[i], boxes[j]).height > 1)
        tmp = path.with_name(f".{path.name}.tmp{path.suffix}")
        fig.savefig(tmp, dpi=dpi, format=path.suffix[1:].lower())
        w_px, h_px = fig.get_size_inches() * dpi
        plt.close(fig)
        tmp.replace(path)
        facts.append({"path": str(path), "lanes": [l.name for l in chunk], "rows": total_rows,
                      "assets": sum(len(l.members) for l in chunk), "xlim": (mdates.num2date(x0).date().isoformat(),
                                                                             mdates.num2date(x1).date().isoformat()),
                      "dense_from": lo.isoformat(), "outliers": [n for l in chunk for n in
                                                                 (a.name for a in l.members) if n in outliers],
                      "label_overlaps": overlaps, "size_px": (round(w_px), round(h_px))})
    return {"paths": [str(p) for p in paths], "pages": facts}
