"""The per-run report: counts per filter, diversity, cost; report.json, report.md and rouge_hist.png.

Diversity follows the Self-Instruct paper's analysis (the verb closest to the root of each
instruction and its first direct-object noun), but with a small heuristic parser instead of a
constituency parser, so nothing has to be downloaded: it strips politeness ("please", "can you"), skips
a leading "Given ..., " clause, takes the first word as the verb (questions starting with a wh-word or
an auxiliary have no verb-noun pair, as in the paper's figure), and takes as the noun the first later
word that is not a determiner, pronoun, number or common adjective, stopping at a preposition.
"""
from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Optional, Sequence

from ..fileio import atomic_open, write_json_atomic, write_text_atomic

_POLITE = ("please ", "kindly ", "can you ", "could you ", "would you ", "will you ", "i want you to ",
           "i need you to ", "help me ", "now ", "also ")
_CLAUSE_STARTS = {"given", "using", "based", "for", "in", "from", "with", "if", "after", "consider", "imagine",
                  "suppose", "assuming", "as", "when", "by"}
_QUESTION = {"what", "how", "why", "who", "whom", "whose", "when", "where", "which", "is", "are", "was", "were",
             "can", "could", "do", "does", "did", "should", "would", "will", "have", "has", "am", "may", "i", "my",
             "there", "it", "this", "the", "a", "an"}
_SKIP = {"a", "an", "the", "some", "any", "this", "that", "these", "those", "my", "your", "his", "her", "its", "our",
         "their", "me", "us", "him", "them", "it", "you", "one", "two", "three", "four", "five", "ten", "few",
         "several", "many", "short", "brief", "new", "good", "simple", "creative", "detailed", "funny", "catchy",
         "persuasive", "random", "possible", "different", "unique", "interesting", "common", "main", "following",
         "given", "original", "appropriate", "suitable", "better", "best", "more", "most", "single", "whole",
         "complete", "concise", "formal", "informal", "professional", "polite", "first", "second", "next", "all"}
_PREPOSITIONS = {"to", "for", "about", "of", "in", "on", "with", "from", "into", "by", "at", "as", "between",
                 "whether", "if", "how", "what", "why", "which", "who", "that", "and", "or", "up", "down", "out"}


def verb_noun(instruction: str) -> tuple[Optional[str], Optional[str]]:
    """Heuristic (verb, direct-object noun) of an imperative instruction; (None, None) for questions."""
    text = instruction.strip().lower()
    changed = True
    while changed:
        changed = False
        for p in _POLITE:
            if text.startswith(p):
                text, changed = text[len(p):], True
    words = [w.strip(".,;:!?\"'()[]") for w in text.split()]
    words = [w for w in words if w]
    if words and words[0] in _CLAUSE_STARTS and "," in text:
        words = [w.strip(".,;:!?\"'()[]") for w in text.split(",", 1)[1].split()]
        words = [w for w in words if w]
    if not words or words[0] in _QUESTION or not words[0].isalpha():
        return None, None
    verb = words[0]
    for w in words[1:]:
        if w in _PREPOSITIONS:
            return verb, None
        if w in _SKIP or not w.isalpha():
            continue
        return verb, w
    return verb, None


def diversity(instructions: Sequence[str], top: int = 20) -> dict:
    pairs = [verb_noun(i) for i in instructions]
    verbs = Counter(v for v, _ in pairs if v)
    vn = Counter((v, n) for v, n in pairs if v and n)
    top_verbs = []
    for verb, count in verbs.most_common(top):
        nouns = Counter(n for v, n in pairs if v == verb and n)
        top_verbs.append({"verb": verb, "count": count, "top_nouns": [n for n, _ in nouns.most_common(4)]})
    return {"parser": "heuristic (openseason.synth.report.verb_noun; no spaCy/benepar model)",
            "instructions": len(instructions), "with_verb": sum(1 for v, _ in pairs if v),
            "with_verb_noun": sum(vn.values()), "unique_verbs": len(verbs), "unique_verb_noun_pairs": len(vn),
            "top_verbs": top_verbs}


def rouge_histogram(scores: Sequence[float], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.hist(list(scores), bins=[i / 20 for i in range(21)], color="#4c72b0", edgecolor="white")
    ax.set_xlabel("highest ROUGE-L to the pool when kept")
    ax.set_ylabel("instructions")
    ax.set_title(title)
    fig.tight_layout()
    with atomic_open(path, "wb") as handle:
        fig.savefig(handle, format="png", dpi=100)
    plt.close(fig)


def run_status(problems: Sequence[str]) -> dict:
    """{"status", "ok"} for a report: "complete" only when nothing went wrong; else "incomplete: "
    and every problem (failed calls, nothing kept, stopped early). The CLI exits 1 when not ok."""
    problems = [p for p in problems if p]
    if not problems:
        return {"status": "complete", "ok": True}
    return {"status": "incomplete: " + "; ".join(problems), "ok": False}


def _markdown(report: dict) -> str:
    lines = [f"# Synthetic data run: {report['run'].get('recipe', report['run'].get('stage', ''))}", "",
             f"status: {report['status']}", ""]
    lines += ["## Counts", ""] + [f"- {k}: {v}" for k, v in report["counts"].items()] + [""]
    if report.get("fitted"):
        lines += ["## Fitted to the backend's context (calls, what was cut)", ""]
        for stage, notes in report["fitted"].items():
            lines += [f"- {stage}: {note}: {n}" for note, n in notes.items()]
        lines.append("")
    lines += ["## Filters (kept and rejected, per reason)", ""]
    for stage, reasons in report.get("filters", {}).items():
        lines.append(f"### {stage}")
        lines += [f"- {reason}: {n}" for reason, n in sorted(reasons.items(), key=lambda kv: -kv[1])] + [""]
    if "diversity" in report:
        d = report["diversity"]
        lines += ["## Diversity", "", f"parser: {d['parser']}",
                  f"unique verbs: {d['unique_verbs']}; unique verb-noun pairs: {d['unique_verb_noun_pairs']} "
                  f"({d['with_verb_noun']} of {d['instructions']} instructions have one)", ""]
        lines += [f"- {v['verb']} ({v['count']}): {', '.join(v['top_nouns'])}" for v in d["top_verbs"]] + [""]
    if "rouge_l_to_pool" in report:
        r = report["rouge_l_to_pool"]
        lines += ["## Highest ROUGE-L to the pool (kept instructions)", "",
                  f"mean {r['mean']:.3f}, max {r['max']:.3f}; histogram: rouge_hist.png", ""]
    lines += ["## Cost", ""] + [f"- {k}: {v}" for k, v in report["cost"].items()] + [""]
    return "\n".join(lines)


def write_report(out: Path, report: dict, instructions: Sequence[str] = (),
                 max_scores: Sequence[Optional[float]] = ()) -> dict:
    """Add diversity and the ROUGE-L histogram to `report`; write report.json, report.md, rouge_hist.png."""
    out = Path(out)
    if instructions:
        report["diversity"] = diversity(instructions)
    scores = [s for s in max_scores if s is not None]
    if scores:
        report["rouge_l_to_pool"] = {"mean": sum(scores) / len(scores), "max": max(scores), "n": len(scores)}
        rouge_histogram(scores, out / "rouge_hist.png", f"{len(scores)} kept instructions")
    write_json_atomic(out / "report.json", report)
    write_text_atomic(out / "report.md", _markdown(report))
    return report
