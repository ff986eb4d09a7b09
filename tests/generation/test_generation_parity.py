"""Greedy generation equals transformers' greedy `generate`, token for token, and batching with left
padding changes nothing."""
from __future__ import annotations

import pytest
import torch

from openseason import LLM

PROMPTS = ["The quick brown fox", "Instruction: add 2 and 3. Response:", "café", "0123456789 + - * / = ? ! , . The lazy"]


def _hf_greedy(hf, ids: list[int], n: int, vocab: int) -> list[int]:
    x = torch.tensor([ids])
    # No EOS on either side (min_new_tokens would instead mask EOS out of the argmax).
    hf.generation_config.eos_token_id = None
    # The model has more output rows than the tokenizer has tokens; ids past the tokenizer cannot be
    # decoded, so our engine never picks them: transformers is told the same with suppress_tokens.
    padding = list(range(vocab, hf.config.vocab_size))
    with torch.no_grad():
        out = hf.generate(x, attention_mask=torch.ones_like(x), max_new_tokens=n, do_sample=False,
                          pad_token_id=0, suppress_tokens=padding or None)
    assert out.size(1) == len(ids) + n
    return out[0, len(ids):].tolist()


@pytest.mark.parametrize("prompt", PROMPTS[:3])
def test_greedy_equals_transformers(pair, prompt):
    hf, ckpt = pair
    llm = LLM.load(ckpt, device="cpu")
    ids = llm.encode(prompt)
    ours = llm.complete(ids, max_new_tokens=40, ignore_eos=True)
    assert ours.token_ids == _hf_greedy(hf, ids, 40, llm.tokenizer.vocab_size)
    assert ours.finish_reason == "length" and ours.completion_tokens == 40
    assert ours.text == llm.tokenizer.decode(ours.token_ids, skip_special_tokens=True)


def test_left_padded_batch_equals_one_at_a_time(pair):
    _, ckpt = pair
    llm = LLM.load(ckpt, device="cpu")
    lengths = {len(llm.encode(p)) for p in PROMPTS}
    assert len(lengths) > 1, "the prompts must need padding"
    batched = llm.complete(PROMPTS, max_new_tokens=24, ignore_eos=True)
    for prompt, got in zip(PROMPTS, batched):
        alone = llm.complete(prompt, max_new_tokens=24, ignore_eos=True)
        assert got.token_ids == alone.token_ids
        assert got.text == alone.text
    assert llm.generate(PROMPTS, max_new_tokens=24, ignore_eos=True) == [c.text for c in batched]


def test_batch_rows_that_stop_early_leave_the_others_untouched(llm):
    """Rows finish at different steps (stop strings); the rest decode as if alone."""
    alone = [llm.complete(p, max_new_tokens=30, ignore_eos=True) for p in PROMPTS]
    # Stop each row at a different piece of its own greedy text, so rows leave the batch at different steps.
    stops = []
    for i, c in enumerate(alone):
        text = c.text
        cut = text[4 + 3 * i: 6 + 3 * i]
        if cut.strip():
            stops.append(cut)
    batched = llm.complete(PROMPTS, max_new_tokens=30, ignore_eos=True, stop=stops)
    for one, got in zip(PROMPTS, batched):
        ref = llm.complete(one, max_new_tokens=30, ignore_eos=True, stop=stops)
        assert got.token_ids == ref.token_ids and got.text == ref.text
        assert got.finish_reason == ref.finish_reason
    assert any(c.finish_reason == "stop" for c in batched)


def test_model_forward_returns_logits(llm):
    x = torch.tensor([llm.encode("The quick brown fox")])
    with torch.no_grad():
        logits = llm.model(x)
    assert logits.shape == (1, x.size(1), llm.config.padded_vocab_size)


def test_decode_layout_keeps_values_and_saves(pair, tmp_path):
    """LLM.load re-stores CPU weights column-major for speed: same values, same Parameters, and the
    model still saves (contiguous safetensors) and reloads to the same logits."""
    from openseason.checkpoint import load_model, save_checkpoint
    from openseason.generation import prepare_for_decoding

    _, ckpt = pair
    plain = load_model(ckpt)
    llm = LLM.load(ckpt, device="cpu")
    assert any(not p.is_contiguous() for p in llm.model.parameters())
    assert prepare_for_decoding(llm.model) == 0          # idempotent
    x = torch.tensor([llm.encode("The quick brown fox jumps")])
    with torch.no_grad():
        torch.testing.assert_close(llm.model(x), plain(x), atol=1e-5, rtol=1e-5)
        for (name, a), (_, b) in zip(llm.model.named_parameters(), plain.named_parameters()):
            assert torch.equal(a, b), name
    save_checkpoint(tmp_path / "again", llm.model, tokenizer=llm.tokenizer)
    with torch.no_grad():
        torch.testing.assert_close(load_model(tmp_path / "again")(x), plain(x), atol=0, rtol=0)
