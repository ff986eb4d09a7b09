"""MPT against transformers' MptForCausalLM (fp32, CPU): logits, greedy tokens, KV-cache decoding, left
padding; MosaicML config.json layouts that load natively but cannot be exported; named-config sizes."""
from __future__ import annotations

import json

import pytest
import torch

from openseason.checkpoint import load_model
from openseason.config import NAMED_CONFIGS, Config
from openseason.convert import convert_from_hf, convert_to_hf
from openseason.errors import CheckpointError
from openseason.generation.engine import generate_ids
from openseason.generation.sampling import SamplingParams
from openseason.model import alibi_slopes, count_parameters

transformers = pytest.importorskip("transformers")
ATOL = 1e-5
VOCAB = 96


def _make_mpt(directory, **overrides):
    from transformers import MptConfig, MptForCausalLM

    settings = dict(vocab_size=VOCAB, d_model=48, n_heads=6, n_layers=2, max_seq_len=64,
                    bos_token_id=0, eos_token_id=0)
    attn = overrides.pop("attn_config", {})
    settings.update(overrides)
    torch.manual_seed(0)
    model = MptForCausalLM(MptConfig(attn_config=attn, **settings)).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.add_(torch.randn_like(p) * 0.1)
    model.save_pretrained(directory)
    return model


@pytest.fixture(scope="module", params=["6-heads", "clip_qkv"])
def pair(request, tmp_path_factory):
    """(transformers model, our model, our checkpoint) for a 6-head MPT and one with clip_qkv set."""
    tmp = tmp_path_factory.mktemp(request.param)
    overrides = {} if request.param == "6-heads" else dict(n_heads=4, attn_config={"clip_qkv": 0.3})
    hf = _make_mpt(tmp / "hf", **overrides)
    ckpt = convert_from_hf(tmp / "hf", tmp / "ours")
    return hf, load_model(ckpt).eval(), ckpt


def _ids(batch=2, length=12, seed=1):
    return torch.randint(1, VOCAB, (batch, length), generator=torch.Generator().manual_seed(seed))


def test_slopes_match_transformers_for_any_head_count():
    from transformers.models.mpt.modeling_mpt import build_mpt_alibi_tensor

    for heads in (1, 2, 3, 4, 6, 8, 12, 16, 20, 32, 64):
        theirs = build_mpt_alibi_tensor(heads, 2)[:, 0, 0] * -1     # bias of the key one step back = -slope
        torch.testing.assert_close(alibi_slopes(heads), theirs, atol=0, rtol=0)
    # 6 heads: odd-numbered slopes of 8 heads, then even-numbered ones
    assert alibi_slopes(6).tolist() == [2.0 ** -e for e in (2, 4, 6, 8, 1, 3)]
    assert alibi_slopes(4, alibi_bias_max=16).tolist() == [2.0 ** -e for e in (4, 8, 12, 16)]


def test_logits_and_round_trip(pair, tmp_path):
    hf, ours, ckpt = pair
    ids = _ids()
    with torch.no_grad():
        expected = hf(ids).logits
        torch.testing.assert_close(ours(ids), expected, atol=ATOL, rtol=0)
    config = json.loads((ckpt / "config.json").read_text())
    assert config["family"] == "mpt" and config["alibi"] and config["rotary_percentage"] == 0
    assert config["clip_qkv"] == hf.config.attn_config.clip_qkv

    back = convert_to_hf(ckpt, tmp_path / "back")
    hf_config = json.loads((back / "config.json").read_text())
    assert hf_config["architectures"] == ["MptForCausalLM"] and "attn_config" in hf_config
    again, info = transformers.AutoModelForCausalLM.from_pretrained(back, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"], info
    with torch.no_grad():
        torch.testing.assert_close(again.eval()(ids).logits, expected, atol=ATOL, rtol=0)


def test_greedy_tokens_equal_transformers(pair):
    hf, ours, _ = pair
    prompt = _ids(1, 7, seed=3)
    with torch.no_grad():
        theirs = hf.generate(prompt, max_new_tokens=10, do_sample=False, min_new_tokens=10,
                             pad_token_id=0)[0, 7:].tolist()
    (done,) = generate_ids(ours, [prompt[0].tolist()], SamplingParams(max_new_tokens=10, ignore_eos=True))
    assert done.token_ids == theirs


def test_kv_cache_decoding_equals_full_recompute(pair):
    _, ours, _ = pair
    ids = _ids(2, 16)
    with torch.no_grad():
        full = ours(ids)
        cache = ours.new_kv_cache(2, 16)
        steps = [ours(ids[:, :9], kv_cache=cache)]
        steps += [ours(ids[:, t:t + 1], kv_cache=cache) for t in range(9, 16)]
    torch.testing.assert_close(torch.cat(steps, dim=1), full, atol=ATOL, rtol=0)


def test_left_padded_batch_equals_rows_alone(pair):
    _, ours, _ = pair
    rows = [_ids(1, 11, seed=5)[0], _ids(1, 6, seed=6)[0]]
    width = 11
    ids = torch.zeros(2, width, dtype=torch.long)
    mask = torch.zeros(2, width, dtype=torch.long)
    for i, row in enumerate(rows):
        ids[i, width - len(row):] = row
        mask[i, width - len(row):] = 1
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    with torch.no_grad():
        cache = ours.new_kv_cache(2, width + 3)
        batch = ours(ids, position_ids=positions, attention_mask=mask, kv_cache=cache)
        nxt = batch[:, -1].argmax(-1, keepdim=True)
        mask2 = torch.cat([mask, torch.ones(2, 1, dtype=torch.long)], dim=1)
        step = ours(nxt, position_ids=positions[:, -1:] + 1, attention_mask=mask2, kv_cache=cache)
        for i, row in enumerate(rows):
            alone = ours(row[None])
            torch.testing.assert_close(batch[i, width - len(row):], alone[0], atol=ATOL, rtol=0)
            alone_next = ours(torch.cat([row, nxt[i]])[None])[0, -1]
            torch.testing.assert_close(step[i, 0], alone_next, atol=ATOL, rtol=0)
    # the batched generator (left padding, KV cache) gives each row's greedy tokens
    params = SamplingParams(max_new_tokens=6, ignore_eos=True)
    together = generate_ids(ours, [r.tolist() for r in rows], params)
    for row, done in zip(rows, together):
        (alone,) = generate_ids(ours, [row.tolist()], params)
        assert done.token_ids == alone.token_ids


def test_packed_segments_equal_sequences_alone(pair):
    _, ours, _ = pair
    a, b = _ids(1, 7, seed=8)[0], _ids(1, 5, seed=9)[0]
    packed = torch.cat([a, b])[None]
    segments = torch.tensor([[0] * 7 + [1] * 5])
    positions = torch.tensor([list(range(7)) + list(range(5))])
    with torch.no_grad():
        out = ours(packed, position_ids=positions, segment_ids=segments)[0]
        torch.testing.assert_close(out[:7], ours(a[None])[0], atol=ATOL, rtol=0)
        torch.testing.assert_close(out[7:], ours(b[None])[0], atol=ATOL, rtol=0)


# -- MosaicML layouts transformers cannot express ------------------------------------------------------
def _mosaic_dir(tmp_path, hf_model_dir, **changes):
    """A copy of a saved MPT directory whose config.json is rewritten the way MosaicML's code writes it."""
    import shutil

    target = tmp_path / "mosaic"
    shutil.copytree(hf_model_dir, target)
    config = json.loads((target / "config.json").read_text())
    config["architectures"] = ["MPTForCausalLM"]
    attn = changes.pop("attn_config", {})
    config["attn_config"] = {**config.get("attn_config", {}), **attn}
    config.update(changes)
    (target / "config.json").write_text(json.dumps(config))
    return target


@pytest.mark.parametrize("change, field", [
    (dict(attn_config={"alibi_bias_max": 16}), "alibi_bias_max"),
    (dict(attn_config={"alibi": False}, learned_pos_emb=False), "alibi=False"),
])
def test_native_only_configs_load_and_to_hf_refuses(change, field, tmp_path):
    _make_mpt(tmp_path / "hf")
    ckpt = convert_from_hf(_mosaic_dir(tmp_path, tmp_path / "hf", **change), tmp_path / "ours")
    model = load_model(ckpt)
    with torch.no_grad():
        assert torch.isfinite(model(_ids())).all()
    with pytest.raises(CheckpointError, match=field):
        convert_to_hf(ckpt, tmp_path / "back")


def test_expansion_ratio_and_biases_load_natively(tmp_path):
    """A MosaicML checkpoint with expansion_ratio 2 and biases (no_bias false): built from our own model's
    weights, saved in MPT names; it loads, computes what we compute, and to-hf names both fields."""
    from openseason.convert.families import FAMILIES
    from openseason.convert.keymap import state_to_hf
    from safetensors.torch import save_file

    cfg = Config.from_name("tiny-mpt", intermediate_size=96, bias=True, norm_bias=True, padded_vocab_size=VOCAB,
                           vocab_size=VOCAB)
    from openseason.model import GPT
    torch.manual_seed(0)
    model = GPT(cfg).eval()
    model.init_weights()
    hf_dir = tmp_path / "hf"
    hf_dir.mkdir()
    save_file(state_to_hf(FAMILIES["mpt"], cfg, {k: v for k, v in model.state_dict().items()
                                                  if not k.startswith("rope") and k != "lm_head.weight"}),
              hf_dir / "model.safetensors")
    (hf_dir / "config.json").write_text(json.dumps({
        "architectures": ["MPTForCausalLM"], "model_type": "mpt", "d_model": 48, "n_heads": 6, "n_layers": 2,
        "expansion_ratio": 2, "max_seq_len": 128, "vocab_size": VOCAB, "no_bias": False, "learned_pos_emb": True,
        "attn_config": {"alibi": True, "alibi_bias_max": 8, "clip_qkv": None, "qk_ln": False, "prefix_lm": False,
                        "softmax_scale": None, "attn_type": "multihead_attention"}}))
    ckpt = convert_from_hf(hf_dir, tmp_path / "ours")
    loaded = load_model(ckpt).eval()
    ids = _ids()
    with torch.no_grad():
        torch.testing.assert_close(loaded(ids), model(ids), atol=ATOL, rtol=0)
    with pytest.raises(CheckpointError, match="expansion_ratio 2.*|bias=True"):
        convert_to_hf(ckpt, tmp_path / "back")


@pytest.mark.parametrize("change, field", [
    (dict(attn_config={"qk_ln": True}), "qk_ln"),
    (dict(attn_config={"prefix_lm": True}), "prefix_lm"),
    (dict(logit_scale=0.5), "logit_scale"),
    (dict(attn_config={"alibi": False}, learned_pos_emb=True), "learned_pos_emb"),
    (dict(attn_config={"softmax_scale": 0.01}), "softmax_scale"),
])
def test_unbuildable_configs_are_refused_naming_the_field(change, field, tmp_path):
    _make_mpt(tmp_path / "hf")
    with pytest.raises(CheckpointError, match=field):
        convert_from_hf(_mosaic_dir(tmp_path, tmp_path / "hf", **change), tmp_path / "ours")


# -- named configs ------------------------------------------------------------------------------------
MPT_NAMES = sorted(n for n in NAMED_CONFIGS if n.startswith(("mpt-", "tiny-mpt")))


def _hf_config_for(cfg: Config):
    from transformers import MptConfig

    return MptConfig(d_model=cfg.n_embd, n_heads=cfg.n_head, n_layers=cfg.n_layer, max_seq_len=cfg.block_size,
                     vocab_size=cfg.padded_vocab_size, expansion_ratio=cfg.intermediate_size // cfg.n_embd,
                     attn_config={"alibi_bias_max": int(cfg.alibi_bias_max), "clip_qkv": cfg.clip_qkv})


@pytest.mark.parametrize("name", MPT_NAMES)
def test_named_config_parameter_count_equals_transformers(name):
    from transformers import MptForCausalLM

    cfg = Config.from_name(name)
    with torch.device("meta"):
        theirs = MptForCausalLM(_hf_config_for(cfg))
    assert count_parameters(cfg) == sum(p.numel() for p in theirs.parameters())
    if name.startswith("mpt-"):
        assert cfg.hf_id == f"mosaicml/{name}" and cfg.alibi and cfg.tie_embeddings
    assert {"mpt-7b", "mpt-7b-instruct", "mpt-7b-chat", "mpt-7b-storywriter", "mpt-7b-8k", "mpt-30b"} <= set(MPT_NAMES)
    assert Config.from_name("mpt-7b-storywriter").block_size == 65536


def test_perplexity_of_a_converted_mpt_equals_transformers(pair, tmp_path):
    """`openseason evaluate perplexity` on an MPT checkpoint: the same number transformers' model gives."""
    import json
    import math

    from tokenizers import Tokenizer as HFTokenizer
    from tokenizers.models import WordLevel
    from tokenizers.pre_tokenizers import Whitespace

    from openseason.evaluate.perplexity import perplexity
    from openseason.generation.llm import LLM
    from openseason.tokenizer import Tokenizer

    hf, _ours, ckpt = pair
    texts = ["the quick brown fox jumps over the lazy dog " * 2, "a b c d e f g h i j k l m n o p"]
    words = sorted({w for t in texts for w in t.split()})          # a word-level vocabulary inside VOCAB ids
    backend = HFTokenizer(WordLevel({"<eos>": 0, "<unk>": 1, **{w: i + 2 for i, w in enumerate(words)}},
                                    unk_token="<unk>"))
    backend.pre_tokenizer = Whitespace()
    backend.save(str(ckpt / "tokenizer.json"))
    tok = Tokenizer.from_dir(ckpt)
    data = tmp_path / "docs.jsonl"
    data.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    ours = perplexity(LLM.load(ckpt, device="cpu"), data, window=64, stride=64)
    nll, count = 0.0, 0
    with torch.no_grad():
        for t in texts:
            ids = torch.tensor([tok.encode(t)])
            logp = torch.log_softmax(hf(ids).logits[0, :-1].double(), -1)
            nll -= float(logp.gather(1, ids[0, 1:, None]).sum())
            count += ids.size(1) - 1
    assert ours["tokens"] == count
    assert ours["perplexity"] == pytest.approx(math.exp(nll / count), rel=1e-4)
