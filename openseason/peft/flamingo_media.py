"""model.media for OpenFlamingo: the frozen vision tower behind the multimodal front-end contract
(peft/media.py), so training (objectives/multimodal.py), LLM.generate / chat and serve take images.

Each image takes one position, its `<image>` token: the prompt's slot gets that token's embedding (a
trained row), and the image itself enters through the cross-attention blocks as per-row extras:

    pixels [M, 3, H, W] -> tower -> [M, v, D] -> grouped per row in order [B, T_img, v, D]
                        -> perceiver -> latents [B, T_img, n, D]        extras["flamingo_media"]
    text time of each token = images whose slot is at or before it      extras["flamingo_time"]

Rows with fewer images than the widest row (in all-images mode: than max_images) get zero features
in the unused image places; no token's text time ever reaches them, so they are never attended to.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn as nn

from .flamingo import MEDIA, TIME, encode_media
from .media import VisionTower, embed_with_images


class FlamingoMedia(nn.Module):
    image_tokens = 1

    def __init__(self, tower: VisionTower, max_images: Optional[int] = None):
        super().__init__()
        self.tower = tower
        self.max_images = max_images

    def preprocess(self, image) -> torch.Tensor:
        return self.tower.preprocess(image)

    def inputs(self, model, input_ids, pixel_values, image_rows, image_starts):
        if pixel_values is None or pixel_values.shape[0] == 0:
            return None, None
        B, T = input_ids.shape
        device = input_ids.device
        rows, starts = image_rows.to(device), image_starts.to(device)
        if int(starts.min()) < 0 or int(starts.max()) >= T:
            raise ValueError(f"an image slot lies outside the sequence of {T} tokens")
        features = self.tower(pixel_values)                               # [M, v, D]
        # the k-th image of a row (by slot position) goes to place k of that row
        order = torch.argsort(rows * (T + 1) + starts)
        rows, starts, features = rows[order], starts[order], features[order]
        counts = torch.bincount(rows, minlength=B)
        if self.max_images is not None and int(counts.max()) > self.max_images:
            raise ValueError(f"a sequence holds {int(counts.max())} images, this model takes at most {self.max_images}")
        first = torch.cumsum(counts, 0) - counts
        place = torch.arange(rows.numel(), device=device) - first[rows]
        # all-images mode keeps every image per row in the KV cache: one width for every request
        width = int(counts.max()) if model.flamingo.immediate else self.max_images
        grouped = features.new_zeros(B, width, *features.shape[1:])
        grouped[rows, place] = features
        latents = encode_media(model, grouped)
        marks = torch.zeros(B, T, dtype=torch.long, device=device)
        marks[rows, starts] = 1
        token = model.embed(torch.tensor([model.media_token_id], device=device))      # the <image> row
        embeds = embed_with_images(model, input_ids, token.expand(rows.numel(), 1, -1), rows, starts)
        return embeds, {MEDIA: latents, TIME: marks.cumsum(-1)}
