"""Batched serving throughput: our batched engine vs vLLM on the same random weights.

    python benchmarks/serve_vllm.py --device cuda --model pythia-1b          # 64 prompts x 128 new tokens
    python benchmarks/serve_vllm.py --device cpu --model tiny-neox --prompts 4 --prompt-tokens 8 --new-tokens 4

One model (a named config of openseason.config) with random weights (seed 0, `init_weights`) in
--dtype, --prompts random prompts of --prompt-tokens tokens each, greedy decoding of --new-tokens
tokens with EOS ignored. Ours: every prompt in one call of `openseason.generation.generate_ids` (the
one left-padded running batch behind the LLM API and the server), after a short warm-up, CUDA
synchronized around it, best of --repeats runs. vLLM: the same weights saved as a Hugging Face directory by the production
converter (`save_checkpoint` + `convert_to_hf`), `vllm.LLM(...).generate` on the same token ids
(`skip_tokenizer_init`, `SamplingParams(temperature=0, ignore_eos=True)`), after a short warm-up, best of
--repeats runs, in a
subprocess of its own (so it gets the GPU to itself and a crash or --vllm-timeout only ends its
row); its start-up time (load, profiling, CUDA graph capture) is printed apart. When `vllm` is not
importable the script says so in one line and still reports ours.

tokens/s = prompts x new tokens / wall time of the generate call (prefill included). Also prints how
many completions are token-for-token identical between the two (bf16 kernels differ, so a late flip
between near-ties is expected; none equal would point at a weight-conversion bug). The last line is
a JSON object with the figures (benchmarks/gpu_suite.py reads it).
"""
from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from timing import best_time   # benchmarks/ is on sys.path: this file runs as a script


def vllm_child(hf_dir: str, prompts_file: str, new_tokens: int, dtype: str, memory: float, repeats: int) -> None:
    """Runs in its own process: vLLM on `hf_dir`, prints one JSON line (tokens/s, start-up, tokens)."""
    try:
        import vllm
    except Exception as exc:   # not installed, or installed against another torch / CUDA
        print(json.dumps({"unavailable": f"not importable ({type(exc).__name__}: {exc})"}))
        return
    prompts = json.loads(Path(prompts_file).read_text())
    start = time.perf_counter()
    llm = vllm.LLM(model=hf_dir, skip_tokenizer_init=True, dtype=dtype, gpu_memory_utilization=memory, seed=0,
                   max_model_len=len(prompts[0]) + new_tokens + 8)
    startup = time.perf_counter() - start
    params = vllm.SamplingParams(temperature=0.0, max_tokens=new_tokens, ignore_eos=True, detokenize=False)
    rows = [{"prompt_token_ids": p} for p in prompts]
    llm.generate(rows[:2], vllm.SamplingParams(temperature=0.0, max_tokens=4, ignore_eos=True, detokenize=False),
                 use_tqdm=False)   # warm-up
    outs = []

    def run():
        outs[:] = llm.generate(rows, params, use_tqdm=False)
    seconds = best_time(run, repeats)
    tokens = [list(o.outputs[0].token_ids) for o in outs]
    print(json.dumps({"version": vllm.__version__, "startup_s": startup, "seconds": seconds,
                      "tokens_per_s": sum(len(t) for t in tokens) / seconds, "tokens": tokens}))


def run_vllm(model, prompts: list[list[int]], args, workdir: Path) -> dict:
    """vLLM's figures on `model`'s weights, or {"unavailable": why}."""
    if importlib.util.find_spec("vllm") is None:
        return {"unavailable": "not importable (ModuleNotFoundError: No module named 'vllm')"}
    import torch

    from openseason.checkpoint import save_checkpoint
    from openseason.convert import convert_to_hf

    if model.embed.weight.device.type == "cuda":   # vLLM gets the GPU to itself (its start-up checks free memory)
        model.cpu()
        torch.cuda.empty_cache()
    hf_dir = convert_to_hf(save_checkpoint(workdir / "ckpt", model), workdir / "hf")
    prompts_file = workdir / "prompts.json"
    prompts_file.write_text(json.dumps(prompts))
    cmd = [sys.executable, __file__, "--vllm-child", str(hf_dir), "--prompts-file", str(prompts_file),
           "--new-tokens", str(args.new_tokens), "--dtype", args.dtype,
           "--gpu-memory-utilization", str(args.gpu_memory_utilization), "--repeats", str(args.repeats)]
    # its own process group, ended whole on a timeout or when this process is told to stop (vLLM runs
    # its engine in a process of its own, which would otherwise outlive us holding the GPU)
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)

    def stop(*_):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
    previous = signal.signal(signal.SIGTERM, lambda *a: (stop(), sys.exit(143)))
    try:
        stdout, stderr = proc.communicate(timeout=args.vllm_timeout)
    except subprocess.TimeoutExpired:
        stop()
        proc.communicate()
        return {"unavailable": f"timed out after {args.vllm_timeout:.0f} s"}
    finally:
        signal.signal(signal.SIGTERM, previous)
    stop()   # whatever it left behind
    lines = [line for line in stdout.splitlines() if line.startswith("{")]
    if proc.returncode or not lines:
        tail = " | ".join(stderr.strip().splitlines()[-3:])
        return {"unavailable": f"failed (exit {proc.returncode}): {tail}"}
    return json.loads(lines[-1])


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="pythia-1b", help="a named config (openseason.config)")
    p.add_argument("--device", default=None, help="cuda or cpu (default: cuda when available)")
    p.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"])
    p.add_argument("--prompts", type=int, default=64)
    p.add_argument("--prompt-tokens", type=int, default=128)
    p.add_argument("--new-tokens", type=int, default=128)
    p.add_argument("--repeats", type=int, default=3, help="timed runs of each side (the best counts)")
    p.add_argument("--gpu-memory-utilization", type=float, default=0.85, help="vLLM's share of the GPU memory")
    p.add_argument("--vllm-timeout", type=float, default=300, help="seconds for vLLM's process, start-up included")
    p.add_argument("--vllm-child", help=argparse.SUPPRESS)
    p.add_argument("--prompts-file", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.vllm_child:
        vllm_child(args.vllm_child, args.prompts_file, args.new_tokens, args.dtype, args.gpu_memory_utilization,
                   args.repeats)
        return 0

    import torch

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from openseason.config import Config
    from openseason.generation import SamplingParams, generate_ids, prepare_for_decoding
    from openseason.model import GPT

    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    print(f"# serving benchmark: {args.model} {args.dtype}, {args.prompts} prompts x {args.prompt_tokens} tokens, "
          f"{args.new_tokens} new tokens each (greedy, EOS ignored); {where}, torch {torch.__version__}", flush=True)
    config = Config.from_name(args.model)
    torch.manual_seed(0)
    with torch.device(device):
        model = GPT(config)
    model.init_weights()
    model = model.to(getattr(torch, args.dtype)).eval()
    prepare_for_decoding(model)
    prompts = torch.randint(0, config.vocab_size, (args.prompts, args.prompt_tokens),
                            generator=torch.Generator().manual_seed(1)).tolist()

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize()

    generate_ids(model, prompts[:2], SamplingParams(max_new_tokens=4, ignore_eos=True))   # warm-up
    params = SamplingParams(max_new_tokens=args.new_tokens, ignore_eos=True)
    done = []

    def run():
        sync()
        done[:] = generate_ids(model, prompts, params)
        sync()
    seconds = best_time(run, args.repeats)
    ours_tokens = [c.token_ids for c in done]
    ours_tps = sum(len(t) for t in ours_tokens) / seconds
    print(f"ours          {ours_tps:10,.0f} tok/s  ({seconds:.2f} s for {sum(len(t) for t in ours_tokens):,} tokens)",
          flush=True)
    result = {"model": args.model, "dtype": args.dtype, "prompts": args.prompts, "new_tokens": args.new_tokens,
              "ours_tps": ours_tps}
    with tempfile.TemporaryDirectory(prefix="serve-vllm-") as tmp:
        theirs = run_vllm(model, prompts, args, Path(tmp))
    if "unavailable" in theirs:
        print(f"vLLM: {theirs['unavailable']}; ours only", flush=True)
        result["vllm"] = theirs["unavailable"]
    else:
        same = sum(a == b for a, b in zip(ours_tokens, theirs["tokens"]))
        print(f"vLLM {theirs['version']:8s} {theirs['tokens_per_s']:10,.0f} tok/s  ({theirs['seconds']:.2f} s; "
              f"start-up {theirs['startup_s']:.0f} s)", flush=True)
        print(f"ratio ours/vLLM: {ours_tps / theirs['tokens_per_s']:.2f}x; identical completions {same}/{len(prompts)}")
        result.update(vllm_tps=theirs["tokens_per_s"], vllm_version=theirs["version"], ratio=ours_tps / theirs["tokens_per_s"],
                      identical=same, vllm_startup_s=theirs["startup_s"])
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
