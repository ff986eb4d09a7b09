"""Few-shot interleaved episodes from the synthetic image suite (data/image_tasks.py), for Flamingo.

An episode is a conversation of k (image, label) shots and a query image, all with the same prompt
("Output:"), answered with the query's label:

    <image> Output: circle<|endofchunk|><image> Output: square<|endofchunk|><image> Output: triangle<|endofchunk|>

Each episode asks about one attribute (`tasks`, e.g. the shape or the color of a shape scene) chosen
at random, and the prompt does not say which: with no shots the model can only guess the attribute;
the shots show it. That is what in-context examples are for, and what the accuracy at 0, 2 and 4
shots measures (benchmarks/flamingo_fewshot.py).

    items = suite_items(SUITE / "train", ["shape", "color"])    # [(image path, {task: label})]
    rows = make_episodes(items, n=500, shots=(0, 4), seed=0, base=SUITE / "train", out=OUT)
    write_episodes(SUITE / "train", OUT, ...)                      # a prepared directory
"""
from __future__ import annotations

import json
import os
import random
from pathlib import Path
from typing import Optional, Sequence

from ..errors import DataError
from ..fileio import iter_jsonl
from .interleaved import few_shot_episode

PROMPT = "Output:"


def suite_items(split_dir: str | Path, tasks: Sequence[str]) -> list[tuple[str, dict]]:
    """(image path relative to split_dir, {task: label}) for every image of a suite split whose labels
    include every task in `tasks`, in file order, one entry per image."""
    split_dir = Path(split_dir)
    path = split_dir / "conversations.jsonl"
    if not path.exists():
        raise DataError("no conversations.jsonl: not a split of the synthetic image suite", where=str(split_dir),
                        hint="make one with `openseason data images --out DIR`")
    seen, items = set(), []
    for line, row in iter_jsonl(path):
        meta = row.get("meta") or {}
        labels, image_id = meta.get("labels") or {}, meta.get("image_id")
        if image_id in seen or not all(t in labels for t in tasks):
            continue
        seen.add(image_id)
        image = next((p["path"] for m in row["messages"] if isinstance(m.get("content"), list)
                      for p in m["content"] if p.get("type") == "image"), None)
        if image is None:
            raise DataError("suite record without an image part", where=f"{path}:{line}")
        items.append((image, {t: labels[t] for t in tasks}))
    if len(items) < 2:
        raise DataError(f"fewer than two images labelled with {', '.join(tasks)}", where=str(path))
    return items


def make_episodes(items: list[tuple[str, dict]], n: int, shots: Sequence[int], seed: int = 0,
                  tasks: Optional[Sequence[str]] = None, prefix: str = "") -> list[dict]:
    """`n` episode records: each picks a query image, a task and a shot count from `shots` at random
    (seeded), and k other images as shots. Image paths get `prefix` (where they are seen from)."""
    rng = random.Random(f"{seed}-episodes")
    tasks = list(tasks or items[0][1])
    rows = []
    for i in range(n):
        k, task = rng.choice(list(shots)), rng.choice(tasks)
        q, *support = rng.sample(range(len(items)), k + 1)
        part = lambda j: {"type": "image", "path": prefix + items[j][0]}   # noqa: E731
        messages = few_shot_episode([(part(j), items[j][1][task]) for j in support], part(q), PROMPT)
        label = items[q][1][task]
        rows.append({"id": f"episode-{seed}-{i}", "source": "image-episodes",
                     "messages": messages + [{"role": "assistant", "content": label}],
                     "meta": {"task": task, "shots": k, "label": label, "query": items[q][0]}})
    return rows


def write_episodes(split_dir: str | Path, out: str | Path, tasks: Sequence[str], n: int, shots: Sequence[int],
                   seed: int = 0) -> Path:
    """A prepared directory of episodes (conversations.jsonl, prompt_style.json "flamingo") whose image
    paths point at the suite split's images."""
    from ..fileio import write_jsonl_atomic
    from .prepare import write_style

    split_dir, out = Path(split_dir), Path(out)
    out.mkdir(parents=True, exist_ok=True)
    prefix = os.path.relpath(split_dir.resolve(), out.resolve()) + "/"
    rows = make_episodes(suite_items(split_dir, tasks), n, shots, seed, tasks, prefix)
    write_jsonl_atomic(out / "conversations.jsonl", rows)
    write_style(out, "flamingo")
    (out / "episodes.json").write_text(json.dumps({"tasks": list(tasks), "shots": list(shots), "n": n,
                                                   "seed": seed, "images": str(split_dir)}) + "\n")
    return out


def register_episodes(sub) -> None:
    """`openseason data episodes SPLIT_DIR --out DIR`: the CLI over write_episodes."""
    p = sub.add_parser("episodes", help="few-shot image episodes from a split of the synthetic image suite (Flamingo)",
                       description="k (image, label) shots and a query, prompted 'Output:', the attribute asked "
                                   "chosen at random per episode: a prepared directory in the flamingo style.")
    p.add_argument("split", help="a split directory written by `openseason data images` (OUT/train or OUT/eval)")
    p.add_argument("--out", required=True)
    p.add_argument("--task", action="append", required=True,
                   help="a label of the suite's scenes to ask for (repeatable: shape, color, count, digit, place)")
    p.add_argument("--n", type=int, default=1000, help="episodes (default 1000)")
    p.add_argument("--shots", default="0,1,2,3,4", help="shot counts to draw from, comma-separated (default 0..4)")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=_episodes)


def _episodes(args) -> int:
    from ..errors import ConfigError

    try:
        shots = sorted({int(k) for k in args.shots.split(",")})
    except ValueError:
        raise ConfigError(f"--shots must be comma-separated integers, not {args.shots!r}") from None
    if args.n < 1 or not shots or shots[0] < 0:
        raise ConfigError("--n must be positive and --shots non-negative")
    out = write_episodes(args.split, args.out, args.task, args.n, shots, args.seed)
    print(f"{args.n} episodes ({', '.join(args.task)}; shots {args.shots}) -> {out}")
    return 0
