"""Batch-1 decode speed: openseason's generation vs transformers' `generate`, same weights, one process.

    python benchmarks/decode.py                                  # CPU, pythia-70m and pythia-160m, fp32
    python benchmarks/decode.py --device cuda --dtype bfloat16 --models pythia-1b llama-7b

Both sides get the same random-weight model (ours is built from a named config with init_weights(),
transformers' from the same tensors through the production key map), the same prompt, greedy
decoding of --new-tokens tokens with EOS ignored, one warm-up each, then --repeats alternating runs
(so background load hits both alike); the median is reported. tokens/s = new tokens / wall time of
the whole call (prefill of the short prompt included, for both). The script also checks that both
produced the same tokens.

On a GPU it reports the fraction of the memory-bandwidth ceiling: every decode step must read all
weights once (the input embedding excepted: one row per token), so the ceiling is
HBM bandwidth / weight bytes tokens per second.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from openseason.config import Config  # noqa: E402
from openseason.generation import SamplingParams, generate_ids, prepare_for_decoding  # noqa: E402
from openseason.generation.llm import parse_dtype  # noqa: E402
from openseason.model import GPT  # noqa: E402

# Peak memory bandwidth (GB/s) by GPU name fragment, from the vendors' data sheets.
HBM_GBPS = {"H200": 4800, "H100 SXM": 3350, "H100 NVL": 3900, "H100 PCIe": 2000, "H100": 3350,
            "A100-SXM4-80GB": 2039, "A100 80GB PCIe": 1935, "A100": 1555, "L40S": 864, "A10G": 600,
            "RTX 4090": 1008, "RTX 3090": 936}


def hf_twin(model: GPT, device, dtype):
    """A transformers model holding exactly our weights (via openseason.convert's key maps)."""
    import transformers

    from openseason.convert.families import family_for_config
    from openseason.convert.keymap import state_to_hf

    config = model.config
    family = family_for_config(config.family, config.name)
    state = {k: v for k, v in model.state_dict().items()
             if not (config.tie_embeddings and k == "lm_head.weight")}
    hf_state = state_to_hf(family, config, state)
    hf_config = family.config_to_hf(config, hf_state)
    hf_config.pop("torch_dtype", None)
    cfg = transformers.AutoConfig.for_model(hf_config.pop("model_type"), **hf_config)
    with torch.device(device):
        hf = transformers.AutoModelForCausalLM.from_config(cfg, dtype=dtype)
    # Hub files name Pythia's output layer embed_out; transformers renames it only in from_pretrained.
    out_name = next(n for n, m in hf.named_modules() if m is hf.get_output_embeddings()) + ".weight"
    if "embed_out.weight" in hf_state and out_name != "embed_out.weight":
        hf_state[out_name] = hf_state.pop("embed_out.weight")
    missing, unexpected = hf.load_state_dict(hf_state, strict=False)
    assert not unexpected and all("rotary" in k or "inv_freq" in k for k in missing), (missing, unexpected)
    hf.generation_config.eos_token_id = None
    hf.generation_config.pad_token_id = 0
    return hf.eval()


def sync(device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def time_call(fn, device) -> tuple[float, list[int]]:
    sync(device)
    start = time.perf_counter()
    out = fn()
    sync(device)
    return time.perf_counter() - start, out


def weight_bytes(model: GPT) -> int:
    """Bytes a decode step reads: every parameter except the input embedding (unless lm_head shares it)."""
    total = sum(p.numel() * p.element_size() for p in model.parameters())
    if not model.config.tie_embeddings:
        total -= model.embed.weight.numel() * model.embed.weight.element_size()
    return total


def bench(name: str, args) -> dict:
    device, dtype = args.device, parse_dtype(args.dtype)
    torch.manual_seed(0)
    config = Config.from_name(name)
    with torch.device(device):
        ours = GPT(config)
    ours.init_weights()
    ours = ours.to(dtype).eval()
    hf = hf_twin(ours, device, dtype)
    prepare_for_decoding(ours)

    prompt = torch.randint(0, config.vocab_size, (args.prompt_tokens,), generator=torch.Generator().manual_seed(1))
    ids = prompt.tolist()
    n = args.new_tokens
    params = SamplingParams(max_new_tokens=n, ignore_eos=True)

    def run_ours():
        return generate_ids(ours, [ids], params)[0].token_ids

    def run_hf():
        x = prompt.unsqueeze(0).to(device)
        with torch.inference_mode():
            out = hf.generate(x, attention_mask=torch.ones_like(x), max_new_tokens=n, do_sample=False)
        return out[0, len(ids):].tolist()

    run_hf(), run_ours()  # warm-up
    t_ours, t_hf = [], []
    for _ in range(args.repeats):
        dt, hf_tokens = time_call(run_hf, device)
        t_hf.append(dt)
        dt, our_tokens = time_call(run_ours, device)
        t_ours.append(dt)
    ours_tps, hf_tps = n / statistics.median(t_ours), n / statistics.median(t_hf)
    row = {"model": name, "device": device, "dtype": str(dtype).replace("torch.", ""), "ours_tps": ours_tps,
           "hf_tps": hf_tps, "ratio": ours_tps / hf_tps, "same_tokens": our_tokens == hf_tokens}
    if torch.device(device).type == "cuda":
        gbps = args.hbm_gbps or next((v for k, v in HBM_GBPS.items() if k in torch.cuda.get_device_name()), None)
        if gbps:
            ceiling = gbps * 1e9 / weight_bytes(ours)
            row.update(hbm_gbps=gbps, ceiling_tps=ceiling, fraction=ours_tps / ceiling,
                       hf_fraction=hf_tps / ceiling)
    del hf, ours
    return row


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", nargs="+", default=["pythia-70m", "pythia-160m"])
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="float32")
    p.add_argument("--prompt-tokens", type=int, default=16)
    p.add_argument("--new-tokens", type=int, default=128)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--hbm-gbps", type=float, default=None, help="GPU memory bandwidth (default: by GPU name)")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    import transformers

    where = torch.cuda.get_device_name() if args.device.startswith("cuda") else f"CPU, {torch.get_num_threads()} threads"
    print(f"# decode benchmark: torch {torch.__version__}, transformers {transformers.__version__}, {where}")
    print(f"# batch 1, prompt {args.prompt_tokens} tokens, {args.new_tokens} new tokens (greedy), "
          f"median of {args.repeats}")
    for name in args.models:
        r = bench(name, args)
        line = (f"{r['model']:<14} {r['dtype']:<9} ours {r['ours_tps']:8.1f} tok/s   transformers "
                f"{r['hf_tps']:8.1f} tok/s   ratio {r['ratio']:.2f}x   same tokens: {r['same_tokens']}")
        if "fraction" in r:
            line += (f"   HBM ceiling {r['ceiling_tps']:.0f} tok/s: ours {100 * r['fraction']:.0f}%, "
                     f"transformers {100 * r['hf_fraction']:.0f}%")
        print(line, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
