"""Interleaved image-text documents for Flamingo: the text with `<image>` and `<|endofchunk|>` markers,
the images in order, and the labels OpenFlamingo's training code uses.

Three shapes become one `InterleavedDoc`:

- our conversation records with image parts (content as a list of {"type": "image", "path": ...} and
  {"type": "text", "text": ...}, the shape of OpenAI's content parts), rendered by the "flamingo"
  prompt style: each image part becomes `<image>`, parts are joined by spaces, each assistant reply
  follows after a space and ends its chunk with `<|endofchunk|>`;
- MMC4 documents: `text_list` (sentences) and `image_info` (each with `matched_text_index` and an image
  `image_name` / `path`), read as the released `preprocess_interleaved` does: an image goes before the
  sentence it is matched to, chunks are separated by `<|endofchunk|>`, the first one dropped;
- few-shot episodes (`few_shot_episode`): conversations of (image, answer) shots then a query image.

Labels (`flamingo_labels`) follow the released MMC4 training step: no loss on padding, on every token
up to and including the first `<image>`, on the tokens after each `<|endofchunk|>` up to the next
`<image>`, nor on `<image>` itself. `<|endofchunk|>` is a target (the model learns to end a chunk).
The released code also tries to mask EOS by comparing ids with the EOS *string*, which masks nothing;
EOS stays a target here too.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional, Sequence

import torch

from ..errors import DataError

MEDIA_TOKEN = "<image>"
END_OF_CHUNK = "<|endofchunk|>"


def add_media_tokens(tokenizer) -> tuple[int, int]:
    """Add `<|endofchunk|>` and `<image>` (in the released order) to an openseason Tokenizer;
    returns (media_id, end_of_chunk_id)."""
    eoc, media = tokenizer.add_special_tokens([END_OF_CHUNK, MEDIA_TOKEN])
    return media, eoc


@dataclass
class InterleavedDoc:
    text: str                                   # with <image> / <|endofchunk|> markers
    images: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.text.count(MEDIA_TOKEN) != len(self.images):
            raise DataError(f"{self.text.count(MEDIA_TOKEN)} {MEDIA_TOKEN} markers but {len(self.images)} images")


def _tidy(text: str) -> str:
    # The released preprocessing glues the markers to their neighbours (no spaces around them).
    return (text.replace(f" {END_OF_CHUNK}", END_OF_CHUNK).replace(f"{MEDIA_TOKEN} ", MEDIA_TOKEN)
            .replace(f" {MEDIA_TOKEN}", MEDIA_TOKEN))


def _image_path(part: dict, where: Optional[str]) -> str:
    path = part.get("path") or part.get("image_name") or part.get("image")
    if not isinstance(path, str) or not path:
        raise DataError("an image needs a non-empty 'path'", where=where)
    return path


def from_conversation(messages: Sequence[dict], where: Optional[str] = None) -> InterleavedDoc:
    """A conversation record's messages (content a string or a list of parts) as one document: the
    "flamingo" prompt style's text, each image slot as `<image>` (so it is exactly what training and
    LLM.chat tokenize for the same conversation)."""
    from ..prompts import IMAGE_SLOT, get_style, message_images

    for i, message in enumerate(messages):
        parts = message.get("content") if isinstance(message, dict) else None
        texts = [parts] if isinstance(parts, str) else [p.get("text") for p in parts or () if isinstance(p, dict)]
        if any(isinstance(t, str) and (MEDIA_TOKEN in t or END_OF_CHUNK in t) for t in texts):
            raise DataError(f"message {i}: text contains the reserved marker {MEDIA_TOKEN} or {END_OF_CHUNK}", where=where)
    segments = get_style("flamingo").segments(list(messages), where=where)
    text = "".join(t for t, _ in segments).replace(IMAGE_SLOT, MEDIA_TOKEN)
    return InterleavedDoc(text, [part.get("path") or "" for part in message_images(messages)])


def from_mmc4(doc: dict, where: Optional[str] = None) -> InterleavedDoc:
    """An MMC4 document: images placed before their matched sentences, chunks split by <|endofchunk|>."""
    sentences, infos = doc.get("text_list"), doc.get("image_info")
    if not isinstance(sentences, list) or not all(isinstance(s, str) for s in sentences):
        raise DataError("MMC4 'text_list' must be a list of strings", where=where)
    if not isinstance(infos, list) or not infos:
        raise DataError("MMC4 'image_info' must be a non-empty list", where=where)
    sentences = list(sentences)
    by_sentence: dict[int, str] = {}
    for k, info in enumerate(infos):
        here = f"{where} image_info[{k}]" if where else f"image_info[{k}]"
        index = info.get("matched_text_index") if isinstance(info, dict) else None
        if not isinstance(index, int) or not 0 <= index < len(sentences):
            raise DataError(f"matched_text_index must be an index into text_list (0..{len(sentences) - 1})", where=here)
        if index in by_sentence:   # the released pipeline keeps one image per sentence
            continue
        by_sentence[index] = _image_path(info, here)
    for index in by_sentence:
        sentences[index] = f"{END_OF_CHUNK}{MEDIA_TOKEN}{sentences[index]}"
    text = " ".join(sentences).replace(END_OF_CHUNK, "", 1)
    return InterleavedDoc(_tidy(text) + END_OF_CHUNK, [by_sentence[i] for i in sorted(by_sentence)])


def few_shot_episode(shots: Sequence[tuple[dict, str]], query: dict, prompt: str = "Output:") -> list[dict]:
    """A k-shot conversation: each (image part, answer) shot as a user turn [image, prompt] and the
    answer as the reply, then the query image's user turn, ready for LLM.chat in the "flamingo" style
    ("<image>Output: circle<|endofchunk|><image>Output: square<|endofchunk|><image>Output:")."""
    messages = []
    for image, answer in shots:
        messages += [{"role": "user", "content": [image, {"type": "text", "text": prompt}]},
                     {"role": "assistant", "content": answer}]
    return messages + [{"role": "user", "content": [query, {"type": "text", "text": prompt}]}]


def encode_doc(doc: InterleavedDoc, tokenizer, max_length: int, *, eos: bool = True) -> tuple[list[int], list[str]]:
    """Token ids of a document (BOS per the tokenizer's policy, EOS appended) cut to max_length, and
    the images whose <image> token survived the cut."""
    media_id = tokenizer.token_to_id(MEDIA_TOKEN)
    if media_id is None:
        raise DataError(f"the tokenizer has no {MEDIA_TOKEN} token", where="tokenizer",
                        hint="add it with openseason.data.interleaved.add_media_tokens")
    ids = tokenizer.encode(doc.text, eos=eos)[:max_length]
    return ids, doc.images[: ids.count(media_id)]


def flamingo_labels(input_ids: torch.Tensor, media_id: int, eoc_id: int,
                    attention_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Targets [B, T] (-100 = no loss) for `input_ids`, masked as OpenFlamingo's MMC4 training step does;
    padding is where `attention_mask` is 0 (our pad id may be EOS, which stays a target)."""
    labels = input_ids.clone()
    is_media = input_ids == media_id
    # Inside a chunk from an <image> to the next <|endofchunk|> (inclusive) tokens are targets: the
    # state flips on at <image> and off after <|endofchunk|>. Before the first <image> it is off.
    marks = torch.zeros_like(input_ids)
    marks[is_media] = 1
    ends = input_ids == eoc_id
    after_end = torch.zeros_like(ends)
    after_end[:, 1:] = ends[:, :-1]
    marks[after_end & ~is_media] = -1
    # the most recent mark decides: find, for each position, the last nonzero mark at or before it
    pos = torch.arange(input_ids.size(1), device=input_ids.device).expand_as(input_ids)
    last = torch.where(marks != 0, pos, torch.full_like(pos, -1)).cummax(dim=1).values
    state = torch.where(last >= 0, marks.gather(1, last.clamp(min=0)), torch.zeros_like(marks))
    labels[state <= 0] = -100
    labels[is_media] = -100
    if attention_mask is not None:
        labels[attention_mask == 0] = -100
    return labels



def with_flamingo_labels(example: dict, media_id: int, eoc_id: int) -> dict:
    """A tokenized example ({"input_ids", ...}, its <image> slots holding `media_id`) with the labels of
    the released training step in place of the ones it had."""
    ids = torch.tensor([example["input_ids"]])
    return {**example, "labels": flamingo_labels(ids, media_id, eoc_id)[0].tolist()}


def doc_example(doc: InterleavedDoc, tokenizer, max_length: int) -> dict:
    """A training example from a document (MMC4 and the like): ids, released labels and its images
    as {"part": {"type": "image", "path": ...}, "start": slot} (the multimodal batches' shape)."""
    media_id, eoc_id = tokenizer.token_to_id(MEDIA_TOKEN), tokenizer.token_to_id(END_OF_CHUNK)
    ids, images = encode_doc(doc, tokenizer, max_length)
    starts = [i for i, t in enumerate(ids) if t == media_id]
    example = {"input_ids": ids, "images": [{"part": {"type": "image", "path": p}, "start": s}
                                            for p, s in zip(images, starts)]}
    return with_flamingo_labels(example, media_id, eoc_id)
