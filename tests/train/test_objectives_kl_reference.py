"""The KL reference of GRPO / RLOO holds no second model: full finetuning streams the starting
checkpoint module by module (exactly the reference model's log-probabilities, at most one module's
weights extra at any moment); PEFT methods keep only the adapter's starting values."""
from __future__ import annotations

import gc
import warnings

import pytest
import torch

from openseason.checkpoint import load_model
from openseason.errors import ConfigError
from openseason.peft import apply
from openseason.train.objectives.kl_reference import AdapterReference, StreamedReference, reference_policy
from openseason.train.objectives.logps import token_logps

from .helpers_train import make_base, make_prepared


def _live_tensor_bytes() -> int:
    """Bytes of every distinct storage behind a tensor Python can see (parameters, saved copies)."""
    seen, total = set(), 0
    with warnings.catch_warnings():  # isinstance() on some torch module objects warns of deprecations
        warnings.simplefilter("ignore")
        for obj in gc.get_objects():
            if isinstance(obj, torch.Tensor) and not obj.is_meta:
                storage = obj.untyped_storage()
                try:
                    pointer = storage.data_ptr()
                except RuntimeError:   # a fake tensor torch.compile keeps (earlier tests): no memory behind it
                    continue
                if pointer not in seen:
                    seen.add(pointer)
                    total += storage.nbytes()
    return total


def _batch(seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, 500, (3, 12), generator=g)
    labels = ids.clone()
    labels[:, :5] = -100
    return {"input_ids": ids, "labels": labels}


def _policy(base):
    """The model as loaded, made trainable by `full` and moved away from the checkpoint (a trained policy)."""
    model = load_model(base)
    apply(model, "full")
    with torch.no_grad():
        g = torch.Generator().manual_seed(1)
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.05)
    return model


@pytest.fixture(scope="module", params=["tiny-llama", "tiny-mpt"])  # untied RoPE; tied ALiBi
def base(request, tmp_path_factory, tiny_tokenizer):
    return make_base(tmp_path_factory.mktemp(request.param), tiny_tokenizer, request.param)


@torch.no_grad()
def test_streamed_reference_equals_the_reference_model(base):
    policy = _policy(base)
    batch = _batch()
    before, _ = token_logps(policy, batch)
    ref = reference_policy(policy, "full", base, beta=0.04)
    assert isinstance(ref, StreamedReference)
    with ref.active(policy):
        streamed, keep = token_logps(policy, batch)
    expected, _ = token_logps(load_model(base), batch)
    assert keep.any() and torch.equal(streamed, expected)
    after, _ = token_logps(policy, batch)
    assert torch.equal(after, before) and not torch.equal(before, expected)


@torch.no_grad()
def test_no_second_set_of_weights_is_allocated(tmp_path, tiny_tokenizer):
    base = make_base(tmp_path / "base", tiny_tokenizer)
    policy = _policy(base)
    batch = _batch()
    param_bytes = sum(p.numel() * p.element_size() for p in set(policy.parameters()))
    owners = [m for m in policy.modules() if any(True for _ in m.parameters(recurse=False))]
    largest = max(sum(p.numel() * p.element_size() for p in m.parameters(recurse=False)) for m in owners)
    assert param_bytes > 3 * largest  # so "one module extra" and "a second model" are far apart

    def peak_during(ref) -> int:
        """Most live tensor bytes seen as weight-owning modules start their forward (where the streamed
        reference has just loaded that module's weights) during a logps pass."""
        peak = [0]

        def probe(module, args):
            peak[0] = max(peak[0], _live_tensor_bytes())

        handles = []
        context = ref.active(policy) if ref is not None else None
        try:
            if context is not None:
                context.__enter__()  # its hooks first: the probes see the reference weights loaded
            # a handful of probe points (each is a scan of the whole heap): first, some middle, last
            handles = [m.register_forward_pre_hook(probe) for m in owners[::max(1, len(owners) // 4)] + owners[-1:]]
            token_logps(policy, batch)
        finally:
            for h in handles:
                h.remove()
            if context is not None:
                context.__exit__(None, None, None)
        return peak[0]

    gc.collect()
    plain = peak_during(None)
    held = _live_tensor_bytes()
    streamed = StreamedReference(policy, base)
    assert _live_tensor_bytes() - held == 0  # holds nothing between passes
    assert 0 < peak_during(streamed) - plain <= largest
    # the probe does see a second copy: keeping the starting weights (the old design) costs them all
    copy = AdapterReference(policy)
    assert peak_during(copy) - plain >= param_bytes
    del copy


def test_peft_methods_keep_only_the_adapter(base):
    model = load_model(base)
    apply(model, "lora", rank=2)
    ref = reference_policy(model, "lora", base, beta=0.1)
    adapter = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert isinstance(ref, AdapterReference) and sum(v.numel() for v in ref.saved.values()) == adapter
    assert adapter < sum(p.numel() for p in model.parameters()) / 10
    assert reference_policy(model, "lora", base, beta=0.0) is None


def test_grpo_full_with_kl_from_a_peft_checkpoint_is_an_error(tmp_path, tiny_tokenizer):
    from openseason.train.finetune import finetune

    base = make_base(tmp_path / "base", tiny_tokenizer)
    data = make_prepared(tmp_path / "data", n=8)
    fast = dict(progress=False, register=False, max_length=48, micro_batch_size=2, val_size=0)
    lora = finetune(base, data, "lora", tmp_path / "lora", max_steps=1, lora_dropout=0.0, **fast)
    with pytest.raises(ConfigError, match="PEFT checkpoint"):
        finetune(lora["final"], data, "full", tmp_path / "grpo", objective="grpo", max_steps=1, num_generations=2,
                 max_new_tokens=2, reward="openseason.train.objectives.grpo:exact_match_reward", **fast)


def test_grpo_full_logs_kl_against_the_streamed_reference(tmp_path, tiny_tokenizer):
    import csv

    from openseason.train.finetune import finetune

    from .test_objectives_run import make_pairs

    base = make_base(tmp_path / "base", tiny_tokenizer)
    data = make_prepared(tmp_path / "data", n=8)
    fast = dict(progress=False, register=False, max_length=48, val_size=0)
    # a (random) reward model gives the samples of a group different rewards, so the policy moves
    rm = finetune(base, make_pairs(tmp_path / "pairs", n=8), "lora", tmp_path / "rm", objective="reward",
                  max_steps=1, micro_batch_size=4, lora_dropout=0.0, **fast)
    finetune(base, data, "full", tmp_path / "run", objective="grpo", max_steps=3, num_generations=3,
             max_new_tokens=4, reward=str(rm["final"]), lr=1e-2, micro_batch_size=2, **fast)
    with open(tmp_path / "run" / "metrics.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    kls = [float(r["kl"]) for r in rows]
    assert kls[0] == pytest.approx(0.0, abs=1e-6)  # the first rollout's policy IS the reference
    assert kls[-1] > 1e-4  # after two updates the policy has moved away from it
