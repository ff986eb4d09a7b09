"""Evaluation reports: JSON plus a short markdown page with plots, attached to the checkpoint's run card
(and to its catalog entry when the catalog knows it)."""
from __future__ import annotations

import datetime as _dt
import warnings
from pathlib import Path
from typing import Optional

from ..fileio import write_json_atomic, write_text_atomic


def _md_value(value) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def write_report(out_dir: str | Path, kind: str, summary: dict, *, details: Optional[dict] = None,
                 plots: tuple[str, ...] = (), checkpoint: Optional[str | Path] = None) -> Path:
    """Write OUT/report.json and OUT/report.md; attach `summary` to the checkpoint's run card."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    stamp = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    record = {"kind": kind, "created": stamp, "checkpoint": str(checkpoint) if checkpoint else None,
              "summary": summary, **({"details": details} if details else {})}
    write_json_atomic(out / "report.json", record)
    lines = [f"# {kind} evaluation", "", f"- checkpoint: `{checkpoint}`" if checkpoint else "", f"- date: {stamp}", "",
             "| metric | value |", "|---|---|"]
    lines += [f"| {k} | {_md_value(v)} |" for k, v in summary.items() if not isinstance(v, (dict, list))]
    for plot in plots:
        lines += ["", f"![{Path(plot).stem}]({Path(plot).name})"]
    write_text_atomic(out / "report.md", "\n".join(line for line in lines if line is not None) + "\n")
    if checkpoint:
        attach_to_checkpoint(checkpoint, kind, {"created": stamp, "report": str(out / "report.json"), **summary})
    return out / "report.json"


def attach_to_checkpoint(checkpoint: str | Path, kind: str, summary: dict) -> None:
    """Record results under run_card["evaluations"][kind]; also in the catalog if it has the model."""
    from ..checkpoint import read_run_card, update_run_card

    evaluations = read_run_card(checkpoint).get("evaluations", {})
    evaluations[kind] = summary
    update_run_card(checkpoint, evaluations=evaluations)
    entry = read_run_card(checkpoint).get("catalog")
    if not isinstance(entry, dict) or not entry.get("name"):
        return  # never registered (e.g. a converted download): nothing to attach to
    from ..catalog import attach_evaluation

    try:
        attach_evaluation(entry["name"], {kind: summary}, db=entry.get("db"))
    except Exception as exc:  # the catalog is a convenience here; the run card already holds the results
        warnings.warn(f"could not attach evaluation to the catalog: {exc}")
