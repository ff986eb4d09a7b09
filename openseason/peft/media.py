"""Images into a decoder: the frozen vision tower and what every multimodal front-end shares.

A multimodal method (MiniGPT-4, LLaMA-Adapter V2 multimodal) injects one module at `model.media` into a
GPT built the normal way. Its contract, used by training (train/objectives/multimodal.py) and by the
inference engine alike:

    media.image_tokens          positions an image takes in the token sequence (MiniGPT-4: the encoder's
                                N query outputs, spliced there; 0: the image conditions the model through
                                per-row `extras` and takes no position)
    media.max_images            most images one sequence may hold (None: any number)
    media.preprocess(image)     a PIL image -> pixels [3, H, W] the way the encoder's processor does it
    media.inputs(model, input_ids, pixel_values, image_rows, image_starts)
                                -> (inputs_embeds or None, extras or None) for GPT.forward / hidden_states

Images of a batch travel as three tensors (so the loop moves them to the device like token ids):
`pixel_values` [M, 3, H, W], `image_rows` [M] (the row each image belongs to) and `image_starts` [M]
(the first position of its placeholder run in that row; -1 when images take no position).

The tower (`VisionTower`) never trains: its parameters are frozen, it stays in eval mode, it runs
without autograd, and a PEFT checkpoint stores a reference to its checkpoint and a sha256 fingerprint
of its weight files instead of its weights.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Optional

import torch
import torch.nn as nn

from ..errors import CheckpointError, ConfigError
from ..fileio import hash_files

MEDIA_KEYS = ("pixel_values", "image_rows", "image_starts")


class VisionTower(nn.Module):
    """A frozen image encoder `encoder(pixel_values) -> (B, N, D)` with its preprocessing.

    encoder      the module (it has `hidden_size` and `image_size`; `num_tokens` when it knows N)
    preprocess   PIL image -> float tensor [3, H, W]
    source       the vision checkpoint directory it was loaded from (None for an in-memory encoder)
    fingerprint  sha256 of that checkpoint's weight files
    """

    def __init__(self, encoder: nn.Module, preprocess: Callable, source: Optional[str] = None,
                 fingerprint: Optional[str] = None):
        super().__init__()
        self.encoder = encoder.eval()
        for p in self.encoder.parameters():
            p.requires_grad_(False)
        self._preprocess = preprocess
        self.source, self.fingerprint = source, fingerprint
        self.hidden_size = int(encoder.hidden_size)
        self.image_size = int(encoder.image_size)

    def train(self, mode: bool = True) -> "VisionTower":
        # frozen means frozen: no dropout or batch statistics even while the rest of the model trains
        return super().train(False)

    @property
    def num_tokens(self) -> int:
        n = getattr(self.encoder, "num_tokens", None)
        if n is None:
            with torch.no_grad():
                n = self.forward(torch.zeros(1, 3, self.image_size, self.image_size,
                                             device=next(self.encoder.parameters()).device)).shape[1]
        return int(n)

    def preprocess(self, image) -> torch.Tensor:
        pixels = self._preprocess(image)
        return pixels[0] if pixels.dim() == 4 else pixels

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        weight = next(self.encoder.parameters())
        with torch.no_grad():
            return self.encoder(pixel_values.to(device=weight.device, dtype=weight.dtype))


def load_tower(vision) -> VisionTower:
    """A VisionTower from a vision checkpoint directory (an `openseason.vision` encoder checkpoint),
    or from an already built tower / encoder module (tests, the Python API)."""
    if isinstance(vision, VisionTower):
        return vision
    if isinstance(vision, nn.Module):
        raise ConfigError("pass a VisionTower (encoder + preprocessing) or a vision checkpoint directory",
                          hint="openseason.peft.media.VisionTower(encoder, preprocess)")
    if vision is None:
        raise ConfigError("a multimodal method needs a vision encoder", hint="--vision ENCODER_CKPT")
    from ..checkpoint.full import weight_files
    from ..vision.checkpoint import load_vision_encoder

    path = Path(vision)
    encoder = load_vision_encoder(path)
    return VisionTower(encoder, lambda image: encoder.preprocess([image]), source=str(path.resolve()),
                       fingerprint=hash_files(weight_files(path)))


def check_fingerprint(tower: VisionTower, expected: Optional[str], where: str) -> None:
    """A checkpoint trained on one encoder must not silently run on another."""
    if expected and tower.fingerprint and tower.fingerprint != expected:
        raise CheckpointError(f"the vision encoder at {tower.source} is not the one this checkpoint was trained "
                              f"with (fingerprint {tower.fingerprint[:12]}, expected {expected[:12]})", where=where,
                              hint="put the original encoder checkpoint back, or point 'vision' in peft.json at it")


def tower_options(tower: VisionTower) -> dict:
    """What a checkpoint records about its encoder (a reference and a fingerprint, not the weights)."""
    return {"vision": tower.source, "vision_fingerprint": tower.fingerprint}


def embed_with_images(model, input_ids: torch.Tensor, features: torch.Tensor, image_rows: torch.Tensor,
                      image_starts: torch.Tensor) -> torch.Tensor:
    """The token embeddings of `input_ids` [B, T] with image m's features [M, N, D] written over
    positions image_starts[m] .. +N of row image_rows[m] (the placeholder run), differentiably."""
    embeds = model.embed(input_ids)
    if features.numel() == 0:
        return embeds
    n = features.shape[1]
    if int(image_starts.min()) < 0 or int(image_starts.max()) + n > input_ids.shape[1]:
        raise ValueError(f"an image's {n} positions do not fit the sequence of {input_ids.shape[1]} tokens")
    offsets = torch.arange(n, device=input_ids.device)
    rows = image_rows.to(input_ids.device).unsqueeze(1).expand(-1, n)
    cols = image_starts.to(input_ids.device).unsqueeze(1) + offsets
    embeds = embeds.clone()
    embeds[rows.reshape(-1), cols.reshape(-1)] = features.reshape(-1, features.shape[-1]).to(embeds.dtype)
    return embeds


def one_per_row(batch_size: int, values: torch.Tensor, image_rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-image values [M, ...] placed at their rows of a [B, ...] tensor (zeros for rows without an
    image), and a float [B] that is 1 where a row has one. A row with two images is an error."""
    if image_rows.numel() != torch.unique(image_rows).numel():
        raise ValueError("this method takes at most one image per sequence")
    out = values.new_zeros((batch_size, *values.shape[1:]))
    present = values.new_zeros(batch_size)
    if values.shape[0]:
        out = out.index_put((image_rows.to(out.device),), values)
        present = present.index_put((image_rows.to(out.device),), torch.ones_like(image_rows, dtype=values.dtype,
                                                                                     device=out.device))
    return out, present


def open_image_part(part: dict, base_dir=None, where: Optional[str] = None):
    """The PIL image of an image content part: {"image": PIL image or file bytes} or {"path": ...}
    (a relative path is read from `base_dir`, the prepared data directory)."""
    from ..vision.images import load_image

    if part.get("image") is not None:
        return load_image(part["image"], where=where)
    path = Path(part["path"])
    if not path.is_absolute() and base_dir is not None:
        path = Path(base_dir) / path
    return load_image(path, where=where)
