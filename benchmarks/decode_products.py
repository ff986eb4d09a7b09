"""The linear layers of a decode step alone: every weight matrix of a model once per pass, for a few
activation rows, through our bf16, fp32 or int8-dynamic decode op on each weight layout and through
torch's product, alternated in one process (the machine's read bandwidth drifts; each repeat runs every
contender, and the read bandwidth is probed before each pass).

    python benchmarks/decode_products.py --dtype bf16 --rows 1 8 16 32 64 --threads 1 2
    python benchmarks/decode_products.py --dtype fp32 --rows 1 2 4 8 --model pythia-70m
    python benchmarks/decode_products.py --dtype int8-dynamic --rows 1 8 --threads 1 2   # or --dtype int8

Weights are random, shaped as the model's linear layers (embedding excepted), in one huge-page buffer
as prepare_for_decoding stores them, so each pass reads them from memory. Contenders:
- `ours, row-major`: the op on nn.Linear's [out, in] layout (bf16: the vdpbf16ps kernel where the build
  has AVX-512 BF16; fp32: the op's torch path unless the layout is column-major);
- `ours, column-major`: the op on [in, out] storage (bf16: the column kernel of CPUs without
  AVX-512 BF16; fp32: prepare_for_decoding's layout);
- `torch`: F.linear on the row-major weight (bf16: the activation cast to bf16, as BF16Linear's torch path);
- `torch, column-major` (fp32): F.linear on the [in, out] storage, torch's BLAS (MKL's matrix-vector
  path at one row, which decoding used for one fp32 row on Intel CPUs until 2026-12-03).
int8 and int8-dynamic (int8 weights with one scale per row, quantize.Int8Linear and Int8DynamicLinear)
have one layout: `ours, row-major` is decode_linear_int8 (fp32 activations) or decode_linear_int8_dynamic
(activations rounded to int8, VNNI's integer products), and `torch` torch's int8 weight-only product
(_weight_int8pack_mm on a bf16 activation, Int8Linear's torch path).
Each timed sample is --passes passes back to back (a decode step follows the last one), right after a
probe of the read bandwidth (a sum over 512 MB). Prints ms per pass, the weights' GB/s, each
contender's time relative to the first, and its GB/s as a fraction of the bandwidth probed before it
(the median).
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from decode import ReadBandwidth, bench_config  # noqa: E402  (benchmarks/ is on sys.path when run as a script)
from timing import machine  # noqa: E402

from openseason.device import huge_page_buffer  # noqa: E402
from openseason.generation import cpu_kernels  # noqa: E402
from openseason.linear import fp32_gemm  # noqa: E402
from openseason.model import GPT  # noqa: E402


def linear_shapes(name: str) -> list[tuple[int, int]]:
    """(out, in) of every linear layer of the named model, in the order its step calls them."""
    with torch.device("meta"):
        model = GPT(bench_config(name))
    return [tuple(m.weight.shape) for m in model.modules() if isinstance(m, torch.nn.Linear)]


def in_huge_pages(tensors: list[torch.Tensor]) -> list[torch.Tensor]:
    arena = huge_page_buffer(sum(t.numel() * t.element_size() for t in tensors))
    placed, offset = [], 0
    for t in tensors:
        size = t.numel() * t.element_size()
        home = arena[offset:offset + size].view(t.dtype).view(t.shape)
        home.copy_(t)
        placed.append(home)
        offset += size
    return placed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="llama-6x512")
    parser.add_argument("--dtype", choices=["bf16", "fp32", "int8", "int8-dynamic"], default="bf16")
    parser.add_argument("--rows", type=int, nargs="+", default=[1, 8, 16, 32])
    parser.add_argument("--threads", type=int, nargs="+", default=[torch.get_num_threads()])
    parser.add_argument("--repeats", type=int, default=11)
    parser.add_argument("--passes", type=int, default=10,
                        help="back-to-back passes per timed sample, as a decode step follows the last one")
    args = parser.parse_args()
    if not cpu_kernels.available():
        sys.exit(f"our CPU kernels are not available here: {cpu_kernels.status()}")
    dtype = {"bf16": torch.bfloat16, "fp32": torch.float32, "int8": torch.int8, "int8-dynamic": torch.int8}[args.dtype]
    torch.manual_seed(0)
    shapes = linear_shapes(args.model)
    weights = [torch.randn(o, i) / i ** 0.5 for o, i in shapes]
    scales, sums = {}, {}
    if dtype == torch.int8:
        from openseason.generation.quantize import Int8Linear

        quantized = [Int8Linear.quantize_weight(w) for w in weights]
        weights = [q for q, _ in quantized]
    rows_major = in_huge_pages([w.to(dtype) for w in weights])
    if dtype == torch.int8:
        for w, (_, scale) in zip(rows_major, quantized):
            scales[id(w)], sums[id(w)] = scale.float().contiguous(), w.sum(1, dtype=torch.int32)
    columns_major = [] if dtype == torch.int8 else [w.t() for w in in_huge_pages([w.t().contiguous() for w in rows_major])]
    nbytes = sum(w.numel() * w.element_size() for w in rows_major)
    avoid_blas = fp32_gemm() == "onednn"

    def ours(x, w):
        if args.dtype == "int8":
            return torch.ops.openseason.decode_linear_int8(x, w, scales[id(w)], None)
        if dtype == torch.int8:
            return torch.ops.openseason.decode_linear_int8_dynamic(x, w, scales[id(w)], sums[id(w)], None)
        if dtype == torch.bfloat16:
            return torch.ops.openseason.decode_linear_bf16(x, w, None)
        return torch.ops.openseason.decode_linear(x, w, None, avoid_blas)

    def torch_product(x, w):
        if dtype == torch.int8:
            return torch._weight_int8pack_mm(x.to(torch.bfloat16), w, scales[id(w)].to(torch.bfloat16)).float()
        return F.linear(x.to(dtype), w).float()

    print(f"# {machine()}; {args.model}, {len(shapes)} matrices, {nbytes / 1e6:.1f} MB of {args.dtype} weights; "
          f"bf16 weight layout of our kernels here: {cpu_kernels.bf16_weight_layout()}; median of {args.repeats}")
    for threads in args.threads:
        torch.set_num_threads(threads)
        read = ReadBandwidth()   # probes with torch's threads of the moment
        for rows in args.rows:
            xs = [torch.randn(rows, i) for _, i in shapes]
            contenders = {"ours, row-major": lambda: [ours(x, w) for x, w in zip(xs, rows_major)],
                          "ours, column-major": lambda: [ours(x, w) for x, w in zip(xs, columns_major)],
                          "torch": lambda: [torch_product(x, w) for x, w in zip(xs, rows_major)]}
            if dtype == torch.float32:
                contenders["torch, column-major"] = lambda: [F.linear(x, w) for x, w in zip(xs, columns_major)]
            if not columns_major:
                del contenders["ours, column-major"]
            times: dict[str, list[float]] = {name: [] for name in contenders}
            fractions: dict[str, list[float]] = {name: [] for name in contenders}
            with torch.inference_mode():
                for repeat in range(args.repeats + 1):          # the first round warms up, untimed
                    for name, run in contenders.items():
                        probed = read.probe()
                        start = time.perf_counter()
                        for _ in range(args.passes):
                            run()
                        seconds = (time.perf_counter() - start) / args.passes
                        if repeat:
                            times[name].append(seconds)
                            fractions[name].append(nbytes / seconds / 1e9 / probed)
            medians = {name: statistics.median(t) for name, t in times.items()}
            first = medians["ours, row-major"]
            for name, seconds in medians.items():
                print(f"threads {threads}  rows {rows:3d}  {name:20s} {seconds * 1e3:7.2f} ms  "
                      f"{nbytes / seconds / 1e9:5.1f} GB/s  {seconds / first:5.2f}x the first  "
                      f"{statistics.median(fractions[name]):4.2f} of the probed read bandwidth")


if __name__ == "__main__":
    main()
