"""What the image-bearing sources (llava, coco) share: resolving an image file named by a row.

A row's image path is resolved against `image_root` (the --image-root flag; default the folder of
the file being read) and stored absolute in the record, so the prepared directory can live anywhere.
A missing file rejects the row with reason "missing_image" (counted in report.json, listed in
rejects.jsonl); a file that is there but not a readable image, with "bad_image".
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional

# Read only the header: enough to know the file is an image without decoding every pixel.
def image_file(name, path, image_root, where: str, ctx) -> Optional[str]:
    """The absolute path of the image `name` names, or None after rejecting the row."""
    from PIL import Image, UnidentifiedImageError

    if not isinstance(name, str) or not name.strip():
        ctx.malformed(where, "bad_field", f"the image must be a non-empty file name, got {name!r:.80}")
        return None
    root = Path(image_root) if image_root else Path(path).resolve().parent
    file = (root / name).resolve()
    if not file.is_file():
        ctx.reject(where, "missing_image", detail=str(file))
        return None
    try:
        with Image.open(file) as image:
            image.size  # noqa: B018  (the header is parsed on open; size proves it)
    except (UnidentifiedImageError, OSError) as exc:
        ctx.reject(where, "bad_image", detail=f"{file}: {exc}")
        return None
    return str(file)
