"""openseason.linear: the fp32 GEMM library choice and the oneDNN linear op, against F.linear."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from openseason import linear as L
from openseason.errors import ConfigError
from openseason.model import GPT

pytestmark = pytest.mark.skipif(not L._onednn_usable(), reason="this torch has no oneDNN")


@pytest.fixture
def library():
    """Set the library for one test and go back to the rule afterwards."""
    yield L.set_fp32_gemm
    L.set_fp32_gemm(None)


def _grads(fn, x, w, b, g):
    y = fn(x, w, b)
    wanted = [t for t in (x, w, b) if t is not None and t.requires_grad]
    return y, torch.autograd.grad(y, wanted, g) if wanted else ()


@settings(max_examples=30, deadline=None)
@given(rows=st.integers(1, 40), lead=st.integers(1, 3), n_in=st.integers(1, 70), n_out=st.integers(1, 70),
       bias=st.booleans(), column_major=st.booleans(), needs=st.sampled_from(["x", "w", "xw", "all"]))
def test_onednn_linear_matches_f_linear_forward_and_backward(rows, lead, n_in, n_out, bias, column_major, needs):
    torch.manual_seed(rows * 131 + n_in * 7 + n_out)
    x = torch.randn(lead, rows, n_in, requires_grad="x" in needs or needs == "all")
    w = torch.randn(n_in, n_out).t() if column_major else torch.randn(n_out, n_in)   # decode's layout too
    w.requires_grad_("w" in needs or needs == "all")
    b = torch.randn(n_out, requires_grad=needs == "all") if bias else None
    g = torch.randn(lead, rows, n_out)
    y, grads = _grads(L.onednn_linear, x, w, b, g)
    y_ref, grads_ref = _grads(F.linear, x, w, b, g)
    torch.testing.assert_close(y, y_ref, rtol=1e-5, atol=1e-5)
    for got, want in zip(grads, grads_ref, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-4)


def test_op_registration_passes_torch_opcheck():
    torch.library.opcheck(L.onednn_linear, (torch.randn(3, 5), torch.randn(4, 5), torch.randn(4)))
    torch.library.opcheck(L.onednn_linear, (torch.randn(2, 3, 5, requires_grad=True), torch.randn(4, 5), None))


def test_linear_dispatch_follows_the_choice(library, monkeypatch):
    calls = []
    real = L.onednn_linear
    monkeypatch.setattr(L, "onednn_linear", lambda *a: calls.append(1) or real(*a))
    x, w = torch.randn(4, 6), torch.randn(5, 6)
    library("torch")
    L.linear(x, w)
    assert calls == []
    library("onednn")
    L.linear(x, w)
    assert calls == [1]
    # what oneDNN does not take goes to F.linear: other dtypes, autocast, 1-D input, empty input
    L.linear(x.double(), w.double())
    L.linear(torch.randn(6), w)
    L.linear(torch.randn(0, 6), w)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert L.linear(x, w).dtype == torch.bfloat16
    assert calls == [1]


def test_rule_picks_onednn_only_for_mkl_on_other_vendors(library, monkeypatch):
    mkl = "BLAS_INFO=mkl" in torch.__config__.show()
    for vendor, expected in [("AuthenticAMD", "onednn" if mkl else "torch"), ("GenuineIntel", "torch"),
                             ("unknown", "torch")]:
        monkeypatch.setattr(L, "_cpu_vendor", lambda vendor=vendor: vendor)
        library(None)
        assert L.fp32_gemm() == expected, vendor
    monkeypatch.setenv(L.ENV, "torch")
    monkeypatch.setattr(L, "_cpu_vendor", lambda: "AuthenticAMD")
    library(None)
    assert L.fp32_gemm() == "torch"
    monkeypatch.setenv(L.ENV, "onednn")
    monkeypatch.setattr(L, "_cpu_vendor", lambda: "GenuineIntel")
    library(None)
    assert L.fp32_gemm() == "onednn"


def test_bad_choice_is_a_clear_error(library, monkeypatch):
    monkeypatch.setenv(L.ENV, "mkl")
    library(None)
    with pytest.raises(ConfigError, match="OPENSEASON_FP32_GEMM='mkl' is not one of auto, onednn, torch"):
        L.fp32_gemm()
    with pytest.raises(ConfigError, match="not one of onednn, torch"):
        library("blas")


def test_compiled_fullgraph_before_any_eager_call(library):
    """The choice is read inside torch.compile (fullgraph, as the decode step) without a graph break."""
    library(None)
    w = torch.randn(8, 4, requires_grad=True)
    step = torch.compile(lambda x: L.linear(x, w).square().sum(), fullgraph=True, dynamic=True)
    x = torch.randn(3, 4)
    loss = step(x)
    (grad,) = torch.autograd.grad(loss, w)
    (grad_ref,) = torch.autograd.grad(F.linear(x, w).square().sum(), w)
    torch.testing.assert_close(grad, grad_ref, rtol=1e-5, atol=1e-5)


def test_model_training_step_alike_with_either_library(library):
    """A model's loss and every gradient agree between the two libraries (float rounding only)."""
    from openseason.config import Config

    config = Config.from_name("tiny-neox")
    ids = torch.randint(0, config.vocab_size, (2, 24))
    results = {}
    for choice in ("torch", "onednn"):
        library(choice)
        torch.manual_seed(0)
        model = GPT(config)
        logits = model(ids)
        loss = F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1))
        loss.backward()
        results[choice] = (loss.detach(), {n: p.grad for n, p in model.named_parameters() if p.grad is not None})
    torch.testing.assert_close(results["onednn"][0], results["torch"][0], rtol=1e-6, atol=1e-6)
    assert results["onednn"][1].keys() == results["torch"][1].keys()
    for name, grad in results["onednn"][1].items():
        torch.testing.assert_close(grad, results["torch"][1][name], rtol=1e-4, atol=1e-6, msg=name)


def test_vision_towers_multiply_through_openseason_linear(library, monkeypatch):
    """The vision encoders (ViT, Q-Former) use the decoder's Linear, so they take the faster fp32
    library too, with F.linear's features to float rounding."""
    from openseason.vision.config import QFormerConfig, ViTConfig
    from openseason.vision.qformer import QFormer
    from openseason.vision.vit import ViT

    torch.manual_seed(0)
    vit = ViT(ViTConfig(image_size=32, patch_size=8, hidden_size=64, num_layers=2, num_heads=4,
                        intermediate_size=128, projection_dim=32)).eval()
    qformer = QFormer(QFormerConfig(num_query_tokens=4, hidden_size=64, num_layers=2, num_heads=4,
                                    intermediate_size=128, encoder_hidden_size=64)).eval()
    for tower in (vit, qformer):
        linears = [m for m in tower.modules() if isinstance(m, torch.nn.Linear)]
        assert linears and all(type(m) is L.Linear for m in linears)
    calls = []
    real = L.onednn_linear
    monkeypatch.setattr(L, "onednn_linear", lambda *a: calls.append(1) or real(*a))
    pixels = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        library("onednn")
        features = vit.pooled(pixels)
        through_onednn = len(calls)
        library("torch")
        reference = vit.pooled(pixels)
    assert through_onednn >= 2 * 2 + 1 and len(calls) == through_onednn   # qkv, proj, fc1, fc2 per block, proj
    torch.testing.assert_close(features, reference, atol=1e-5, rtol=1e-5)
