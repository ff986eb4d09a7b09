"""Our CPU decode kernels (generation.cpu_kernels): the same products as torch's F.linear for every
row count, shape and tail the decode step can hand them, the int8 weight-only layout against its
dequantized reference, the model paths that use them (eager, compiled, training through a prepared
model), and a clear fallback where they cannot be built."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from openseason.generation import cpu_kernels

pytestmark = pytest.mark.skipif(not cpu_kernels.available(), reason=f"CPU kernels: {cpu_kernels.status()}")

REPO = Path(__file__).resolve().parents[2]


def _column_major(out_features: int, in_features: int, seed: int = 0) -> torch.Tensor:
    weight = torch.randn(out_features, in_features, generator=torch.Generator().manual_seed(seed))
    return weight.t().contiguous().t()      # prepare_for_decoding's layout for out > in


@pytest.mark.parametrize("rows", [1, 2, 3, 5, 7, 8, 9, 16, 40])
@pytest.mark.parametrize("shape", [(50, 7), (384, 64), (1000, 96), (4099, 33)])
def test_fp32_kernel_matches_f_linear(rows, shape):
    out_features, in_features = shape
    weight = _column_major(out_features, in_features)
    bias = torch.randn(out_features)
    x = torch.randn(rows, in_features)
    # avoid_blas (openseason.linear chose oneDNN): up to 16 rows take the kernel, more oneDNN
    for avoid_blas in (False, True):
        for b in (bias, None):
            torch.testing.assert_close(cpu_kernels.decode_linear(x, weight, b, avoid_blas=avoid_blas), F.linear(x, weight, b),
                                       atol=1e-4, rtol=1e-5)
        # a decode step's activations are [batch, 1, features]
        x3 = x.reshape(rows, 1, in_features)
        got = cpu_kernels.decode_linear(x3, weight, bias, avoid_blas=avoid_blas)
        assert got.shape == (rows, 1, out_features)
        torch.testing.assert_close(got, F.linear(x3, weight, bias), atol=1e-4, rtol=1e-5)


def test_fp32_avoid_blas_routes_many_rows_to_onednn_and_one_row_to_the_kernel_either_way():
    """With avoid_blas, rows past the kernel's 16 go through mkldnn::_linear_pointwise; without it they
    stay with torch's BLAS. One row goes through our kernel either way (not torch's matrix-vector path:
    a row must sum alike alone and in a batch). The paths sum in different orders, so on this data they
    differ in the last bits, which tells them apart."""
    weight = _column_major(4099, 1024, seed=3)
    x = torch.randn(33, 1024, generator=torch.Generator().manual_seed(4))
    by_onednn = torch.ops.mkldnn._linear_pointwise(x, weight, None, "none", [], "")
    by_torch = F.linear(x, weight)
    if torch.equal(by_onednn, by_torch):
        pytest.skip("oneDNN and torch's BLAS sum alike on this CPU: the paths cannot be told apart")
    assert torch.equal(cpu_kernels.decode_linear(x, weight, None, avoid_blas=True), by_onednn)
    assert torch.equal(cpu_kernels.decode_linear(x, weight, None, avoid_blas=False), by_torch)
    one = x[:1]
    by_kernel = cpu_kernels.decode_linear(one, weight, None, avoid_blas=True)
    assert not torch.equal(by_kernel, F.linear(one, weight))            # not torch's BLAS ...
    exact = (one.double() @ weight.double().t()).float()
    torch.testing.assert_close(by_kernel, exact, atol=1e-4, rtol=1e-5)  # ... and as accurate
    assert torch.equal(cpu_kernels.decode_linear(one, weight, None, avoid_blas=False), by_kernel)
    assert torch.equal(cpu_kernels.decode_linear(x[:4], weight, None)[:1], by_kernel)   # alone = in a batch


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("shape", [(4099, 1024), (515, 37), (17, 4000), (2048, 3)])
def test_fp32_one_row_matches_float64(threads, shape):
    """One row: threads split the outputs. Shapes with ragged tails in both dimensions, one too small to
    split, one with fewer inputs than a block of storage rows."""
    out_features, in_features = shape
    weight = _column_major(out_features, in_features, seed=5)
    bias = torch.randn(out_features, generator=torch.Generator().manual_seed(6))
    x = torch.randn(1, 1, in_features, generator=torch.Generator().manual_seed(7))
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        got = cpu_kernels.decode_linear(x, weight, bias, avoid_blas=True)
        again = cpu_kernels.decode_linear(x, weight, bias, avoid_blas=True)
    finally:
        torch.set_num_threads(before)
    exact = (x.double() @ weight.double().t() + bias.double()).float()
    assert got.shape == (1, 1, out_features)
    assert torch.equal(got, again)                                   # same split, same sums each call
    torch.testing.assert_close(got, exact, atol=2e-4, rtol=1e-5)


def test_fp32_kernel_falls_back_for_what_it_does_not_cover():
    weight = torch.randn(96, 32)                        # row-major: torch's product
    x = torch.randn(4, 32)
    torch.testing.assert_close(cpu_kernels.decode_linear(x, weight, None), F.linear(x, weight))
    wc = weight.t().contiguous().t()
    xb = x.to(torch.bfloat16)                           # other dtypes: torch's product
    assert cpu_kernels.decode_linear(xb, wc.to(torch.bfloat16), None).dtype == torch.bfloat16
    strided = torch.randn(4, 64)[:, ::2]                # a non-contiguous activation is made contiguous
    torch.testing.assert_close(cpu_kernels.decode_linear(strided, wc, None), F.linear(strided, wc),
                               atol=1e-4, rtol=1e-5)


@settings(max_examples=40, deadline=None)
@given(rows=st.integers(1, 12), out_features=st.integers(1, 300), in_features=st.integers(1, 70),
       bias=st.booleans(), avoid_blas=st.booleans(), seed=st.integers(0, 2**16))
def test_fp32_kernel_property(rows, out_features, in_features, bias, avoid_blas, seed):
    g = torch.Generator().manual_seed(seed)
    weight = torch.randn(out_features, in_features, generator=g).t().contiguous().t()
    b = torch.randn(out_features, generator=g) if bias else None
    x = torch.randn(rows, in_features, generator=g)
    torch.testing.assert_close(cpu_kernels.decode_linear(x, weight, b, avoid_blas=avoid_blas), F.linear(x, weight, b),
                               atol=1e-4, rtol=1e-5)


@pytest.mark.parametrize("rows", [1, 2, 4, 5, 8, 13, 16, 17, 64])
@pytest.mark.parametrize("shape", [(48, 64), (100, 37), (1030, 512)])
def test_int8_kernel_matches_dequantized_reference(rows, shape):
    from openseason.generation.quantize import Int8Linear

    out_features, in_features = shape
    linear = torch.nn.Linear(in_features, out_features)
    q = Int8Linear.from_linear(linear)
    x = torch.randn(rows, in_features)
    reference = F.linear(x, q.dequantized_weight(), linear.bias)
    got = cpu_kernels.decode_linear_int8(x, q.qweight, q.scale, q.bias)
    if rows <= cpu_kernels.MAX_ROWS:      # our kernel: fp32 activations, so fp32 rounding only
        torch.testing.assert_close(got, reference, atol=1e-4, rtol=1e-5)
    else:                                  # prefill goes to torch's int8 x bf16 kernel inside the op
        torch.testing.assert_close(got, reference, atol=3e-2, rtol=2e-2)


def test_prepared_model_uses_the_kernels_and_still_trains(neox_pair):
    from openseason import LLM
    from openseason.checkpoint import load_model

    llm = LLM.load(neox_pair[1], device="cpu")
    plain = load_model(neox_pair[1])
    routed = [m for m in llm.model.modules() if isinstance(m, torch.nn.Linear) and "forward" in vars(m)]
    assert routed, "prepare_for_decoding routed no layer through the kernels"
    ids = torch.randint(0, llm.config.vocab_size, (6, 1), generator=torch.Generator().manual_seed(3))
    with torch.inference_mode():
        torch.testing.assert_close(llm.model(ids), plain(ids), atol=1e-4, rtol=1e-5)
    # training through the same model: the kernels have no autograd, so the layers fall back to F.linear
    llm.model.train()
    loss = llm.model(ids.reshape(2, 3)).logsumexp(-1).mean()
    loss.backward()
    assert all(p.grad is not None for p in llm.model.parameters() if p.requires_grad and p.dim() == 2
               and p is not llm.model.embed.weight)


def test_int8_model_routes_through_the_kernel(neox_pair):
    from openseason import LLM
    from openseason.generation.quantize import Int8Linear

    llm = LLM.load(neox_pair[1], device="cpu", quantize="int8")
    kernels = {m.kernel for m in llm.model.modules() if isinstance(m, Int8Linear)}
    assert kernels == {"openseason"}
    # batch 1 and a batched call give the rows' own results
    ids = torch.randint(0, llm.config.vocab_size, (5, 1), generator=torch.Generator().manual_seed(4))
    with torch.inference_mode():
        together = llm.model(ids)
        alone = torch.cat([llm.model(ids[i:i + 1]) for i in range(5)])
    torch.testing.assert_close(together, alone, atol=1e-5, rtol=1e-5)


def _fresh_python(code: str, **env) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300,
                          env={**os.environ, **env})


def test_switched_off_or_unbuildable_kernels_leave_torch_products(tmp_path):
    code = ("from openseason.generation import cpu_kernels as k; print(k.available()); print(k.status())")
    off = _fresh_python(code, OPENSEASON_CPU_KERNELS="0")
    assert off.returncode == 0 and off.stdout.splitlines() == ["False", "off (OPENSEASON_CPU_KERNELS=0)"]
    broken = _fresh_python(code, OPENSEASON_CACHE=str(tmp_path), CXX="/bin/false")
    assert broken.returncode == 0, broken.stderr
    lines = broken.stdout.splitlines()
    assert lines[0] == "False" and lines[1].startswith("not built (") and "torch's products" in lines[1]


def test_a_killed_build_blocks_nothing_and_two_first_users_both_load(tmp_path):
    """kill -9 in the middle of the first build, then two processes building at once: both load (no
    build lock left behind to wait on, no half-written library loaded)."""
    import signal
    import time

    code = "from openseason.generation import cpu_kernels as k; print(k.available(), k.status())"
    env = {**os.environ, "OPENSEASON_CACHE": str(tmp_path)}
    killed = subprocess.Popen([sys.executable, "-c", code], cwd=REPO, env=env, stdout=subprocess.DEVNULL)
    time.sleep(3)
    killed.send_signal(signal.SIGKILL)
    killed.wait()
    both = [subprocess.Popen([sys.executable, "-c", code], cwd=REPO, env=env, stdout=subprocess.PIPE, text=True)
            for _ in range(2)]
    outputs = [p.communicate(timeout=300)[0] for p in both]
    assert all(p.returncode == 0 for p in both)
    assert all(out.startswith("True loaded from ") for out in outputs), outputs
    [library] = (tmp_path / "cpu_kernels").glob("*.so")
    # A damaged library (or one another process's trim deleted) is built again, and the cache keeps the
    # most recently used builds only (older sources, CPUs, torch versions).
    library.write_bytes(b"not a library")
    for n in range(cpu_kernels.KERNEL_BUILDS_KEPT + 1):
        old = library.with_name(f"openseason_cpu_kernels_{n:016x}.so")
        old.write_bytes(b"an old build")
        os.utime(old, (1e9 + n, 1e9 + n))
    again = _fresh_python(code, OPENSEASON_CACHE=str(tmp_path))
    assert again.returncode == 0 and again.stdout.startswith("True loaded from "), again.stderr
    kept = sorted(p.name for p in (tmp_path / "cpu_kernels").glob("*.so"))
    assert len(kept) == cpu_kernels.KERNEL_BUILDS_KEPT and library.name in kept
    assert library.stat().st_size > 10000
    assert f"openseason_cpu_kernels_{0:016x}.so" not in kept          # the least recently used went first


def test_mismatched_arguments_are_clear_errors_not_wild_reads():
    weight = _column_major(64, 32)
    x = torch.randn(4, 32)
    with pytest.raises(RuntimeError, match="size|shape"):
        cpu_kernels.decode_linear(x, weight, torch.randn(7))          # a bias of the wrong length
    with pytest.raises(RuntimeError, match="size|shape"):
        cpu_kernels.decode_linear(torch.randn(4, 31), weight, None)   # the wrong width
    q = torch.randint(-127, 128, (64, 32), dtype=torch.int8)
    scale = torch.rand(64)
    with pytest.raises(RuntimeError, match="size|shape"):
        cpu_kernels.decode_linear_int8(x, q, scale, torch.randn(7))
    with pytest.raises(RuntimeError, match="bias has 7 elements, the weight 64 outputs"):
        cpu_kernels.decode_linear_int8_dynamic(x, q, scale, q.sum(1, dtype=torch.int32), torch.randn(7))
    with pytest.raises(RuntimeError, match="x has 31 features, the weight 32"):
        cpu_kernels.decode_linear_int8_dynamic(torch.randn(2, 31), q, scale, q.sum(1, dtype=torch.int32))
    with pytest.raises(RuntimeError, match="scale must be fp32"):
        cpu_kernels.decode_linear_int8(x, q, torch.rand(3), None)


def _bf16_weight(out_features: int, in_features: int, layout: str, generator: torch.Generator) -> torch.Tensor:
    weight = torch.randn(out_features, in_features, generator=generator).to(torch.bfloat16)
    return weight.t().contiguous().t() if layout == "column" else weight


def _assert_bf16_linear_arithmetic(got, x, weight, bias):
    """BF16Linear's arithmetic (the activation rounded to bf16, fp32 sums, the result rounded to bf16,
    the bias added after): against float64 sums of the same bf16 operands the kernels may differ only
    where the fp32 sum sits on a bf16 rounding boundary, by one bf16 step, and only at a few places."""
    exact = (x.to(torch.bfloat16).double() @ weight.double().t()).to(torch.bfloat16).float() + bias
    assert got.shape == exact.shape
    step = (exact - bias).abs().clamp(min=1e-30) * 2.0 ** -7        # one bf16 step at that magnitude
    assert bool(((got - exact).abs() <= step + 1e-6).all())
    assert (got != exact).float().mean() < 0.05


# Row-major: the dot-product kernel where this CPU has AVX-512 BF16 (1-32 rows), else the module's torch
# path. Column-major: col_rows (1-32 rows), the kernel of CPUs without it.
@pytest.mark.parametrize("layout", ["row", "column"])
@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("shape", [(4099, 1024), (515, 37), (17, 4000), (2048, 3), (5, 0), (1, 1)])
def test_bf16_one_row_kernel_is_the_modules_arithmetic(layout, threads, shape):
    out_features, in_features = shape
    g = torch.Generator().manual_seed(11)
    weight = _bf16_weight(out_features, in_features, layout, g)
    bias = torch.randn(out_features, generator=g)
    x = torch.randn(1, 1, in_features, generator=g)
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        got = cpu_kernels.decode_linear_bf16(x, weight, bias)
    finally:
        torch.set_num_threads(before)
    _assert_bf16_linear_arithmetic(got, x, weight, bias)


@pytest.mark.parametrize("layout", ["row", "column"])
@pytest.mark.parametrize("rows", [2, 3, 5, 8, 9, 16, 31, 32])
@pytest.mark.parametrize("shape", [(1037, 300), (13, 64), (40, 31)])
def test_bf16_batch_kernel_is_the_modules_arithmetic(layout, rows, shape):
    """Several rows (a decode batch, a short prefill): every activation tile against every weight
    block, tails of both, and the bias added after the rounding."""
    g = torch.Generator().manual_seed(13)
    weight = _bf16_weight(*shape, layout, g)
    bias = torch.randn(shape[0], generator=g)
    x = torch.randn(rows, shape[1], generator=g)
    _assert_bf16_linear_arithmetic(cpu_kernels.decode_linear_bf16(x, weight, bias), x, weight, bias)


@pytest.mark.parametrize("shape", [(1037, 300), (48, 64), (40, 31), (3000, 512)])
def test_a_row_gets_the_same_bits_alone_and_in_a_batch(shape):
    """A sequence's products must not depend on how many others share its step: served alone or in a
    batch, a request decodes the same text. The int8-dynamic kernel sums integers exactly; int8
    weight-only, the bf16 dot product (row-major, AVX-512 BF16) and the column-major fp32 and bf16
    kernels keep the same chains of sums per row pair for every batch size (up to 16 rows for int8 and
    fp32, 32 for bf16: more go to torch's product)."""
    from openseason.generation.quantize import Int8Linear

    out_features, in_features = shape
    g = torch.Generator().manual_seed(out_features)
    x = torch.randn(cpu_kernels.BATCH_INVARIANT_ROWS, in_features, generator=g)
    q, scale = Int8Linear.quantize_weight(torch.randn(out_features, in_features, generator=g))
    wsum = q.sum(1, dtype=torch.int32)
    bf16 = torch.randn(out_features, in_features, generator=g).to(torch.bfloat16)
    fp32 = torch.randn(out_features, in_features, generator=g).t().contiguous().t()   # column-major
    kernels = {"int8-dynamic": lambda rows: cpu_kernels.decode_linear_int8_dynamic(rows, q, scale, wsum),
               "int8": lambda rows: cpu_kernels.decode_linear_int8(rows, q, scale),
               "fp32": lambda rows: cpu_kernels.decode_linear(rows, fp32, None),
               "fp32 (avoid_blas)": lambda rows: cpu_kernels.decode_linear(rows, fp32, None, avoid_blas=True)}
    if cpu_kernels.bf16_weight_layout() == "column":
        bf16 = bf16.t().contiguous().t()
    kernels["bf16"] = lambda rows: cpu_kernels.decode_linear_bf16(rows, bf16)
    for name, product in kernels.items():
        together = product(x)
        for size in (1, 2, 4, 5, 8, 9):
            for start in range(0, x.size(0) - size + 1, 4):
                assert torch.equal(product(x[start:start + size]), together[start:start + size]), (name, size, start)


def test_bf16_kernels_round_nan_and_infinity_as_torch_does():
    """A NaN whose payload sits only in the low half of its fp32 bits must stay a NaN in bf16 (cutting
    the bits would make it an infinity); infinities stay infinities; a row with a NaN is NaN and the
    other rows are untouched."""
    low_nan = torch.tensor([0x7F800001], dtype=torch.int32).view(torch.float32)
    assert torch.isnan(low_nan).all()
    for layout in ("row", "column"):
        weight = _bf16_weight(1, 1, layout, torch.Generator().manual_seed(0)).abs() + 1
        got = cpu_kernels.decode_linear_bf16(low_nan.view(1, 1), weight, None)
        assert torch.isnan(got).all(), layout
        got = cpu_kernels.decode_linear_bf16(torch.tensor([[float("inf")], [-2.0]]), weight, None)
        assert got[0, 0] == float("inf") and torch.isfinite(got[1]).all(), layout
    weight = _bf16_weight(70, 45, "row", torch.Generator().manual_seed(1))
    x = torch.randn(3, 45)
    x[1, 44] = float("nan")
    got = cpu_kernels.decode_linear_bf16(x, weight, torch.zeros(70))
    assert torch.isnan(got[1]).all() and torch.isfinite(got[[0, 2]]).all()
    assert torch.equal(got[[0, 2]], cpu_kernels.decode_linear_bf16(x[[0, 2]], weight, torch.zeros(70)))


def test_bf16_kernel_falls_back_to_the_modules_torch_path():
    """Past the kernels' 32 rows (either layout), bad widths: the torch path (or its error) of
    BF16Linear, bit for bit."""
    g = torch.Generator().manual_seed(12)
    weight = torch.randn(40, 24, generator=g).to(torch.bfloat16)
    x = torch.randn(33, 24, generator=g)
    reference = F.linear(x.to(torch.bfloat16), weight).float()
    assert torch.equal(cpu_kernels.decode_linear_bf16(x, weight, None), reference)
    assert torch.equal(cpu_kernels.decode_linear_bf16(x, weight.t().contiguous().t(), None), reference)
    with pytest.raises(RuntimeError):
        cpu_kernels.decode_linear_bf16(torch.randn(1, 23), weight.t().contiguous().t(), None)
    with pytest.raises(RuntimeError):
        cpu_kernels.decode_linear_bf16(torch.randn(1, 23), weight, None)


def test_bf16_weight_layout_names_what_the_build_has():
    flags = cpu_kernels._cpu_flags().split()
    expected = "row" if {"avx512f", "avx512bw", "avx512_bf16"} <= set(flags) else "column"
    assert cpu_kernels.bf16_weight_layout() == expected


def test_bf16_model_decodes_through_the_kernel_with_the_torch_paths_tokens(neox_pair):
    from openseason import LLM
    from openseason.generation import SamplingParams, generate_ids
    from openseason.generation.quantize import BF16Linear

    llm = LLM.load(neox_pair[1], device="cpu", quantize="bf16")
    layers = [m for m in llm.model.modules() if isinstance(m, BF16Linear)]
    assert layers and {m.kernel for m in layers} == {"openseason"}
    if cpu_kernels.bf16_weight_layout() == "row":
        assert all(m.weight.is_contiguous() for m in layers)     # nn.Linear's layout, in huge pages
    else:
        assert all(m.weight.stride(0) == 1 for m in layers)      # stored column-major
    prompts = [[5, 6, 7, 8]]
    params = SamplingParams(max_new_tokens=8, ignore_eos=True)
    ours = [r.token_ids for r in generate_ids(llm.model, prompts, params)]
    for m in layers:
        m.kernel = "torch"
    theirs = [r.token_ids for r in generate_ids(llm.model, prompts, params)]
    assert ours == theirs


def _attention_reference(q, k, v, mask, scale):
    """softmax(scale q.k + mask) v in float64, one query per sequence, groups of heads sharing keys."""
    q, k, v = q.double(), k.double(), v.double()
    k = k.repeat_interleave(q.shape[1] // k.shape[1], dim=1)
    v = v.repeat_interleave(q.shape[1] // v.shape[1], dim=1)
    scores = scale * q @ k.transpose(-1, -2)
    if mask is not None and mask.dtype == torch.bool:
        scores = scores.masked_fill(~mask, float("-inf"))
    elif mask is not None:
        scores = scores + mask.double()
    weights = torch.softmax(scores, dim=-1).nan_to_num(0.0)   # every key masked: zeros, as torch gives
    return (weights @ v).float()


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("shape", [(1, 8, 8, 144, 64), (3, 8, 2, 37, 40), (2, 4, 1, 2000, 128), (1, 2, 2, 1, 16),
                                   (4, 6, 3, 17, 7), (1, 1, 1, 5, 1)])
def test_decode_attention_matches_float64_attention(threads, shape):
    """One query per sequence over a slice of a cache (batch, heads, groups of heads sharing keys,
    keys, head size): no mask, a bool mask per sequence, an additive mask per head (ALiBi's shape) and a
    sequence whose keys are all masked; a cache of 2000 keys is split across threads."""
    batch, heads, groups, keys, head_size = shape
    g = torch.Generator().manual_seed(sum(shape))
    cache = torch.randn(2, batch, groups, keys + 9, head_size, generator=g)
    k, v = cache[0][:, :, :keys], cache[1][:, :, :keys]
    q = torch.randn(batch, heads, 1, head_size, generator=g)
    some = torch.rand(batch, 1, 1, keys, generator=g) > 0.3
    some[..., -1] = True
    none_visible = some.clone()
    none_visible[0] = False
    masks = [None, some, torch.randn(1, heads, 1, keys, generator=g) * 3, none_visible]
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        for mask in masks:
            got = cpu_kernels.decode_attention(q, k, v, mask, head_size ** -0.5)
            torch.testing.assert_close(got, _attention_reference(q, k, v, mask, head_size ** -0.5),
                                       atol=2e-6, rtol=1e-5)
            torch.testing.assert_close(got, F.scaled_dot_product_attention(
                q, k, v, attn_mask=mask, scale=head_size ** -0.5, enable_gqa=heads != groups), atol=2e-6, rtol=1e-5)
        assert torch.equal(cpu_kernels.decode_attention(q, k, v, none_visible, 0.5)[0], torch.zeros(heads, 1, head_size))
        # a NaN in a key (an overflowed activation) makes NaN of every head that reads it, and of no other
        # (torch's flash kernel gives NaN too, except over a single key, where it gave zeros)
        poisoned = k.clone()
        poisoned[0, 0, keys // 2, 0] = float("nan")
        got = cpu_kernels.decode_attention(q, poisoned, v, None, 0.5)
        readers = heads // groups   # the heads of group 0
        assert got[0, :readers].isnan().all() and not got[0, readers:].isnan().any() and not got[1:].isnan().any()
    finally:
        torch.set_num_threads(before)


def test_decode_attention_leaves_other_shapes_to_torch():
    """Several queries (prefill), bf16, or a mask of another type get torch's own attention, bit for
    bit; a mask that cannot broadcast is torch's clear error, not a wild read."""
    g = torch.Generator().manual_seed(5)
    q, k, v = torch.randn(1, 4, 3, 16, generator=g), torch.randn(1, 4, 9, 16, generator=g), torch.randn(1, 4, 9, 16, generator=g)
    assert torch.equal(cpu_kernels.decode_attention(q, k, v, None, 0.25),
                       F.scaled_dot_product_attention(q, k, v, scale=0.25))
    half = [t[:, :, :1].bfloat16() for t in (q,)] + [k.bfloat16(), v.bfloat16()]
    assert torch.equal(cpu_kernels.decode_attention(*half, None, 0.25), F.scaled_dot_product_attention(*half, scale=0.25))
    as_half = torch.zeros(1, 1, 1, 9, dtype=torch.float16)
    with pytest.raises(RuntimeError):
        cpu_kernels.decode_attention(q[:, :, :1], k, v, as_half, 0.25)   # torch: mask dtype must match
    with pytest.raises(RuntimeError):
        cpu_kernels.decode_attention(q[:, :, :1], k, v, torch.ones(1, 1, 1, 5, dtype=torch.bool), 0.25)


def test_prepared_model_attends_through_the_kernel_and_keeps_an_adapters_attention(neox_pair):
    """prepare_for_decoding routes each layer's attention through decode_attention, leaves an attention
    an adapter injected alone, and decoding with it gives the tokens and logits of torch's attention."""
    from openseason.checkpoint import load_model
    from openseason.generation import SamplingParams, generate_ids, prepare_for_decoding
    from openseason.model import CausalSelfAttention

    ours, plain = load_model(neox_pair[1]), load_model(neox_pair[1])
    layers = [m for m in ours.modules() if isinstance(m, CausalSelfAttention)]
    owned = layers[0]
    owned.attend = lambda q, k, v, mask, extras=None: CausalSelfAttention.attend(owned, q, k, v, mask, extras)
    prepare_for_decoding(ours)
    assert vars(owned)["attend"].__name__ == "<lambda>"
    assert all(vars(m)["attend"].__func__.__name__ == "_decode_kernel_attend" for m in layers[1:])
    calls = []
    real = torch.ops.openseason.decode_attention

    def counting(*args):
        calls.append(tuple(args[0].shape))
        return real(*args)
    prompts = torch.randint(0, ours.config.vocab_size, (3, 7), generator=torch.Generator().manual_seed(8)).tolist()
    params = SamplingParams(max_new_tokens=6, ignore_eos=True, logprobs=0)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(torch.ops.openseason, "decode_attention", counting)
        got = generate_ids(ours, prompts, params)
    # one call per decode step of every layer but the adapter's (prefill stays with torch)
    assert calls and all(shape[2] == 1 for shape in calls)
    assert len(calls) % (len(layers) - 1) == 0
    want = generate_ids(plain, prompts, params)
    for a, b in zip(got, want):
        assert a.token_ids == b.token_ids
        torch.testing.assert_close(torch.tensor(a.logprobs), torch.tensor(b.logprobs), atol=1e-5, rtol=1e-5)


def _products_of_every_kernel() -> dict:
    """One call of each kernel path a decode step takes (fp32 one row and four, int8, int8-dynamic,
    bf16 in the build's layout, attention over a long cache), on matrices big enough to be split across threads, and one product the
    kernels leave to torch (20 rows: oneDNN)."""
    from openseason.generation.quantize import Int8Linear

    g = torch.Generator().manual_seed(11)
    weight = _column_major(3000, 256, seed=12)
    bias = torch.randn(3000, generator=g)
    one, four, twenty = (torch.randn(1, n, 256, generator=g) for n in (1, 4, 20))
    q, scale = Int8Linear.quantize_weight(torch.randn(3000, 256, generator=g))
    bf16 = torch.randn(3000, 256, generator=g).to(torch.bfloat16)
    if cpu_kernels.bf16_weight_layout() == "column":
        bf16 = bf16.t().contiguous().t()
    keys_and_values = (torch.randn(2, 4, 1, 64, generator=g), torch.randn(2, 4, 2000, 64, generator=g),
                       torch.randn(2, 4, 2000, 64, generator=g))   # 8 MB: split across threads
    return {
        "fp32 one row": lambda: cpu_kernels.decode_linear(one, weight, bias, avoid_blas=True),
        "fp32 four rows": lambda: cpu_kernels.decode_linear(four, weight, bias, avoid_blas=True),
        "onednn (20 rows)": lambda: cpu_kernels.decode_linear(twenty, weight, bias, avoid_blas=True),
        "int8": lambda: cpu_kernels.decode_linear_int8(four, q, scale, bias),
        "int8-dynamic": lambda: cpu_kernels.decode_linear_int8_dynamic(four, q, scale, q.sum(1, dtype=torch.int32), bias),
        "bf16": lambda: cpu_kernels.decode_linear_bf16(one, bf16, bias),
        "attention (long cache)": lambda: cpu_kernels.decode_attention(*keys_and_values, None, 0.125),
    }


def test_step_threads_team_gives_the_same_bits_and_puts_torch_threads_back():
    """Inside a step (set_step_threads(2)) the products run on the kernels' own team and torch's own
    operations on one thread; every kernel gives the bits it gives on torch's two threads, a product
    left to torch runs at the step's size, and leaving the step restores torch's thread count."""
    products = _products_of_every_kernel()
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        outside = {name: run() for name, run in products.items()}
        previous = cpu_kernels.set_step_threads(2)
        try:
            assert previous == 0
            assert torch.get_num_threads() == 1
            inside = {name: run() for name, run in products.items()}
            twice = {name: run() for name, run in products.items()}
        finally:
            assert cpu_kernels.set_step_threads(previous) == 2
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)
    for name in products:
        assert torch.equal(inside[name], outside[name]), name
        assert torch.equal(twice[name], outside[name]), name


def test_two_threads_in_steps_at_once_both_get_their_products():
    """One caller at a time has the team; another thread's step meanwhile runs its products whole on
    its own thread, with the same bits."""
    import threading

    products = _products_of_every_kernel()
    previous = cpu_kernels.set_step_threads(2)   # the parts (and sums) of a two-thread step
    try:
        expected = {name: run() for name, run in products.items()}
    finally:
        cpu_kernels.set_step_threads(previous)
    failures, start = [], threading.Barrier(3)

    def steps():
        start.wait()
        previous = cpu_kernels.set_step_threads(2)
        try:
            for _ in range(20):
                for name, run in products.items():
                    if not torch.equal(run(), expected[name]):
                        failures.append(name)
        finally:
            cpu_kernels.set_step_threads(previous)

    workers = [threading.Thread(target=steps) for _ in range(3)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(120)
    assert not any(worker.is_alive() for worker in workers), "a step never finished"
    assert failures == []


def test_a_forked_child_builds_a_team_of_its_own():
    """After the parent's team has run, a forked child (DataLoader workers, multiprocessing) has none of
    its threads: its first step must start a new team, not wait for workers that are not there."""
    if not hasattr(os, "fork"):
        pytest.skip("no fork here")
    products = _products_of_every_kernel()
    one_row = products["fp32 one row"]
    previous = cpu_kernels.set_step_threads(2)
    try:
        expected = one_row()
    finally:
        cpu_kernels.set_step_threads(previous)
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:   # the child: one step, then report and leave without running the parent's atexit
        try:
            cpu_kernels.set_step_threads(2)
            ok = torch.equal(one_row(), expected)
            os.write(write, b"same" if ok else b"diff")
        finally:
            os._exit(0)
    os.close(write)
    import select

    ready, _, _ = select.select([read], [], [], 60)
    answer = os.read(read, 4) if ready else b""
    os.close(read)
    if not ready:
        os.kill(pid, 9)
    os.waitpid(pid, 0)
    assert answer == b"same"


# What the AVX2 build (laptops and desktops without AVX-512) computes, run in a child built with
# OPENSEASON_CPU_KERNELS_MARCH=x86-64-v3: it loads the operands the parent wrote and saves its products.
_AVX2_CHILD = """
import sys, torch
from openseason.generation import cpu_kernels as k
assert k.available(), k.status()
print(k.status(), k.bf16_weight_layout())
cases = torch.load(sys.argv[1])
out = []
for case in cases:
    torch.set_num_threads(case["threads"])
    if case["kind"] in ("int8-dynamic", "int8"):
        if case["kind"] == "int8":
            product = lambda x: k.decode_linear_int8(x, case["q"], case["scale"], case["bias"])
        else:
            product = lambda x: k.decode_linear_int8_dynamic(x, case["q"], case["scale"], case["q"].sum(1, dtype=torch.int32), case["bias"])
        y = product(case["x"])
        for start in range(len(case["x"])):   # a row gets the same bits alone as in the batch
            assert torch.equal(product(case["x"][start:start + 1]), y[start:start + 1]), (case["kind"], start)
    elif case["kind"] == "fp32":
        y = k.decode_linear(case["x"], case["w"], case["bias"], avoid_blas=True)
    elif case["kind"] == "bf16":
        y = k.decode_linear_bf16(case["x"], case["w"], case["bias"])
    else:
        y = k.decode_attention(case["q"], case["k"], case["v"], None, 0.125)
    out.append(y)
torch.save(out, sys.argv[2])
"""


@pytest.mark.parametrize("arch", ["x86-64-v3", "x86-64"])
def test_an_older_build_gives_the_products_of_the_native_one(tmp_path, arch):
    """The kernels built for x86-64-v3 (AVX2 + FMA, no AVX-512: int8-dynamic by vpmaddubsw, the int8 and
    fp32/bf16 paths on 8-lane vectors) or plain x86-64 (the scalar loops) in a child process:
    int8-dynamic equal to this build's products to
    the bit (exact integer sums, the same scaling), the rest within float32 rounding of torch's products,
    for widths with and without a tail past the vectors, 1-9 rows (16-row blocks and the rows after the
    last), on 1 and 2 threads; int8 and int8-dynamic give a row the same bits alone as in a batch."""
    from openseason.generation.quantize import Int8Linear

    g = torch.Generator().manual_seed(5)
    cases = []
    for out_features, in_features in ((48, 64), (100, 37), (130, 200), (1000, 96), (4099, 700), (3, 130)):
        q, scale = Int8Linear.quantize_weight(torch.randn(out_features, in_features, generator=g))
        q[0, 0] = -128   # a byte a loaded checkpoint may hold: |w| = 128 must not saturate the pair sums
        bias = torch.randn(out_features, generator=g)
        for rows, threads in ((1, 1), (1, 2), (3, 2), (9, 1), (4, 2)):
            x = torch.randn(rows, in_features, generator=g) * 3
            cases.append(dict(kind="int8-dynamic", x=x, q=q, scale=scale, bias=bias, threads=threads))
            if rows <= 4:
                cases.append(dict(kind="int8", x=x, q=q, scale=scale, bias=bias, threads=threads))
    for rows, threads in ((1, 1), (1, 2), (5, 2)):
        w = torch.randn(1037, 300, generator=g)
        x, bias = torch.randn(rows, 300, generator=g), torch.randn(1037, generator=g)
        cases.append(dict(kind="fp32", x=x, w=w.t().contiguous().t(), bias=bias, threads=threads))
        cases.append(dict(kind="bf16", x=x, w=w.to(torch.bfloat16).t().contiguous().t(), bias=bias, threads=threads))
    cases.append(dict(kind="attention", q=torch.randn(2, 4, 1, 64, generator=g), k=torch.randn(2, 2, 300, 64, generator=g),
                      v=torch.randn(2, 2, 300, 64, generator=g), threads=2))
    torch.save(cases, tmp_path / "in.pt")
    child = subprocess.run([sys.executable, "-c", _AVX2_CHILD, str(tmp_path / "in.pt"), str(tmp_path / "out.pt")],
                           cwd=REPO, capture_output=True, text=True, timeout=600,
                           env={**os.environ, "OPENSEASON_CPU_KERNELS_MARCH": arch})
    assert child.returncode == 0, child.stderr[-3000:]
    assert f"(-march={arch})" in child.stdout and child.stdout.split()[-1] == "column", child.stdout
    got = torch.load(tmp_path / "out.pt")
    before = torch.get_num_threads()
    try:
        for case, y in zip(cases, got, strict=True):
            torch.set_num_threads(case["threads"])
            if case["kind"] == "int8-dynamic":
                native = cpu_kernels.decode_linear_int8_dynamic(case["x"], case["q"], case["scale"],
                                                                case["q"].sum(1, dtype=torch.int32), case["bias"])
                assert torch.equal(y, native), (case["q"].shape, case["x"].shape)
            elif case["kind"] in ("int8", "fp32"):
                # float64 sums against the float32 rounding bound of a sum of n terms, n u sum |terms|
                # (the scalar build sums each row in one chain)
                x, w = case["x"].double(), (case["q"].double() * case["scale"].double()[:, None]
                                            if case["kind"] == "int8" else case["w"].double())
                want = F.linear(x, w, case["bias"].double())
                bound = x.shape[-1] * 2.0 ** -24 * (x.abs() @ w.abs().t() + case["bias"].double().abs()) + 1e-6
                assert bool(((y.double() - want).abs() <= bound).all()), case["kind"]
            elif case["kind"] == "bf16":
                _assert_bf16_linear_arithmetic(y, case["x"], case["w"], case["bias"])
            else:
                torch.testing.assert_close(y, F.scaled_dot_product_attention(
                    case["q"], case["k"], case["v"], scale=0.125, enable_gqa=True), atol=1e-5, rtol=1e-5)
    finally:
        torch.set_num_threads(before)


def test_a_malformed_target_arch_is_a_clear_error():
    child = _fresh_python("from openseason.generation import cpu_kernels as k; k.available()",
                          OPENSEASON_CPU_KERNELS_MARCH="native -O0")
    assert child.returncode != 0
    assert "OPENSEASON_CPU_KERNELS_MARCH='native -O0' is not a -march name" in child.stderr
