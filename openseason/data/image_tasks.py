"""A built-in synthetic image task suite (offline; the multimodal demos train and evaluate on it).

Each family draws a scene from a seeded rng, renders it with Pillow and knows its caption, its
questions with exact answers, and its class labels (for zero-shot classification):

    shape   one shape of one color at one of five places  "a red circle at the top left"
            Q: What shape is this? -> circle | What color is the shape? -> red | Where is the shape? -> top left
    count   1-4 shapes of one kind and color               "three blue squares"
            Q: How many shapes are there? -> 3 | What shape are they? -> square | What color are they? -> blue
    digit   a handwritten digit from scikit-learn's load_digits, tinted  "the digit 7 in green"
            Q: Which digit is this? -> 7 | What color is the digit? -> green
    pair    two shapes side by side                        "a red circle left of a blue triangle"
            Q: What shape is on the left? -> circle | What color is the shape on the right? -> blue

Sizes and positions are jittered, so no two images repeat. Held-out digits come from a disjoint
part of load_digits (the last 20% of its 1797 samples) and held-out scenes from a different seed
stream. `write_suite` writes DIR/train and DIR/eval as prepared directories (conversations.jsonl
with image parts, images/*.png, report.json, rejects.jsonl, prompt_style.json) and DIR/suite.json.
"""
from __future__ import annotations

import random
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Callable, Optional

COLORS = {"red": (220, 40, 40), "green": (40, 170, 60), "blue": (40, 80, 220), "yellow": (235, 205, 30),
          "purple": (140, 60, 190), "orange": (245, 140, 20)}
SHAPES = ("circle", "square", "triangle", "cross")
PLACES = {"top left": (0.28, 0.28), "top right": (0.72, 0.28), "bottom left": (0.28, 0.72),
          "bottom right": (0.72, 0.72), "center": (0.5, 0.5)}
NUMBERS = {1: "one", 2: "two", 3: "three", 4: "four"}
PLURAL = {"circle": "circles", "square": "squares", "triangle": "triangles", "cross": "crosses"}
DIGIT_NAMES = tuple(str(d) for d in range(10))
HELDOUT_DIGIT_FRACTION = 0.2
CAPTION_PROMPT = "Describe the image."
BACKGROUND = (245, 245, 240)


@dataclass
class Scene:
    """What an image shows: how to draw it, its caption, (question, answer) pairs and class labels."""

    family: str
    draw: list = field(default_factory=list)      # ("shape", kind, color, cx, cy, r) | ("digit", index, color, cx, cy, r)
    caption: str = ""
    qa: list = field(default_factory=list)
    labels: dict = field(default_factory=dict)    # task -> class name, e.g. {"shape": "circle", "color": "red"}
    facts: list = field(default_factory=list)     # what the caption says, as order-free phrases: ["red", "circle", "top left"]


def _a(word: str) -> str:
    return f"an {word}" if word[0] in "aeiou" else f"a {word}"


def _jitter(rng: random.Random, value: float, amount: float = 0.04) -> float:
    return value + rng.uniform(-amount, amount)


def shape_caption(kind: str, color: str, place: str) -> str:
    return f"{_a(color)} {kind} " + (f"at the {place}" if place != "center" else "in the center")


def count_caption(n: int, kind: str, color: str) -> str:
    return f"one {color} {kind}" if n == 1 else f"{NUMBERS[n]} {color} {PLURAL[kind]}"


def digit_caption(label: str, color: str) -> str:
    return f"the digit {label} in {color}"


def pair_caption(k1: str, c1: str, k2: str, c2: str) -> str:
    return f"{_a(c1)} {k1} left of {_a(c2)} {k2}"


def label_space(family: str) -> list[tuple[dict, str]]:
    """Every (labels, caption) a family can produce: the class prompts of zero-shot classification
    (a class's text embedding is the mean over the captions carrying its label) and the vocabulary."""
    colors = list(COLORS)
    if family == "shape":
        return [({"shape": k, "color": c, "place": p}, shape_caption(k, c, p))
                for k in SHAPES for c in colors for p in PLACES]
    if family == "count":
        return [({"count": str(n), "shape": k, "color": c}, count_caption(n, k, c))
                for n in NUMBERS for k in SHAPES for c in colors]
    if family == "digit":
        return [({"digit": d, "color": c}, digit_caption(d, c)) for d in DIGIT_NAMES for c in colors]
    if family == "pair":
        return [({"left": k1, "right": k2}, pair_caption(k1, c1, k2, c2))
                for k1 in SHAPES for k2 in SHAPES if k1 != k2 for c1 in colors for c2 in colors if c1 != c2]
    raise KeyError(f"unknown image task family {family!r}; known: {', '.join(FAMILIES)}")


def shape_scene(rng: random.Random, digits=None) -> Scene:
    kind, color, place = rng.choice(SHAPES), rng.choice(list(COLORS)), rng.choice(list(PLACES))
    cx, cy = PLACES[place]
    r = rng.uniform(0.13, 0.19)
    return Scene("shape", [("shape", kind, color, _jitter(rng, cx), _jitter(rng, cy), r)],
                 shape_caption(kind, color, place),
                 [("What shape is this?", kind), ("What color is the shape?", color), ("Where is the shape?", place)],
                 {"shape": kind, "color": color, "place": place}, [color, kind, place])


def count_scene(rng: random.Random, digits=None) -> Scene:
    kind, color, n = rng.choice(SHAPES), rng.choice(list(COLORS)), rng.randint(1, 4)
    slots = rng.sample(list(PLACES.values()), n)
    r = rng.uniform(0.09, 0.12)
    draw = [("shape", kind, color, _jitter(rng, x, 0.03), _jitter(rng, y, 0.03), r) for x, y in slots]
    return Scene("count", draw, count_caption(n, kind, color),
                 [("How many shapes are there?", str(n)), ("What shape are they?", kind),
                  ("What color are they?", color)],
                 {"count": str(n), "shape": kind, "color": color},
                 ["one" if n == 1 else NUMBERS[n], color, kind if n == 1 else PLURAL[kind]])


def digit_scene(rng: random.Random, digits=None) -> Scene:
    pool = digits if digits is not None else digit_pool("train")
    index = rng.choice(pool)
    label = str(int(_digits().target[index]))
    color = rng.choice(list(COLORS))
    return Scene("digit", [("digit", index, color, _jitter(rng, 0.5), _jitter(rng, 0.5), rng.uniform(0.3, 0.38))],
                 digit_caption(label, color),
                 [("Which digit is this?", label), ("What color is the digit?", color)],
                 {"digit": label, "color": color}, [f"digit {label}", color])


def pair_scene(rng: random.Random, digits=None) -> Scene:
    (k1, k2), (c1, c2) = rng.sample(SHAPES, 2), rng.sample(list(COLORS), 2)
    y, r = _jitter(rng, 0.5, 0.1), rng.uniform(0.13, 0.17)
    draw = [("shape", k1, c1, _jitter(rng, 0.27), y, r), ("shape", k2, c2, _jitter(rng, 0.73), y, r)]
    return Scene("pair", draw, pair_caption(k1, c1, k2, c2),
                 [("What shape is on the left?", k1), ("What shape is on the right?", k2),
                  ("What color is the shape on the left?", c1), ("What color is the shape on the right?", c2)],
                 {"left": k1, "right": k2}, [f"left {c1} {k1}", f"right {c2} {k2}"])


FAMILIES: dict[str, Callable[..., Scene]] = {"shape": shape_scene, "count": count_scene, "digit": digit_scene,
                                            "pair": pair_scene}


@lru_cache(maxsize=1)
def _digits():
    from sklearn.datasets import load_digits

    return load_digits()


def digit_pool(split: str) -> list[int]:
    """Indices of load_digits samples for `split`: train the first 80%, eval the last 20%."""
    n = len(_digits().target)
    cut = int(n * (1 - HELDOUT_DIGIT_FRACTION))
    return list(range(cut)) if split == "train" else list(range(cut, n))


def render(scene: Scene, size: int = 64):
    """The scene as an RGB PIL image of `size` x `size` pixels."""
    from PIL import Image, ImageDraw

    image = Image.new("RGB", (size, size), BACKGROUND)
    draw = ImageDraw.Draw(image)
    for item in scene.draw:
        if item[0] == "digit":
            _draw_digit(image, *item[1:], size=size)
        else:
            _draw_shape(draw, *item[1:], size=size)
    return image


def _draw_shape(draw, kind: str, color: str, cx: float, cy: float, r: float, size: int) -> None:
    fill = COLORS[color]
    x, y, s = cx * size, cy * size, r * size
    if kind == "circle":
        draw.ellipse([x - s, y - s, x + s, y + s], fill=fill)
    elif kind == "square":
        draw.rectangle([x - s * 0.85, y - s * 0.85, x + s * 0.85, y + s * 0.85], fill=fill)
    elif kind == "triangle":
        draw.polygon([(x, y - s), (x - s, y + s * 0.8), (x + s, y + s * 0.8)], fill=fill)
    else:  # cross
        w = s * 0.35
        draw.rectangle([x - s, y - w, x + s, y + w], fill=fill)
        draw.rectangle([x - w, y - s, x + w, y + s], fill=fill)


def _draw_digit(image, index: int, color: str, cx: float, cy: float, r: float, size: int) -> None:
    import numpy as np
    from PIL import Image

    side = max(8, int(round(2 * r * size)))
    ink = Image.fromarray((_digits().images[index] / 16.0 * 255).astype(np.uint8)).resize((side, side), Image.BILINEAR)
    left, top = int(round(cx * size - side / 2)), int(round(cy * size - side / 2))
    image.paste(Image.new("RGB", (side, side), COLORS[color]), (left, top), ink)


def sample_scenes(n: int, seed: int = 0, split: str = "train", families=tuple(FAMILIES)) -> list[Scene]:
    """`n` scenes cycling through `families` in a seeded order; eval scenes use another seed stream
    and the held-out digits."""
    unknown = [f for f in families if f not in FAMILIES]
    if unknown:
        raise KeyError(f"unknown image task family {unknown[0]!r}; known: {', '.join(FAMILIES)}")
    if split not in ("train", "eval"):
        raise ValueError(f"split must be train or eval, not {split!r}")
    rng = random.Random(f"{seed}-images-{split}")
    pool = digit_pool(split)
    return [FAMILIES[families[i % len(families)]](rng, pool) for i in range(n)]


def scene_records(scene: Scene, image_path: str, image_id: str, split: str,
                  tasks: Optional[set] = None) -> list[dict]:
    """A scene's conversation records: one caption record and one per question, each a user turn with
    the image part and the text, and the assistant's answer."""
    meta = {"family": scene.family, "image_id": image_id, "split": split, "labels": scene.labels,
            "facts": scene.facts, "source": "openseason.data.image_tasks"}
    rows = []
    for i, (question, answer) in enumerate([(CAPTION_PROMPT, scene.caption), *scene.qa]):
        task = "caption" if i == 0 else "vqa"
        if tasks is not None and task not in tasks:
            continue
        rows.append({"id": f"{image_id}-{i}", "source": "images",
                     "messages": [{"role": "user", "content": [{"type": "image", "path": image_path},
                                                              {"type": "text", "text": question}]},
                                  {"role": "assistant", "content": answer}],
                     "meta": {**meta, "task": task}})
    return rows


SUITE_FILE = "suite.json"
SPLITS = ("train", "eval")


def _write_split(directory, scenes: list[Scene], split: str, size: int, style: str) -> dict:
    import json
    import os

    from ..fileio import write_json_atomic, write_jsonl_atomic
    from .prepare import REJECTS, REPORT, write_style
    from .records import Conversation

    images = directory / "images"
    images.mkdir(parents=True)
    written = 0
    with open(directory / "conversations.jsonl", "w", encoding="utf-8") as handle:
        for i, scene in enumerate(scenes):
            image_id = f"{split}-{i:06d}"
            rel = f"images/{image_id}.png"
            render(scene, size).save(directory / rel)
            for row in scene_records(scene, rel, image_id, split):
                Conversation.from_dict(row).validate(f"{image_id}")
                handle.write(json.dumps(row, ensure_ascii=False) + "\n")
                written += 1
        handle.flush()
        os.fsync(handle.fileno())
    write_jsonl_atomic(directory / REJECTS, [])
    write_style(directory, style)
    report = {"source": "images", "mode": "sft", "style": style, "read": written, "written": written,
              "written_by_kind": {"conversation": written}, "rejected": {}, "images": len(scenes), "split": split,
              "families": sorted({s.family for s in scenes})}
    write_json_atomic(directory / REPORT, report)
    return report


def write_suite(out, n: int = 2000, seed: int = 0, n_eval: Optional[int] = None, size: int = 64,
                families=None, style: str = "chatml", overwrite: bool = False) -> dict:
    """Render `n` training and `n_eval` (default n // 5) held-out scenes into OUT/train and OUT/eval
    (prepared directories whose conversations carry image parts) and OUT/suite.json, written last.
    Holds OUT's lock; a non-empty OUT is refused unless `overwrite`."""
    import os
    import shutil
    from pathlib import Path

    from ..errors import ConfigError
    from ..fileio import fsync_dir, io_error, lock_directory, output_staging, refuse_non_empty, write_json_atomic

    n_eval = n // 5 if n_eval is None else n_eval
    families = tuple(families or FAMILIES)
    if n < 1 or n_eval < 0:
        raise ConfigError("--n must be at least 1 and --eval at least 0")
    if not 16 <= size <= 1024:
        raise ConfigError(f"--size must be 16..1024 pixels, not {size}")
    try:
        scenes = {"train": sample_scenes(n, seed, "train", tuple(families)),
                  "eval": sample_scenes(n_eval, seed, "eval", tuple(families))}
    except KeyError as exc:
        raise ConfigError(exc.args[0]) from None
    out = Path(out)
    try:
        out.mkdir(parents=True, exist_ok=True)
        with lock_directory(out):
            refuse_non_empty(out, overwrite)
            with output_staging(out) as stage:
                reports = {split: _write_split(stage / split, scenes[split], split, size, style) for split in SPLITS}
                suite = {"kind": "openseason-image-suite", "seed": seed, "size": size, "families": list(families),
                         "images": {s: len(scenes[s]) for s in SPLITS},
                         "records": {s: reports[s]["written"] for s in SPLITS}}
                (out / SUITE_FILE).unlink(missing_ok=True)   # the suite is incomplete until it is back
                fsync_dir(out)
                for split in SPLITS:
                    if (out / split).exists():
                        shutil.rmtree(out / split)
                    os.replace(stage / split, out / split)
                write_json_atomic(out / SUITE_FILE, suite)
                fsync_dir(out)
    except OSError as exc:
        raise io_error(exc, out) from None
    return suite
