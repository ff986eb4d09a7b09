"""Only the new tokens' rows of the embedding (and head) train: every other row stays bit-identical under
AdamW with weight decay; new rows start at the mean row; a Flamingo PEFT checkpoint reloads equal."""
from __future__ import annotations

import copy

import pytest
import torch

from openseason.checkpoint import load_model, save_checkpoint
from openseason.checkpoint.training import save_train_checkpoint
from openseason.config import Config
from openseason.data.interleaved import add_media_tokens
from openseason.model import GPT
from openseason.peft import apply, trainable_names
from openseason.peft.flamingo import encode_media, media_extras


def tiny(name, tie=False, vocab=None):
    torch.manual_seed(0)
    cfg = Config.from_name(name)
    cfg.tie_embeddings = tie
    if vocab:     # exactly the tokenizer's vocabulary: new tokens need new rows
        cfg.vocab_size = cfg.padded_vocab_size = vocab
    m = GPT(cfg)
    m.init_weights()
    return m


@pytest.mark.parametrize("name,tie,grow", [("tiny-llama", False, True), ("tiny-neox", True, True),
                                           ("tiny-mpt", False, True), ("tiny-llama", True, False)])
def test_only_new_rows_train(name, tie, grow, tiny_tokenizer):
    tok = copy.deepcopy(tiny_tokenizer)
    model = tiny(name, tie, vocab=tok.vocab_size if grow else None)
    vocab0 = model.config.vocab_size
    embed0, head0 = model.embed.weight.detach().clone(), model.lm_head.weight.detach().clone()
    media, eoc = add_media_tokens(tok)
    apply(model, "flamingo", dim_visual=16, media_token_id=media, every=2, heads=2, dim_head=8, perceiver_depth=1,
          num_latents=2, vocab_size=tok.vocab_size, token_ids=[media, eoc])
    assert model.embed.weight.shape[0] == (vocab0 + 2 if grow else vocab0)
    assert (model.lm_head.weight is model.embed.weight) == tie
    full = model.embed.full_weight()
    keep = torch.ones(vocab0, dtype=torch.bool)
    keep[[i for i in (media, eoc) if i < vocab0]] = False
    torch.testing.assert_close(full[media], embed0[keep].mean(0))
    assert "embed.rows" in trainable_names(model) and "embed.weight" not in trainable_names(model)
    assert ("lm_head.rows" in trainable_names(model)) == (not tie)

    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2, weight_decay=0.1)
    ids = torch.tensor([[media, 5, 6, 7, eoc, media, 8, 9, eoc]])
    for _ in range(3):
        logits = model(ids, extras=media_extras(model, encode_media(model, torch.randn(1, 2, 3, 16)), ids))
        loss = torch.nn.functional.cross_entropy(logits[0, :-1], ids[0, 1:])
        loss.backward()
        opt.step()
        opt.zero_grad()
    after = model.embed.full_weight().detach()
    others = torch.ones(after.size(0), dtype=torch.bool)
    others[[media, eoc]] = False
    assert torch.equal(after[others], model.embed.weight[others])     # every other row bit-identical ...
    assert torch.equal(after[:vocab0][keep], embed0[keep])             # ... to its value before
    assert not torch.allclose(after[media], full[media].detach())
    assert not torch.allclose(after[eoc], full[eoc].detach())
    if not tie:
        assert torch.equal(model.lm_head.weight[:vocab0][keep], head0[keep])
        assert not torch.allclose(model.lm_head.rows[1], head0[keep].mean(0))


def test_flamingo_peft_checkpoint_reloads(tmp_path, tiny_tokenizer):
    tok = copy.deepcopy(tiny_tokenizer)
    base = save_checkpoint(tmp_path / "base", tiny("tiny-llama"), tokenizer=tok)
    media, eoc = add_media_tokens(tok)
    model = load_model(base)
    apply(model, "flamingo", dim_visual=16, media_token_id=media, heads=2, dim_head=8, perceiver_depth=1,
          num_latents=2, vocab_size=tok.vocab_size, token_ids=[media, eoc])
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(torch.randn_like(p) * 0.1)
    ckpt = save_train_checkpoint(tmp_path / "ft", model, None, {"step": 1}, base_checkpoint=base, tokenizer=tok)
    again = load_model(ckpt)
    ids = torch.tensor([[3, media, 5, 6, eoc, 7]])
    feats = torch.randn(1, 1, 3, 16)
    with torch.no_grad():
        a = model.eval()(ids, extras=media_extras(model, encode_media(model, feats), ids))
        b = again(ids, extras=media_extras(again, encode_media(again, feats), ids))
        assert torch.equal(a, b)


def test_tokens_the_base_knew_keep_their_rows():
    model = tiny("tiny-llama")
    before = model.embed.weight.detach().clone()
    apply(model, "flamingo", dim_visual=16, media_token_id=7, heads=2, dim_head=8, perceiver_depth=1, num_latents=2,
          token_ids=[7, 8], new_token_ids=[8])
    full = model.embed.full_weight().detach()
    assert torch.equal(full[7], before[7])                      # known: kept
    keep = torch.ones(before.size(0), dtype=torch.bool)
    keep[[7, 8]] = False
    torch.testing.assert_close(full[8], before[keep].mean(0))   # new: the mean of the others
    assert "embed.rows" in trainable_names(model)
