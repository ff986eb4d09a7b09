"""The reference policy of online RL's KL penalty, without a second model in memory.

GRPO / RLOO penalize KL(policy || reference) per completion token (k3 estimator, grpo.py). The
reference is the policy as training started. Getting its log-probabilities of fresh rollouts needs
a forward pass with the starting weights; how those weights are found depends on the method:

    LoRA, adapter, adapter-v2   `AdapterReference`: only the trainable parameters differ from the
                                reference, and they are small (the adapter; adapter-v2's biases and
                                norm scales): their starting values are kept and swapped in for the
                                no-grad reference pass (a fresh adapter is the identity, so this is
                                the base with the adapter disabled, as TRL does with PEFT).
    full                        `StreamedReference`: every weight trains, so a copy would be a second
                                model (what TRL does: `ref_model` is a full copy unless beta = 0).
                                Instead the reference pass reads the starting checkpoint from disk
                                module by module: a forward pre-hook loads a module's own weights
                                from the safetensors file(s) and swaps them in, a forward hook swaps
                                the policy's back and drops them. Extra memory at any moment: the
                                parameters of one module (the largest is the embedding or lm_head);
                                cost: reading the checkpoint once per rollout batch (page-cached).

`reference_policy(model, method, checkpoint, beta)` picks one (None when beta is 0: no KL term, no
reference, as TRL). Both are used as `with ref.active(model): ...` around a no-grad forward pass.

Why not cheaper references. The policy before the step (the "old" policy of the importance ratio)
is the current policy when each rollout batch gets one optimizer step, as here and in TRL's default:
k3 = exp(d) - d - 1 with d = 0 is 0 with a 0 gradient, so --beta would be accepted and ignored.
DeepSeekMath's GRPO penalizes KL to pi_ref = the SFT model (reset to the policy between its outer
iterations), and TRL 1.16's GRPOTrainer loads pi_ref as a second full model unless beta = 0 (its
default) or the model is PEFT (adapter disabled); this is the same reference, read from disk.
"""
from __future__ import annotations

import contextlib
from pathlib import Path

import torch

from ...errors import ConfigError


class AdapterReference:
    """The trainable parameters' values before training; `with ref.active(model):` swaps them in.
    Only for PEFT methods, where the trainable parameters are a small adapter (full finetuning
    would make this a second copy of the model: `StreamedReference` is used there)."""

    def __init__(self, model):
        self.saved = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}

    @contextlib.contextmanager
    def active(self, model):
        params = dict(model.named_parameters())
        current = {n: params[n].data for n in self.saved}
        try:
            for n, value in self.saved.items():
                params[n].data = value
            yield model
        finally:
            for n, value in current.items():
                params[n].data = value


class StreamedReference:
    """The weights of a full checkpoint on disk, streamed into the model one module at a time during
    a no-grad forward pass (see the module doc). Holds no tensors between passes."""

    def __init__(self, model, checkpoint):
        from ...checkpoint.full import weight_files
        from ...checkpoint.peft import is_peft_checkpoint

        checkpoint = Path(checkpoint)
        if is_peft_checkpoint(checkpoint):
            raise ConfigError("full finetuning with a KL penalty streams the reference weights from a full "
                              "checkpoint, and this one is a PEFT checkpoint", where=str(checkpoint),
                              hint="merge it first (`openseason merge CKPT --out DIR`) and finetune DIR, "
                                   "or train without the KL term (--beta 0)")
        from safetensors import safe_open

        keys: dict[str, Path] = {}
        shapes: dict[str, tuple] = {}
        for file in weight_files(checkpoint):
            with safe_open(str(file), "pt") as handle:
                for key in handle.keys():
                    keys[key] = file
                    shapes[key] = tuple(handle.get_slice(key).get_shape())
        tied = getattr(model.config, "tie_embeddings", False)
        # module -> [(parameter attribute, file, key)] for every module that OWNS trainable parameters
        self.plan: dict[str, list[tuple[str, Path, str]]] = {}
        for module_name, module in model.named_modules():
            for attr, param in module.named_parameters(recurse=False):
                if not param.requires_grad:
                    continue
                name = f"{module_name}.{attr}" if module_name else attr
                key = "embed.weight" if (tied and name == "lm_head.weight") else name
                if key not in keys:
                    raise ConfigError(f"the reference checkpoint has no weight {key!r} for the trained parameter "
                                      f"{name!r}", where=str(checkpoint))
                if shapes[key] != tuple(param.shape):
                    raise ConfigError(f"reference weight {key!r} has shape {shapes[key]}, the model's "
                                      f"{tuple(param.shape)}", where=str(checkpoint))
                self.plan.setdefault(module_name, []).append((attr, keys[key], key))
        self.checkpoint = checkpoint

    @contextlib.contextmanager
    def active(self, model):
        from safetensors import safe_open

        modules = dict(model.named_modules())
        handles: dict[Path, object] = {}
        stack = contextlib.ExitStack()
        ran: set[str] = set()
        swapped: dict[str, list[tuple[torch.nn.Parameter, torch.Tensor]]] = {}

        def open_file(file: Path):
            if file not in handles:
                handles[file] = stack.enter_context(safe_open(str(file), "pt"))
            return handles[file]

        def load(name):
            def hook(module, args):
                saved = []
                for attr, file, key in self.plan[name]:
                    param = getattr(module, attr)
                    value = open_file(file).get_tensor(key).to(device=param.device, dtype=param.dtype)
                    saved.append((param, param.data))
                    param.data = value
                swapped[name] = saved
                ran.add(name)
            return hook

        def unload(name):
            def hook(module, args, output):
                for param, value in swapped.pop(name, []):
                    param.data = value  # the loaded reference tensor is dropped here
            return hook

        hooks = []
        try:
            for name in self.plan:
                hooks.append(modules[name].register_forward_pre_hook(load(name)))
                hooks.append(modules[name].register_forward_hook(unload(name)))
            with stack:
                yield model
            missing = sorted(set(self.plan) - ran)
            if missing:  # a weight used outside its module's forward would silently be the policy's
                raise RuntimeError(f"the reference pass never ran modules {missing[:5]}: their reference "
                                   "weights were not used")
        finally:
            for h in hooks:
                h.remove()
            for saved in swapped.values():  # an exception inside a module: put the policy back
                for param, value in saved:
                    param.data = value


def reference_policy(model, method: str, checkpoint, beta: float):
    """The reference of the KL term for `method` (None when beta is 0: no KL term)."""
    if float(beta) == 0.0:
        return None
    if method == "full":
        return StreamedReference(model, checkpoint)
    return AdapterReference(model)
