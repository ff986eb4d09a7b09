"""One DPO step against `trl.DPOTrainer` itself on a tiny LlamaForCausalLM (float32).

The HF model is converted to ours with the production converter; the pairs are tokenized once by
`data.preferences` and the same token ids go to both sides (TRL through its own
`DataCollatorForPreference`). TRL runs its real trainer object: `DPOTrainer(...)` is constructed
with an explicit reference model (a copy of the initial policy, so nothing is precomputed
differently) and `trainer.compute_loss` on the collated batch, then backward. With --sft-weight (RPO)
TRL runs loss_type ["sigmoid", "sft"] weighted [1, sft_weight]. Ours runs the DPO
objective with reference log-probabilities from `train.reference` (the initial model). Loss and
every parameter's gradient (mapped to HF names by the converter's key map) agree to 1e-5. Float64
cannot tighten this: TRL's fused LM head (`trl.kernels.chunked_logprob`) computes the log-probs in
float32 whatever the model's dtype.
The dataset TRL tokenizes itself is not compared (tokenization differs by design: ours follows
the prompt style); the step's optimizer update is the Trainer's AdamW, not DPO's.
"""
from __future__ import annotations

import copy

import pytest
import torch

trl = pytest.importorskip("trl")
transformers = pytest.importorskip("transformers")
datasets = pytest.importorskip("datasets")

from .test_objectives_run import make_pairs  # noqa: E402

BETA = 0.3


def _hf_llama(tiny_tokenizer, root):
    torch.manual_seed(7)
    cfg = transformers.LlamaConfig(vocab_size=512, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                   num_key_value_heads=2, intermediate_size=64, max_position_embeddings=128,
                                   rms_norm_eps=1e-5, bos_token_id=1, eos_token_id=0, tie_word_embeddings=False)
    hf = transformers.LlamaForCausalLM(cfg)
    with torch.no_grad():  # wider weights than 0.02 so the log-ratios move visibly in one step
        for p in hf.parameters():
            if p.dim() >= 2:
                p.normal_(0.0, 0.1)
    hf.save_pretrained(root / "hf")
    tiny_tokenizer.save(root / "hf")
    return hf


@pytest.mark.parametrize("moved,sft_weight", [(False, 0.0), (True, 0.0), (True, 0.7)],
                         ids=["policy-is-reference", "policy-moved", "sft-weight"])
def test_one_dpo_step_matches_trl_dpo_trainer(tmp_path, tiny_tokenizer, moved, sft_weight):
    from openseason.checkpoint.full import load_full_model
    from openseason.convert import convert_from_hf, families
    from openseason.convert.keymap import state_to_hf
    from openseason.data.preferences import PreferenceData, collate_pairs, load_preferences
    from openseason.train.objectives import combine
    from openseason.train.objectives.preference import PreferenceObjective
    from openseason.train.reference import compute_reference_logps
    from trl import DPOConfig, DPOTrainer
    from trl.trainer.dpo_trainer import DataCollatorForPreference

    hf = _hf_llama(tiny_tokenizer, tmp_path)
    ckpt = convert_from_hf(tmp_path / "hf", tmp_path / "ours")
    hf_ref, ref_model = copy.deepcopy(hf).eval(), load_full_model(ckpt).float().eval()
    if moved:  # a policy some steps away from the reference (as at a later step): the same change on both sides
        with torch.no_grad():
            g = torch.Generator().manual_seed(5)
            for p in hf.parameters():
                p.add_(torch.randn(p.shape, generator=g) * 0.03)
        hf.save_pretrained(tmp_path / "hf")
        ckpt = convert_from_hf(tmp_path / "hf", tmp_path / "ours-moved")
    hf = hf.float().train()
    ours = load_full_model(ckpt).float().train()
    pairs = PreferenceData(load_preferences(make_pairs(tmp_path / "pairs", n=6)), tiny_tokenizer, "plain", 64)
    examples = pairs.examples
    pad = tiny_tokenizer.pad_id

    # ours: reference log-probs from the initial model, then the DPO objective (mean over pairs)
    ref = compute_reference_logps(ref_model, examples, pad, batch_size=8)
    batch = collate_pairs(examples, pad)
    batch["ref_logps"] = torch.cat([ref[:, 0], ref[:, 1]])
    objective = PreferenceObjective("dpo", BETA, sft_weight=sft_weight)
    terms, metrics = objective.loss(ours, batch)
    our_loss = combine(terms, objective.counts(batch), objective.weights)
    our_loss.backward()

    # TRL: the real trainer object, its collator, its compute_loss
    hf_tok = transformers.PreTrainedTokenizerFast(tokenizer_object=tiny_tokenizer.backend,
                                                  eos_token="<|endoftext|>", pad_token="<|endoftext|>")
    text = datasets.Dataset.from_list([{"prompt": "add 1 and 2", "chosen": " 3", "rejected": " 4"}] * 2)
    # the SFT term: TRL's "sft" loss (mean NLL over the chosen completion tokens) with weight sft_weight
    losses = dict(loss_type=["sigmoid", "sft"], loss_weights=[1.0, sft_weight]) if sft_weight else \
        dict(loss_type=["sigmoid"])
    args = DPOConfig(output_dir=str(tmp_path / "trl"), beta=BETA, **losses, max_length=1024,
                     precompute_ref_log_probs=False, per_device_train_batch_size=len(examples), report_to=[],
                     use_cpu=True, bf16=False, fp16=False, padding_free=False, dataset_num_proc=None,
                     logging_steps=1, save_strategy="no")
    trainer = DPOTrainer(model=hf, ref_model=hf_ref, args=args, train_dataset=text,
                         processing_class=hf_tok)
    collated = DataCollatorForPreference(pad_token_id=pad)(
        [{k: ex[k] for k in ("prompt_ids", "chosen_ids", "rejected_ids")} for ex in examples])
    trl_loss = trainer.compute_loss(trainer.model, collated)
    trl_loss.backward()

    assert next(trainer.model.parameters()).dtype == torch.float32
    our_loss, trl_loss = our_loss.detach(), trl_loss.detach()
    assert float(our_loss) == pytest.approx(float(trl_loss), abs=1e-5)
    if not moved:
        assert abs(float(our_loss) - 0.6931471805599453) < 1e-5  # the policy is the reference: log 2
    else:
        assert abs(float(our_loss) - 0.6931471805599453) > 1e-3
    family = families.family_for_config("llama", str(ckpt))
    grads = state_to_hf(family, ours.config, {n: p.grad for n, p in ours.named_parameters()})
    hf_grads = {n: p.grad for n, p in trainer.model.named_parameters()}
    assert grads.keys() == hf_grads.keys()
    worst = 0.0
    for name, g in grads.items():
        assert hf_grads[name] is not None, name
        torch.testing.assert_close(g, hf_grads[name], rtol=1e-5, atol=1e-5, msg=name)
        worst = max(worst, float((g - hf_grads[name]).abs().max()))
    assert max(float(g.abs().max()) for g in grads.values()) > 1e-3  # a real gradient, not zeros
    print(f"DPO step vs trl.DPOTrainer: |loss diff| {abs(float(our_loss) - float(trl_loss)):.2e}, "
          f"max |grad diff| {worst:.2e} over {len(grads)} tensors")
