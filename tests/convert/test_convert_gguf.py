"""GGUF export: read the written file back with gguf.GGUFReader (metadata, tensors, tokenizer), and,
where llama-cpp-python is installed, run it in llama.cpp and compare logits and greedy tokens with ours."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

gguf = pytest.importorskip("gguf")

from openseason.checkpoint import load_model, save_checkpoint, save_train_checkpoint  # noqa: E402
from openseason.cli import main as cli_main  # noqa: E402
from openseason.config import Config  # noqa: E402
from openseason.convert.gguf import convert_to_gguf, permute_rotary  # noqa: E402
from openseason.errors import CheckpointError  # noqa: E402
from openseason.model import GPT, apply_rope, rope_cache  # noqa: E402
from openseason.peft import apply as apply_peft  # noqa: E402
from openseason.tokenizer import Tokenizer, train_bpe  # noqa: E402
from ..checkpoint.helpers_checkpoint import trained_lora  # noqa: E402

TEXTS = ["The quick brown fox jumps over the lazy dog. " * 2, "Hello world, this is a small test of tokenizers.",
         "Numbers 12345 and punctuation: (a, b); c!", "llama.cpp loads GGUF files written by openseason."] * 10


def llama_tokenizer() -> Tokenizer:
    """A LLaMA-2-style tokenizer.json: <unk> <s> </s>, 256 byte-fallback tokens, then BPE pieces with '▁'."""
    from tokenizers import Tokenizer as HF, decoders, models, normalizers, pre_tokenizers, trainers

    trainer_tok = HF(models.BPE(unk_token="<unk>"))
    trainer_tok.normalizer = normalizers.Replace(" ", "▁")
    trainer_tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="never", split=True)
    trainer_tok.train_from_iterator(["▁" + t for t in TEXTS], trainers.BpeTrainer(vocab_size=200, show_progress=False))
    trained = json.loads(trainer_tok.to_str())["model"]
    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2}
    vocab.update({f"<0x{b:02X}>": 3 + b for b in range(256)})
    for piece, _ in sorted(trained["vocab"].items(), key=lambda kv: kv[1]):
        vocab.setdefault(piece, len(vocab))
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in trained["merges"]]
    backend = HF(models.BPE(vocab, merges, unk_token="<unk>", byte_fallback=True, fuse_unk=True))
    backend.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    backend.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(),
                                         decoders.Strip(" ", 1, 0)])
    from tokenizers import AddedToken
    backend.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in ("<unk>", "<s>", "</s>")])
    return Tokenizer(backend, bos_id=1, eos_id=2, add_bos=True)


def _model(config: Config, seed: int = 0) -> GPT:
    torch.manual_seed(seed)
    model = GPT(config)
    model.init_weights(std=0.2)   # larger than usual so logits are far from uniform and greedy is stable
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.add_(0.1 * torch.randn_like(p))
            elif name.endswith(".bias"):
                p.copy_(0.05 * torch.randn_like(p))
    return model.eval()


@pytest.fixture(scope="module")
def neox_ckpt(tmp_path_factory):
    tok = train_bpe(TEXTS, vocab_size=300)
    config = Config.from_name("tiny-neox", vocab_size=tok.vocab_size, padded_vocab_size=320, n_embd=64,
                              bos_token_id=tok.eos_id, eos_token_id=tok.eos_id)
    model = _model(config)
    return save_checkpoint(tmp_path_factory.mktemp("gguf") / "neox", model, tokenizer=tok), model, tok


@pytest.fixture(scope="module")
def llama_ckpt(tmp_path_factory):
    tok = llama_tokenizer()
    config = Config.from_name("tiny-llama", vocab_size=tok.vocab_size, padded_vocab_size=tok.vocab_size)
    model = _model(config, seed=1)
    return save_checkpoint(tmp_path_factory.mktemp("gguf") / "llama", model, tokenizer=tok), model, tok


@pytest.fixture(scope="module")
def mpt_ckpt(tmp_path_factory):
    """MPT with 6 heads (ALiBi slopes for a head count that is not a power of two) and clip_qkv."""
    tok = train_bpe(TEXTS, vocab_size=300)
    config = Config.from_name("tiny-mpt-clip", vocab_size=tok.vocab_size, padded_vocab_size=320, n_head=6,
                              n_embd=96, intermediate_size=384, bos_token_id=tok.eos_id, eos_token_id=tok.eos_id)
    model = _model(config, seed=2)
    return save_checkpoint(tmp_path_factory.mktemp("gguf") / "mpt", model, tokenizer=tok), model, tok


@pytest.fixture
def exported(request, neox_ckpt, llama_ckpt, mpt_ckpt):
    """(checkpoint, model, tokenizer) of the family named by the test's `family` parameter."""
    return {"neox": neox_ckpt, "llama": llama_ckpt, "mpt": mpt_ckpt}[request.node.callspec.params["family"]]


def _fields(reader) -> dict:
    return {name: field.contents() for name, field in reader.fields.items()}


def _tensors(reader) -> dict[str, tuple[np.ndarray, str, tuple]]:
    out = {}
    for t in reader.tensors:
        data = gguf.quants.dequantize(t.data, t.tensor_type)
        out[t.name] = (np.asarray(data, dtype=np.float32).reshape(tuple(reversed(t.shape.tolist()))),
                       t.tensor_type.name, tuple(int(d) for d in t.shape))
    return out


def _expected(model: GPT) -> dict[str, np.ndarray]:
    """Our weights under their GGUF names, written out here independently of the exporter."""
    c = model.config
    s = {k: v.detach().float().numpy() for k, v in model.state_dict().items()}
    out = {"token_embd.weight": s["embed.weight"], "output_norm.weight": s["norm_f.weight"],
           "output.weight": s["lm_head.weight"]}
    if "norm_f.bias" in s:
        out["output_norm.bias"] = s["norm_f.bias"]
    for i in range(c.n_layer):
        b = f"blocks.{i}."
        names = {"norm_1": "attn_norm", "norm_2": "ffn_norm", "attn.proj": "attn_output", "mlp.proj": "ffn_down"}
        if c.family in ("gpt_neox", "mpt"):
            names.update({"attn.qkv": "attn_qkv", "mlp.fc": "ffn_up"})
        else:
            names.update({"mlp.fc_1": "ffn_gate", "mlp.fc_2": "ffn_up"})
            q_rows, kv_rows = c.n_head * c.head_size, c.n_query_groups * c.head_size
            qkv = s[b + "attn.qkv.weight"]
            out[f"blk.{i}.attn_q.weight"] = permute_rotary(qkv[:q_rows], c.n_head)
            out[f"blk.{i}.attn_k.weight"] = permute_rotary(qkv[q_rows:q_rows + kv_rows], c.n_query_groups)
            out[f"blk.{i}.attn_v.weight"] = qkv[q_rows + kv_rows:]
        for ours, theirs in names.items():
            for kind in ("weight", "bias"):
                if f"{b}{ours}.{kind}" in s:
                    out[f"blk.{i}.{theirs}.{kind}"] = s[f"{b}{ours}.{kind}"]
    return out


# -- read back (no llama.cpp needed) ---------------------------------------------------------------------
@pytest.mark.parametrize("family", ["neox", "llama", "mpt"])
@pytest.mark.parametrize("kind", ["f32", "f16", "q8_0"])
def test_gguf_tensors_read_back(family, kind, exported, tmp_path):
    ckpt, model, _ = exported
    result = convert_to_gguf(ckpt, tmp_path / "m.gguf", type=kind)
    tensors = _tensors(gguf.GGUFReader(tmp_path / "m.gguf"))
    expected = _expected(model)
    assert set(tensors) == set(expected)
    for name, want in expected.items():
        got, ggml_type, shape = tensors[name]
        assert shape == tuple(reversed(want.shape)), name        # GGML lists dims innermost first
        assert got.shape == want.shape, name
        if want.ndim == 1 or kind == "f32":
            assert ggml_type == "F32", name
            np.testing.assert_array_equal(got, want, err_msg=name)
        elif kind == "f16" or name in result.fallbacks:
            assert ggml_type == "F16", name
            np.testing.assert_array_equal(got, want.astype(np.float16).astype(np.float32), err_msg=name)
        else:
            assert ggml_type == "Q8_0", name
            # Q8_0: each block of 32 values shares the scale amax/127, stored as f16: the error is at most
            # half a step plus 127 times the scale's f16 rounding (2^-11 relative).
            blocks = np.abs(want).reshape(want.shape[0], -1, 32).max(-1, keepdims=True)
            bound = np.broadcast_to(blocks * (0.5 / 127 + 2.0 ** -11) + 1e-7, blocks.shape[:-1] + (32,))
            bound = bound.reshape(want.shape)
            assert (np.abs(got - want) <= bound).all(), name
    if kind == "q8_0" and family == "llama":
        # tiny-llama's intermediate size 176 is not a multiple of 32: the down projections stay F16, reported.
        assert result.fallbacks == [f"blk.{i}.ffn_down.weight" for i in range(model.config.n_layer)]
    assert result.tensor_types == {n: t for n, (_, t, _) in tensors.items()}


def test_gguf_metadata_and_byte_level_tokenizer(neox_ckpt, tmp_path):
    ckpt, model, tok = neox_ckpt
    convert_to_gguf(ckpt, tmp_path / "m.gguf", type="f16")
    f = _fields(gguf.GGUFReader(tmp_path / "m.gguf"))
    c = model.config
    assert f["general.architecture"] == "gptneox" and f["general.file_type"] == int(gguf.LlamaFileType.MOSTLY_F16)
    assert (f["gptneox.context_length"], f["gptneox.embedding_length"], f["gptneox.block_count"],
            f["gptneox.feed_forward_length"], f["gptneox.attention.head_count"]) == (
        c.block_size, c.n_embd, c.n_layer, c.intermediate_size, c.n_head)
    assert f["gptneox.rope.dimension_count"] == c.rope_n_elem == 4
    assert f["gptneox.use_parallel_residual"] is True
    assert f["gptneox.attention.layer_norm_epsilon"] == pytest.approx(c.norm_eps)
    assert f["tokenizer.ggml.model"] == "gpt2" and f["tokenizer.ggml.pre"] == "gpt-2"
    vocab = tok.backend.get_vocab(with_added_tokens=True)
    tokens = f["tokenizer.ggml.tokens"]
    assert len(tokens) == c.padded_vocab_size == 320
    assert all(tokens[i] == t for t, i in vocab.items())
    assert tokens[tok.vocab_size:] == [f"[PAD{i}]" for i in range(tok.vocab_size, 320)]
    types = f["tokenizer.ggml.token_type"]
    assert types[tok.eos_id] == gguf.TokenType.CONTROL
    assert set(types[tok.vocab_size:]) == {gguf.TokenType.USER_DEFINED}
    assert sum(t == gguf.TokenType.NORMAL for t in types) == tok.vocab_size - 1
    merges = json.loads((ckpt / "tokenizer.json").read_text())["model"]["merges"]
    assert f["tokenizer.ggml.merges"] == [m if isinstance(m, str) else " ".join(m) for m in merges]
    assert f["tokenizer.ggml.eos_token_id"] == tok.eos_id and f["tokenizer.ggml.add_bos_token"] is False
    assert "tokenizer.ggml.scores" not in f


def test_gguf_llama_metadata_and_sentencepiece_tokenizer(llama_ckpt, tmp_path):
    ckpt, model, tok = llama_ckpt
    convert_to_gguf(ckpt, tmp_path / "m.gguf", type="f32")
    f = _fields(gguf.GGUFReader(tmp_path / "m.gguf"))
    c = model.config
    assert f["general.architecture"] == "llama"
    assert f["llama.attention.head_count_kv"] == c.n_query_groups == 2
    assert f["llama.rope.dimension_count"] == c.head_size
    assert f["llama.attention.layer_norm_rms_epsilon"] == pytest.approx(c.norm_eps)
    assert f["llama.vocab_size"] == c.padded_vocab_size
    assert f["tokenizer.ggml.model"] == "llama" and "tokenizer.ggml.merges" not in f
    assert f["tokenizer.ggml.add_space_prefix"] is True and f["tokenizer.ggml.add_bos_token"] is True
    assert (f["tokenizer.ggml.bos_token_id"], f["tokenizer.ggml.eos_token_id"],
            f["tokenizer.ggml.unknown_token_id"]) == (1, 2, 0)
    tokens, types, scores = f["tokenizer.ggml.tokens"], f["tokenizer.ggml.token_type"], f["tokenizer.ggml.scores"]
    assert tokens[3 + 0x41] == "<0x41>" and types[3 + 0x41] == gguf.TokenType.BYTE
    assert [types[i] for i in range(3)] == [gguf.TokenType.UNKNOWN, gguf.TokenType.CONTROL, gguf.TokenType.CONTROL]
    merges = json.loads((ckpt / "tokenizer.json").read_text())["model"]["merges"]
    first = "".join(merges[0] if not isinstance(merges[0], str) else merges[0].split(" "))
    last = "".join(merges[-1] if not isinstance(merges[-1], str) else merges[-1].split(" "))
    assert scores[tokens.index(first)] == -1.0 and scores[tokens.index(last)] == -float(len(merges))


def test_gguf_mpt_metadata(mpt_ckpt, tmp_path):
    ckpt, model, _ = mpt_ckpt
    convert_to_gguf(ckpt, tmp_path / "m.gguf", type="f32")
    f = _fields(gguf.GGUFReader(tmp_path / "m.gguf"))
    c = model.config
    assert f["general.architecture"] == "mpt"
    assert (f["mpt.context_length"], f["mpt.embedding_length"], f["mpt.block_count"], f["mpt.feed_forward_length"],
            f["mpt.attention.head_count"], f["mpt.attention.head_count_kv"]) == (
        c.block_size, c.n_embd, c.n_layer, c.intermediate_size, 6, 6)
    assert f["mpt.attention.max_alibi_bias"] == pytest.approx(c.alibi_bias_max)
    assert f["mpt.attention.clamp_kqv"] == pytest.approx(0.5)
    assert f["mpt.attention.layer_norm_epsilon"] == pytest.approx(c.norm_eps)
    assert not any(k.startswith("mpt.rope") for k in f)     # ALiBi: no rotary keys
    # LayerNorms without bias: no *_norm.bias tensors at all
    assert not [t.name for t in gguf.GGUFReader(tmp_path / "m.gguf").tensors if t.name.endswith("norm.bias")]


def test_llama_permutation_matches_interleaved_rope():
    """The q/k row permutation turns our rotate-half rope into llama.cpp's interleaved (GGML "norm") rope."""
    config = Config.from_name("tiny-llama")
    hs, heads = config.head_size, config.n_head
    torch.manual_seed(0)
    w = torch.randn(heads * hs, config.n_embd)
    x = torch.randn(5, config.n_embd)
    cos, sin = rope_cache(config, length=5)
    ours = apply_rope((x @ w.T).view(5, heads, hs).transpose(0, 1), cos, sin)              # [H, T, hs]
    perm = torch.from_numpy(permute_rotary(w.numpy(), heads))
    y = (x @ perm.T).view(5, heads, hs).transpose(0, 1)
    freqs = 1.0 / (config.rope_base ** (torch.arange(0, hs, 2).float() / hs))
    angle = torch.arange(5).float()[:, None] * freqs[None]                                  # [T, hs/2]
    a, b = y[..., 0::2], y[..., 1::2]
    inter = torch.stack((a * angle.cos() - b * angle.sin(), a * angle.sin() + b * angle.cos()), -1).flatten(-2)
    # llama.cpp's output in interleaved order equals ours after the same permutation of each head's dims.
    ours_perm = torch.from_numpy(permute_rotary(ours.reshape(heads * 5, hs).T.contiguous().numpy(), 1)).T
    assert torch.allclose(inter.reshape(heads * 5, hs), ours_perm, atol=1e-5)


# -- PEFT, errors, CLI ------------------------------------------------------------------------------------
def test_lora_checkpoint_is_folded_and_adapter_refused(neox_ckpt, tmp_path):
    ckpt, _, _ = neox_ckpt
    lora, _model = trained_lora(ckpt, tmp_path / "lora")
    convert_to_gguf(lora, tmp_path / "lora.gguf", type="f32")
    merged = load_model(lora)
    from openseason.peft import merge
    merge(merged)
    got = _tensors(gguf.GGUFReader(tmp_path / "lora.gguf"))
    want = _expected(merged.eval())
    np.testing.assert_array_equal(got["blk.1.attn_qkv.weight"][0], want["blk.1.attn_qkv.weight"])
    base = _tensors(gguf.GGUFReader(convert_to_gguf(ckpt, tmp_path / "base.gguf", type="f32").path))
    assert not np.array_equal(got["blk.1.attn_qkv.weight"][0], base["blk.1.attn_qkv.weight"][0])

    model = load_model(ckpt)
    apply_peft(model, "adapter-v2", prompt_length=2)
    adapter = save_train_checkpoint(tmp_path / "adapter", model, None, {"step": 1}, base_checkpoint=ckpt)
    with pytest.raises(CheckpointError, match="merge"):
        convert_to_gguf(adapter, tmp_path / "adapter.gguf")
    assert not (tmp_path / "adapter.gguf").exists() and not list(tmp_path.glob(".adapter.gguf.*"))


def test_to_gguf_cli(neox_ckpt, tmp_path, capsys):
    ckpt, _, _ = neox_ckpt
    assert cli_main(["convert", "to-gguf", str(ckpt), str(tmp_path / "m.gguf"), "--type", "q8_0"]) == 0
    assert "Q8_0" in capsys.readouterr().out and (tmp_path / "m.gguf").is_file()
    assert cli_main(["convert", "to-gguf", str(tmp_path / "missing"), str(tmp_path / "x.gguf")]) == 2
    assert "checkpoint directory not found" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        cli_main(["convert", "to-gguf", str(ckpt), str(tmp_path / "x.gguf"), "--type", "q4_0"])
    assert exc.value.code == 2


def test_missing_tokenizer_is_an_error(tmp_path):
    ckpt = save_checkpoint(tmp_path / "bare", _model(Config.from_name("tiny-neox")))
    with pytest.raises(CheckpointError, match="tokenizer.json"):
        convert_to_gguf(ckpt, tmp_path / "m.gguf")


# -- llama.cpp itself ---------------------------------------------------------------------------------------
def _llama_cpp():
    try:
        import llama_cpp
    except ImportError as exc:    # CI does not build llama.cpp
        pytest.skip(f"llama-cpp-python is not importable ({exc}); the read-back tests above still ran")
    return llama_cpp


# Max |logit gap| to ours, measured on these fixtures (logits up to ~6) with llama-cpp-python 0.3.36,
# one thread, F32 KV cache: neox f32 2.3e-3 (ggml's GELU is the tanh form through an f16 table, Pythia's
# the exact erf), llama f32 1.2e-5; f16 6.4e-3 / 1.2e-2; q8_0 0.12 / 0.24 (ggml's q8_0 dot product
# also rounds the activation to 8 bits). Bounds are about twice the measurement.
# MPT (6 heads, clip_qkv 0.5; GELU as for NeoX): f32 2.6e-3, f16 9.3e-3, q8_0 0.27.
TOLERANCE = {("neox", "f32"): 5e-3, ("llama", "f32"): 1e-4, ("neox", "f16"): 1.5e-2, ("llama", "f16"): 2.5e-2,
             ("neox", "q8_0"): 0.25, ("llama", "q8_0"): 0.5,
             ("mpt", "f32"): 5e-3, ("mpt", "f16"): 2e-2, ("mpt", "q8_0"): 0.5}


def _without_cpu_repack(monkeypatch, llama_cpp):
    """llama.cpp 0.3.36's extra CPU buffer types (weight repacking / AMX) crash with a segfault on these
    tiny Q8_0 models on our AVX-512+AMX CPU (like ggml-org/llama.cpp#20824, a segfault in
    ggml_backend_amx_mul_mat); plain CPU buffers run them (use_extra_bufts=False)."""
    default = llama_cpp.llama_cpp.llama_model_default_params

    def params():
        p = default()
        p.use_extra_bufts = False
        return p
    monkeypatch.setattr(llama_cpp.llama.llama_cpp, "llama_model_default_params", params)


@pytest.mark.parametrize("family", ["neox", "llama", "mpt"])
@pytest.mark.parametrize("kind", ["f32", "f16", "q8_0"])
def test_llama_cpp_runs_the_export(family, kind, exported, tmp_path, monkeypatch):
    llama_cpp = _llama_cpp()
    _without_cpu_repack(monkeypatch, llama_cpp)
    ckpt, model, tok = exported
    path = convert_to_gguf(ckpt, tmp_path / "m.gguf", type=kind).path
    llm = llama_cpp.Llama(model_path=str(path), logits_all=True, n_ctx=64, n_threads=1, verbose=False,
                          type_k=0, type_v=0)   # GGML_TYPE_F32 KV cache (the default F16 adds ~1e-3)
    text = "The quick brown fox jumps over the lazy dog."
    ids = tok.encode(text)
    assert llm.tokenize(text.encode(), add_bos=tok.add_bos, special=False) == ids
    llm.eval(ids)
    theirs = np.array(llm.scores[: llm.n_tokens])
    with torch.no_grad():
        ours = model(torch.tensor([ids]))[0].numpy()
    gap = np.abs(theirs - ours).max()
    assert gap < TOLERANCE[family, kind], f"max |logit gap| {gap:.2e}"
    if kind == "f32":
        # greedy continuation, token by token in llama.cpp, against ours
        ours_ids = list(ids)
        for _ in range(12):
            with torch.no_grad():
                ours_ids.append(int(model(torch.tensor([ours_ids]))[0, -1].argmax()))
        llm.reset()
        llm.eval(ids)
        theirs_ids = list(ids)
        for _ in range(12):
            theirs_ids.append(int(np.argmax(llm.scores[llm.n_tokens - 1])))
            llm.eval([theirs_ids[-1]])
        assert theirs_ids == ours_ids
