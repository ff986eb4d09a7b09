"""`openseason data stats DIR`: what is in a prepared directory.

Counts per source, category, language and number of user turns, token length percentiles, and a
histogram of lengths as a PNG (stats.json and length_histogram.png next to the data). Lengths are
tokens of the rendered prompt style when a tokenizer is given, whitespace words otherwise (the
report says which).
"""
from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Optional

import numpy as np

from ..errors import DataError
from ..fileio import atomic_open, iter_jsonl, write_json_atomic
from ..prompts import get_style
from .records import KINDS, record_text
from .sft import prepared_style, style_messages


def stats(prepared_dir, tokenizer=None, png: Optional[str] = None, bins: int = 40) -> dict:
    directory = Path(prepared_dir)
    files = [(kind, directory / name) for kind, name in KINDS.items() if (directory / name).exists()]
    if not files:
        raise DataError("no conversations/preferences/documents.jsonl here", where=str(directory),
                        hint="run `openseason data prepare` first")
    if isinstance(tokenizer, (str, Path)):
        from ..tokenizer import Tokenizer

        tokenizer = Tokenizer.from_dir(tokenizer)
    style = get_style(prepared_style(directory) or "plain")
    out = {"dir": str(directory), "style": style.name, "unit": "tokens" if tokenizer else "words", "kinds": {}}
    lengths = []
    by = {"source": Counter(), "category": Counter(), "lang": Counter(), "turns": Counter()}
    for kind, file in files:
        n = 0
        for _, row in iter_jsonl(file):
            n += 1
            meta = row.get("meta") or {}
            by["source"][str(row.get("source"))] += 1
            if meta.get("category") is not None:
                by["category"][str(meta["category"])] += 1
            if meta.get("lang") is not None:
                by["lang"][str(meta["lang"])] += 1
            if kind == "conversation":
                by["turns"][str(sum(m.get("role") == "user" for m in row.get("messages", [])))] += 1
                text = style.render(style_messages(row), add_generation_prompt=False)
            else:
                text = record_text(row)
            lengths.append(len(tokenizer.encode(text)) if tokenizer else len(text.split()))
        out["kinds"][kind] = n
    for key, counter in by.items():
        if counter:
            out[key] = dict(sorted(counter.items(), key=lambda kv: (-kv[1], kv[0])))
    arr = np.array(lengths)
    out["length"] = {"min": int(arr.min()), "mean": round(float(arr.mean()), 1),
                     **{f"p{q}": int(np.percentile(arr, q)) for q in (50, 90, 99)}, "max": int(arr.max())}
    png = Path(png) if png else directory / "length_histogram.png"
    _histogram(arr, png, f"{directory.name}: {len(arr)} records ({style.name} style)", out["unit"], bins)
    out["histogram"] = str(png)
    write_json_atomic(directory / "stats.json", out)
    return out


def _histogram(lengths: np.ndarray, png: Path, title: str, unit: str, bins: int) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    ax.hist(lengths, bins=bins, color="#4C72B0")
    ax.set_xlabel(f"length ({unit})")
    ax.set_ylabel("records")
    ax.set_title(title)
    for q, style in ((50, "--"), (99, ":")):
        ax.axvline(np.percentile(lengths, q), color="k", linestyle=style, linewidth=1, label=f"p{q}")
    ax.legend()
    fig.tight_layout()
    with atomic_open(png, "wb") as handle:
        fig.savefig(handle, dpi=100, format="png")
    plt.close(fig)
