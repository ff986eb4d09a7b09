"""COCO caption annotations: one JSON object {"images": [{"id", "file_name", ...}],
"annotations": [{"id", "image_id", "caption"}]} (captions_train2017.json and the Karpathy-split
files have this shape).

Modes:
    captions  one conversation per caption: user [image, "Describe the image."] -> the caption
    images    one per image: the first caption is the reply, every caption in meta.references (the
              reference set CIDEr-style and BLEU evaluation compare against)

Errors name the file and the line where the bad element starts ("captions.json:812"): an annotation
without a string caption, or naming an image_id that `images` does not list.
"""
from __future__ import annotations

from ...errors import DataError, where as fmt_where
from ...fileio import open_text, read_json_object
from ..image_tasks import CAPTION_PROMPT
from ..records import Conversation
from .base import json_element_lines
from .images import image_file

NAME = "coco"
DEFAULT_STYLE = "vicuna"
MODES = ("captions", "images")


def _load(path) -> tuple[dict, str]:
    doc = read_json_object(path, DataError)
    with open_text(path) as handle:
        text = handle.read()
    if not isinstance(doc, dict) or not isinstance(doc.get("images"), list) or not isinstance(doc.get("annotations"), list):
        raise DataError("a COCO caption file is an object with 'images' and 'annotations' lists", where=str(path))
    return doc, text


def read(paths, ctx, mode="captions", image_root=None, **_):
    for path in paths:
        doc, text = _load(path)
        image_lines = json_element_lines(text, "images")
        ann_lines = json_element_lines(text, "annotations")

        def at(lines, i, key):
            return fmt_where(path, lines[i]) if len(lines) > i else f"{path}:{key}[{i}]"

        files: dict = {}
        for i, image in enumerate(doc["images"]):
            if (not isinstance(image, dict) or not isinstance(image.get("id"), (int, str))
                    or not isinstance(image.get("file_name"), str)):
                ctx.malformed(at(image_lines, i, "images"), "bad_image_entry",
                              "an image needs an 'id' (number or string) and a 'file_name'")
                continue
            files[image["id"]] = (image["file_name"], at(image_lines, i, "images"))
        captions: dict = {}
        for i, ann in enumerate(doc["annotations"]):
            ctx.row()
            where = at(ann_lines, i, "annotations")
            if not isinstance(ann, dict) or not isinstance(ann.get("caption"), str) or not ann["caption"].strip():
                ctx.malformed(where, "bad_field", "an annotation needs a non-empty string 'caption'")
                continue
            if not isinstance(ann.get("image_id"), (int, str)) or ann["image_id"] not in files:
                ctx.malformed(where, "unknown_image", f"image_id {ann.get('image_id')!r} is not in 'images'")
                continue
            captions.setdefault(ann["image_id"], []).append((where, ann))
        for image_id, anns in captions.items():
            name, image_where = files[image_id]
            file = image_file(name, path, image_root, image_where, ctx)
            if file is None:
                for where, _ann in anns[1:]:
                    ctx.reject(where, "missing_image")
                continue
            chosen = anns[:1] if mode == "images" else anns
            for where, ann in chosen:
                rid = f"coco-{image_id}-{ann.get('id', 0)}"
                meta = {"image_id": image_id, "task": "caption"}
                if mode == "images":
                    meta["references"] = [a["caption"].strip() for _, a in anns]
                messages = [{"role": "user", "content": [{"type": "image", "path": file},
                                                         {"type": "text", "text": CAPTION_PROMPT}]},
                            {"role": "assistant", "content": ann["caption"].strip()}]
                yield where, Conversation(rid, NAME, messages, meta)
