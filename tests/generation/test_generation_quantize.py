"""Weight-only int8 / bf16 quantization: the int8 rounding bound, the kernel path against the
dequantized reference, logits close to fp32, greedy decoding through the one engine, LLM.load(quantize=)."""
from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from openseason.checkpoint import save_checkpoint
from openseason.config import Config
from openseason.errors import OpenseasonError
from openseason.generation import SamplingParams, generate_ids, quantize_bf16, quantize_int8
from openseason.generation.llm import LLM
from openseason.generation.quantize import BF16Linear, Int8DynamicLinear, Int8Linear, quantize
from openseason.model import GPT
from openseason.tokenizer import train_bpe


def _model(name: str = "tiny-llama") -> GPT:
    torch.manual_seed(0)
    model = GPT(Config.from_name(name))
    model.init_weights(std=0.1)
    return model.eval()


def test_int8_rounding_bound_and_kernel_matches_reference():
    torch.manual_seed(0)
    linear = nn.Linear(64, 48, bias=True)
    q = Int8Linear.from_linear(linear)
    assert q.qweight.dtype == torch.int8 and q.qweight.abs().max() <= 127
    err = (q.dequantized_weight() - linear.weight).abs()
    assert (err <= linear.weight.abs().amax(1, keepdim=True) / 127 * 0.5 + 1e-7).all()   # half a step per row
    x = torch.randn(3, 5, 64)
    reference = nn.functional.linear(x, q.dequantized_weight(), linear.bias)
    # The int8 kernel takes a bf16 activation: the product is within bf16 rounding of the reference.
    assert torch.allclose(q(x), reference, atol=2e-2, rtol=1e-2)
    q.kernel = "dequantize"
    assert torch.allclose(q(x), reference, atol=1e-5)


@pytest.mark.parametrize("name", ["tiny-llama", "tiny-neox"])
@pytest.mark.parametrize("mode", ["int8", "int8-dynamic", "bf16"])
def test_quantized_model_logits_and_greedy(name, mode):
    model = _model(name)
    ids = torch.randint(0, model.config.vocab_size, (1, 12), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref = model(ids)
    quantize(model, mode)
    kinds = {type(m) for m in model.modules()}
    assert nn.Linear not in kinds
    assert {"int8": Int8Linear, "int8-dynamic": Int8DynamicLinear, "bf16": BF16Linear}[mode] in kinds
    per_layer = 5 if model.config.mlp_class == "LLaMAMLP" else 4   # qkv, proj, MLP (fc_1, fc_2 | fc), proj
    assert model.quantized_linears == per_layer * model.config.n_layer + 1   # + lm_head
    with torch.no_grad():
        got = model(ids)
    gap = (got - ref).abs().max().item()
    # activations rounded to int8 per row (int8-dynamic) cost more than weight rounding alone
    assert gap < (0.1 if mode == "int8-dynamic" else 0.05) * ref.abs().max().item(), gap
    out = generate_ids(model, [ids[0].tolist()], SamplingParams(max_new_tokens=4, ignore_eos=True))[0]
    assert len(out.token_ids) == 4
    with pytest.raises(OpenseasonError, match="already quantized"):
        quantize(model, mode)


def test_tied_lm_head_keeps_embedding():
    model = _model("tiny-llama")
    config = model.config
    config.tie_embeddings = True
    model = GPT(config).eval()
    quantize_int8(model)
    assert isinstance(model.embed, nn.Embedding) and model.embed.weight.dtype == torch.float32
    assert isinstance(model.lm_head, Int8Linear)


def test_llm_load_quantize(tmp_path):
    tok = train_bpe(["hello world " * 20, "the quick brown fox"] * 5, vocab_size=300)
    model = GPT(Config.from_name("tiny-neox", vocab_size=tok.vocab_size, padded_vocab_size=tok.vocab_size,
                                 bos_token_id=tok.eos_id, eos_token_id=tok.eos_id))
    model.init_weights()
    ckpt = save_checkpoint(tmp_path / "ckpt", model, tokenizer=tok)
    llm = LLM.load(ckpt, device="cpu", quantize="int8")
    assert isinstance(llm.model.lm_head, Int8Linear)
    assert isinstance(llm.generate("hello", max_new_tokens=3), str)
    assert isinstance(LLM.load(ckpt, device="cpu", quantize="bf16").model.lm_head, BF16Linear)
    with pytest.raises(OpenseasonError, match="unknown quantization"):
        LLM.load(ckpt, device="cpu", quantize="int4")
    assert quantize_bf16 is not None


def test_int8_dynamic_layer_against_the_dequantized_reference():
    """int8 weights (the same rounding as Int8Linear) times each activation row rounded to int8 with its
    own scale: within that rounding of x @ dequantized(W).T + b, rows at every scale; the kernel and the
    torch fallback compute the same integers."""
    torch.manual_seed(0)
    linear = nn.Linear(64, 48, bias=True)
    layer = Int8DynamicLinear(linear)
    qweight, scale = layer.int8_weight()
    assert torch.equal(qweight, Int8Linear.from_linear(linear).qweight)
    dequantized = qweight.float() * scale[:, None]
    fallback = Int8DynamicLinear(linear)
    fallback.kernel = "torch"
    for x in (torch.randn(1, 64), torch.randn(2, 7, 64) * 30, torch.randn(3, 64) * 1e-3, torch.randn(40, 64)):
        reference = nn.functional.linear(x, dequantized, linear.bias)
        step = x.reshape(-1, 64).abs().amax(1) / 127          # one scale per activation row
        bound = (step[:, None] * dequantized.abs().sum(1)[None, :] * 0.5 + 1e-4).reshape(reference.shape)
        got = layer(x)
        assert got.shape == reference.shape
        assert ((got - reference).abs() <= bound).all()
        torch.testing.assert_close(got, fallback(x), atol=1e-5, rtol=1e-6)
    assert torch.allclose(layer(torch.zeros(2, 64)), linear.bias.expand(2, 48), atol=1e-6)


@pytest.mark.parametrize("shape", [(48, 64), (100, 37), (130, 200), (16, 1), (1000, 96), (4099, 700), (3, 130)])
def test_int8_dynamic_kernel_is_exact_integer_arithmetic(shape):
    """The VNNI kernel's result is sum(xq * wq) * x_scale * w_scale + b with exact integer sums: compared
    with the same sums in float64, for widths with and without a tail past the 64-byte vectors, one row
    (16 weight rows at a time, and 4 for the rows after the last whole 16) and several, on 1 and 2 threads."""
    from openseason.generation import cpu_kernels

    if not cpu_kernels.available():
        pytest.skip(f"CPU kernels: {cpu_kernels.status()}")
    out_features, in_features = shape
    linear = nn.Linear(in_features, out_features)
    layer = Int8DynamicLinear(linear)
    assert layer.kernel == "openseason"
    before = torch.get_num_threads()
    try:
        for rows, threads in ((1, 1), (1, 2), (3, 2), (4, 1), (9, 2), (33, 2)):
            torch.set_num_threads(threads)
            x = torch.randn(rows, in_features) * 3
            xq, xscale = Int8DynamicLinear.quantize_rows(x)
            exact = (xq.double() @ layer.qweight.double().t()) * xscale.double()[:, None] * layer.scale.double()
            exact = exact + linear.bias.double()
            torch.testing.assert_close(layer(x).double(), exact, atol=1e-5, rtol=1e-6)
    finally:
        torch.set_num_threads(before)


def test_int8_dynamic_refuses_a_model_off_the_cpu():
    model = nn.Sequential(nn.Linear(8, 4, device="meta"))
    with pytest.raises(OpenseasonError, match="CPU only; the model is on \\['meta'\\]"):
        quantize(model, "int8-dynamic")


def test_int8_layer_with_an_odd_input_width_prefills():
    """torch's int8pack kernel crashes on several rows when in_features is not a multiple of 16: such a
    layer dequantizes instead (a prefill of 17 rows once killed the process)."""
    linear = nn.Linear(37, 100)
    q = Int8Linear.from_linear(linear)
    assert q.kernel == "dequantize"
    x = torch.randn(17, 37)
    torch.testing.assert_close(q(x), nn.functional.linear(x, q.dequantized_weight(), linear.bias), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("mode", ["int8", "int8-dynamic", "bf16"])
def test_quantized_layers_keep_the_mode_of_the_layers_they_replace(mode):
    """A new module starts in training mode: quantizing a model in eval() left its quantized layers
    training, so the engine's own eval() changed the model after its decode step was compiled ahead of
    time, and `serve --quantize ... --compile` decoded through torch.compile's graph instead."""
    from openseason.generation.speed import model_fingerprint

    model = _model().eval()
    quantize(model, mode)
    assert not any(m.training for m in model.modules())
    fingerprint = model_fingerprint(model)
    model.eval()
    assert model_fingerprint(model) == fingerprint
    trained = quantize(_model().train(), mode)
    assert all(m.training for m in trained.modules())
