"""Images in chat requests: OpenAI `image_url` content parts, checked at the edge.

    {"type": "image_url", "image_url": {"url": "data:image/png;base64,...."}}

Accepted: base64 `data:` URLs of PNG, JPEG, GIF or WebP images. A local file (a path or a file:// URL) is
read only when the server was started with `--allow-image-paths DIR` and the file is inside DIR (after
resolving symlinks and `..`). Remote http(s) URLs are always refused: the server fetches nothing.
Limits (ServerSettings): at most `max_images` images per request (400), at most `max_image_bytes` bytes
per decoded image (413). A model without an image front-end refuses images (400). The bytes are only
decoded into pixels later, by the model's preprocessing (`generation.media`), where a file that is not
an image is a 400 too.
"""
from __future__ import annotations

import base64
import binascii
import re
from pathlib import Path
from typing import Optional
from urllib.parse import unquote, urlparse

from .schema import APIError

DATA_URL = re.compile(r"^data:(image/(?:png|jpeg|jpg|gif|webp));base64,(.*)$", re.DOTALL)


def _decode_data_url(url: str, limit: int, param: str) -> bytes:
    match = DATA_URL.match(url)
    if match is None:
        raise APIError(400, "an image data URL must be data:image/png|jpeg|gif|webp;base64,...", param=param,
                       code="invalid_image_url")
    payload = match.group(2).strip()
    if len(payload) > (limit + 2) // 3 * 4 + 4:   # checked before decoding anything
        raise APIError(413, f"the image is larger than this server allows ({limit} bytes)", param=param,
                       code="image_too_large")
    try:
        data = base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError):
        raise APIError(400, "the image data URL is not valid base64", param=param, code="invalid_image_url") from None
    if len(data) > limit:
        raise APIError(413, f"the image is {len(data)} bytes; this server allows {limit}", param=param,
                       code="image_too_large")
    return data


def _read_local(url: str, root: Optional[Path], limit: int, param: str) -> bytes:
    if root is None:
        raise APIError(400, "image URLs must be base64 data URLs; this server reads no files (start it with "
                            "--allow-image-paths DIR to allow files under DIR)", param=param, code="invalid_image_url")
    path = Path(unquote(urlparse(url).path) if url.startswith("file:") else url)
    try:
        resolved = path.resolve(strict=True)
    except (OSError, RuntimeError):
        raise APIError(400, "the image file does not exist", param=param, code="invalid_image_url") from None
    if not resolved.is_relative_to(root) or not resolved.is_file():
        raise APIError(400, "the image file is not inside the directory this server may read images from",
                       param=param, code="invalid_image_url")
    size = resolved.stat().st_size
    if size > limit:
        raise APIError(413, f"the image is {size} bytes; this server allows {limit}", param=param,
                       code="image_too_large")
    return resolved.read_bytes()


def image_bytes(url: str, settings, param: str) -> bytes:
    """The bytes of one image_url, under the server's rules (see the module docstring)."""
    if url.startswith("data:"):
        return _decode_data_url(url, settings.max_image_bytes, param)
    scheme = urlparse(url).scheme.lower()
    if scheme in ("http", "https", "ftp"):
        raise APIError(400, "remote image URLs are not fetched; send the image as a base64 data URL", param=param,
                       code="invalid_image_url")
    root = Path(settings.allow_image_paths).resolve() if settings.allow_image_paths else None
    return _read_local(url, root, settings.max_image_bytes, param)


def resolve_images(messages: list[dict], settings, takes_images: bool) -> int:
    """Replace every {"type": "image", "image_url": url} part of `messages` by {"type": "image", "image":
    bytes} in place (blocking: reads files); returns the number of images. Raises APIError per the rules."""
    found = [(i, j) for i, m in enumerate(messages) if isinstance(m.get("content"), list)
             for j, part in enumerate(m["content"]) if part.get("type") == "image"]
    if not found:
        return 0
    if not takes_images:
        raise APIError(400, "this model takes no images (it was not finetuned with an image front-end); send text "
                            "only", param="messages", code="images_not_supported")
    if len(found) > settings.max_images:
        raise APIError(400, f"{len(found)} images in one request; this server allows {settings.max_images}",
                       param="messages", code="too_many_images")
    for i, j in found:
        part = messages[i]["content"][j]
        part["image"] = image_bytes(part.pop("image_url"), settings, param=f"messages[{i}].content")
    return len(found)


def text_view(messages: list[dict]) -> list[dict]:
    """The messages as text (images left out) for the rails; `restore` maps an edited view back."""
    from ..prompts import message_text

    return [{**m, "content": message_text(m)} for m in messages]


def restore(view: list[dict], original_view: list[dict], messages: list[dict]) -> list[dict]:
    """`messages` without the ones the rails removed from `view` (a copy of `original_view`'s list)."""
    kept = {id(m) for m in view}
    return [m for m, v in zip(messages, original_view) if id(v) in kept]
