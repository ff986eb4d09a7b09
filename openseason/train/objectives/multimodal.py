"""Token cross-entropy on image + text batches, with disjoint parameter groups per kind of row.

A batch may mix rows with images and text-only rows. Each kind is run on its own and trains only its
group (`peft.parameter_groups`): rows with an image train the "visual" group, text-only rows the
"instruction" group, and parameters of the "default" group train on both. This is LLaMA-Adapter V2's
joint training (caption data: visual projection and early gates; instruction data: late prompts,
gates, norms, bias/scale); for MiniGPT-4 every trained parameter is "visual", so text-only rows add
their loss but no gradient. The other group is frozen during that forward (requires_grad off), so
its gradient from that loss is exactly None, not a small number.
"""
from __future__ import annotations

import contextlib

import torch

from ...peft.media import MEDIA_KEYS
from .sft import count_targets, token_loss_sum

ROW_GROUPS = {True: "visual", False: "instruction"}


@contextlib.contextmanager
def only_group(model: torch.nn.Module, groups: dict[str, str], group: str):
    """Freeze every trainable parameter outside `group` (and "default") while the block runs."""
    params = dict(model.named_parameters())
    frozen = [params[n] for n, g in groups.items() if g not in (group, "default") and params[n].requires_grad]
    for p in frozen:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p in frozen:
            p.requires_grad_(True)


def select_rows(batch: dict, rows: list[int]) -> dict:
    """The micro-batch restricted to `rows` (images re-indexed to their new rows)."""
    index = torch.tensor(rows, dtype=torch.long)
    out = {k: v.index_select(0, index.to(v.device)) for k, v in batch.items()
           if isinstance(v, torch.Tensor) and k not in MEDIA_KEYS}
    if "image_rows" in batch:
        image_rows = batch["image_rows"]
        keep = torch.isin(image_rows, index.to(image_rows.device))
        remap = torch.full((int(batch["input_ids"].shape[0]),), -1, dtype=torch.long, device=image_rows.device)
        remap[index.to(image_rows.device)] = torch.arange(len(rows), device=image_rows.device)
        out["image_rows"] = remap[image_rows[keep]]
        out["image_starts"] = batch["image_starts"][keep]
        out["pixel_values"] = batch["pixel_values"][keep]
    return out


def multimodal_loss_sum(model, batch: dict, chunk: int = 4096, groups=None) -> tuple[torch.Tensor, int]:
    """(summed token cross-entropy, target tokens) of a micro-batch with images; rows with images
    and text-only rows are run separately, each training only its parameter group."""
    from ...peft import parameter_groups

    groups = parameter_groups(model) if groups is None else groups
    with_image = set(batch["image_rows"].tolist()) if "image_rows" in batch else set()
    n_rows = int(batch["input_ids"].shape[0])
    total, count = None, 0
    for has_image in (True, False):
        rows = [r for r in range(n_rows) if (r in with_image) == has_image]
        if not rows:
            continue
        part = batch if len(rows) == n_rows else select_rows(batch, rows)
        with only_group(model, groups, ROW_GROUPS[has_image]):
            embeds, extras = (model.media.inputs(model, part["input_ids"], part["pixel_values"], part["image_rows"],
                                                 part["image_starts"]) if has_image else (None, None))
            loss, n = token_loss_sum(model, part, chunk, inputs_embeds=embeds, extras=extras)
        total = loss if total is None else total + loss
        count += n
    if not total.requires_grad and torch.is_grad_enabled():
        # nothing of this batch trains anything (text-only rows under MiniGPT-4): a zero that backward accepts
        anchor = next(p for p in model.parameters() if p.requires_grad)
        total = total + anchor.sum() * 0.0
    return total, count


class MultimodalObjective:
    """SFT over batches with images (train/data.py MultimodalBatches); see the module docstring."""

    name = "multimodal-sft"
    weights = {"tokens": 1.0}
    metric_fields: dict[str, str] = {}

    def __init__(self, chunk: int = 4096):
        self.chunk = chunk
        self._groups = None

    def counts(self, batch: dict) -> dict[str, int]:
        return {"tokens": count_targets(batch)}

    def loss(self, model, batch: dict):
        if self._groups is None:
            from ...peft import parameter_groups

            self._groups = parameter_groups(model)
        total, _ = multimodal_loss_sum(model, batch, self.chunk, self._groups)
        return {"tokens": total}, {}
