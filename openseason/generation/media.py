"""Chat messages with images -> prompt ids plus the engine's media (for LLM.chat, the terminal chat, serve).

    ids, media = encode_chat_media(messages, tokenizer, fmt, model)

`media` is [(pixels [3, H, W], start)] in slot order (engine.py): each image part's pixels, made by
the model's front-end (`model.media.preprocess`), and the first position of its placeholder run in
`ids` (-1 when the model's images take no position). Image parts are `{"type": "image", "path": ...}`
(read from `base_dir` when relative) or `{"type": "image", "image": PIL image or file bytes}`.
"""
from __future__ import annotations

from typing import Optional

from ..errors import OpenseasonError
from ..prompts import ChatTemplate, as_chat_format, chat_pieces, message_images

IMAGE_PLACEHOLDER_ID = 0   # the id of placeholder positions; the front-end overwrites their embeddings


def check_images(model, messages, where: Optional[str] = None) -> list[dict]:
    """The image parts of `messages`, after checking that `model` takes that many images."""
    parts = message_images(messages)
    if not parts:
        return parts
    media = getattr(model, "media", None)
    if media is None:
        raise OpenseasonError("this model takes no images", where=where,
                              hint="send text only, or load a multimodal checkpoint (finetuned with --method "
                                   "minigpt4 or adapter-v2-mm)")
    if media.max_images is not None and len(parts) > media.max_images:
        raise OpenseasonError(f"this model takes at most {media.max_images} image(s) per conversation, got "
                              f"{len(parts)}", where=where)
    return parts


def encode_chat_media(messages, tokenizer, fmt, model, base_dir=None, *, add_generation_prompt: bool = True,
                      where: Optional[str] = None) -> tuple[list[int], list]:
    """(prompt ids, media) for a conversation with image parts (see the module docstring)."""
    from ..peft.media import open_image_part

    parts = check_images(model, messages, where)
    fmt = as_chat_format(fmt)
    if isinstance(fmt, ChatTemplate):
        raise OpenseasonError("images need a prompt style (a Hugging Face chat template gives no image slots here)",
                              where=where, hint="choose a style, e.g. prompt_style='minigpt4'")
    front = model.media
    ids: list[int] = []
    starts: list[int] = []
    for piece, kind in chat_pieces(messages, tokenizer, fmt, add_generation_prompt, where=where,
                                   image_tokens=front.image_tokens, image_token_id=IMAGE_PLACEHOLDER_ID):
        if kind == "image":
            starts.append(len(ids) if front.image_tokens else -1)
        ids.extend(piece)
    media = [(front.preprocess(open_image_part(part, base_dir, where=where)), start)
             for part, start in zip(parts, starts)]
    return ids, media
