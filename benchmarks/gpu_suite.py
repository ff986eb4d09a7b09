"""The GPU rows of BENCHMARKS.md in one command (issue 24, item 5), sized for a few minutes of one H200.

    python benchmarks/gpu_suite.py                         # on the GPU machine: writes $OUT (or ./gpu_suite_out)
    python benchmarks/gpu_suite.py --dry-run --out /tmp/gpu_dry   # the same plumbing on the CPU, tiny configs

Runs the parts below in order, each as a subprocess of the existing benchmark scripts with its own
timeout; its stdout and stderr go to OUT/<part>.log. A part that fails or times out does not stop
the run: its status and the tail of its log go into the summary. At the end OUT/summary.md holds a
table per part with the key figures (and the GPU, torch and peer versions, the date) and is also
printed. Seven files in all (six logs and the summary) besides the directory's lock. Exit status 0
when every part ran to the end, 1 when one failed, timed out or was skipped.

  part                     what (defaults on the GPU)                                       expected  timeout
  decode-pythia-1b         decode.py pythia-1b bf16, batch 1, 128 new tokens, 3 repeats:      ~35 s     60 s
                           tok/s vs transformers, fraction of the HBM ceiling (target >= 70%)
  decode-llama-7b          the same for a llama-7b-shaped model                               ~60 s    100 s
  pretrain-pythia-1b       pretrain.py pythia-1b, 8 x 2048 tokens, 5 timed steps: tokens/s    ~40 s     75 s
                           and MFU, ours vs transformers (target >= 50% on H200)
  finetune-full-pythia-1b  finetune.py ours-full pythia-1b, 8 x 2048 tokens, 5 timed steps:   ~30 s     60 s
                           full finetuning tokens/s and MFU
  lora-llama-7b            finetune.py peft-lora + ours-lora on llama-7b (bf16 base), 4 x     ~70 s    110 s
                           1024 tokens, 6 timed steps: tokens/s and peak GPU memory
  serve-pythia-1b          serve_vllm.py pythia-1b, 64 prompts x 128 new tokens, greedy:      ~25 s    180 s
                           our batched engine vs vLLM (if importable; +60-120 s start-up)

Expected in all about 4 minutes without vLLM, 5-6 with it. --budget-s (default 360) caps the whole
run: each part's timeout is cut to what is left of the budget, and a part that finds under 15 s left
is skipped (recorded as such), so the suite ends within 6 minutes even when parts run long.

--dry-run runs every part on the CPU with tiny stand-ins (pythia-14m, the 6 x 512 LLaMA of
finetune.py, tiny-neox), one or two timed steps and a few tokens, so a session without a GPU can
prove the plumbing; its figures say nothing about a GPU. --parts runs a subset (e.g. a rerun of one).
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))


@dataclass
class Part:
    name: str
    script: str
    gpu: list[str]          # arguments on the GPU
    dry: list[str]          # arguments of the --dry-run stand-in on the CPU
    timeout: float          # seconds, before the --budget-s cap
    kind: str               # which parser reads its stdout: decode, pretrain, finetune, serve
    target: str = ""


TINY_FT = ["--device", "cpu", "--direct", "--precision", "bf16", "--data", "random", "--batch", "1", "--seq", "32",
           "--steps", "1", "--threads", "2"]
PARTS = [
    Part("decode-pythia-1b", "decode.py",
         ["--device", "cuda", "--dtype", "bfloat16", "--models", "pythia-1b", "--new-tokens", "128", "--repeats", "3"],
         ["--device", "cpu", "--dtype", "bfloat16", "--models", "pythia-14m", "--new-tokens", "4", "--repeats", "1",
          "--prompt-tokens", "8"], 60, "decode", "ours >= 70% of the HBM bandwidth ceiling"),
    Part("decode-llama-7b", "decode.py",
         ["--device", "cuda", "--dtype", "bfloat16", "--models", "llama-7b", "--new-tokens", "128", "--repeats", "3"],
         ["--device", "cpu", "--dtype", "bfloat16", "--models", "tiny-llama", "--new-tokens", "4", "--repeats", "1",
          "--prompt-tokens", "8"], 100, "decode", "ours >= 70% of the HBM bandwidth ceiling"),
    Part("pretrain-pythia-1b", "pretrain.py",
         ["--device", "cuda", "--models", "pythia-1b", "--batch", "8", "--seq-len", "2048", "--steps", "5"],
         ["--device", "cpu", "--models", "pythia-14m", "--batch", "1", "--seq-len", "32", "--steps", "1"],
         75, "pretrain", "MFU >= 50% on H200"),
    Part("finetune-full-pythia-1b", "finetune.py",
         ["--device", "cuda", "--models", "pythia-1b", "--contenders", "ours-full", "--data", "random",
          "--batch", "8", "--seq", "2048", "--steps", "5"],
         [*TINY_FT, "--models", "pythia-14m", "--contenders", "ours-full"], 60, "finetune", "MFU >= 50% on H200"),
    Part("lora-llama-7b", "finetune.py",
         ["--device", "cuda", "--models", "llama-7b", "--contenders", "peft-lora,ours-lora", "--data", "random",
          "--batch", "4", "--seq", "1024", "--steps", "6"],
         [*TINY_FT, "--models", "tiny-llama", "--contenders", "peft-lora,ours-lora"], 110, "finetune",
         "tokens/s and peak memory (no fixed target)"),
    Part("serve-pythia-1b", "serve_vllm.py",
         ["--device", "cuda", "--model", "pythia-1b", "--prompts", "64", "--prompt-tokens", "128",
          "--new-tokens", "128"],
         ["--device", "cpu", "--model", "tiny-neox", "--prompts", "4", "--prompt-tokens", "8", "--new-tokens", "4",
          "--repeats", "1"], 180, "serve", "batched tokens/s vs vLLM on the same weights"),
]


# -- reading each script's stdout ------------------------------------------------------------------
def _num(text: str | None) -> float | None:
    return float(text.replace(",", "")) if text else None


def parse_decode(out: str) -> list[dict]:
    rows = []
    for line in out.splitlines():
        m = re.match(r"(\S+)\s+(\S+)\s+threads \d+\s+ours\s+([\d.]+) tok/s\s+transformers\s+([\d.]+) tok/s\s+"
                     r"ratio\s+([\d.]+)x\s+(.*?)(?:\s{2,}|$)", line)
        if not m:
            continue
        row = dict(model=m[1], dtype=m[2], ours=_num(m[3]), transformers=_num(m[4]), ratio=_num(m[5]), tokens=m[6])
        hbm = re.search(r"HBM ceiling (\d+) tok/s: ours (\d+)%, transformers (\d+)%", line)
        if hbm:
            row.update(ceiling=_num(hbm[1]), ours_hbm=_num(hbm[2]), transformers_hbm=_num(hbm[3]))
        roof = re.search(r"roofline \(([\d.]+) GB/s read\): ours (\d+)%", line)
        if roof:
            row.update(cpu_read_gbps=_num(roof[1]), ours_roofline=_num(roof[2]))
        rows.append(row)
    return rows


def parse_pretrain(out: str) -> list[dict]:
    rows, model = [], None
    for line in out.splitlines():
        m = re.match(r"(\S+): batch (\d+) x (\d+) tokens", line)
        if m:
            model = dict(model=m[1], batch=int(m[2]), seq=int(m[3]))
            rows.append(model)
            continue
        m = re.match(r"\s+(openseason|transformers)\s+([\d,]+) tokens/s(?:\s+MFU ([\d.]+)%)?", line)
        if m and model is not None:
            model[f"{m[1]}_tps"] = _num(m[2])
            model[f"{m[1]}_mfu"] = _num(m[3])
        m = re.match(r"\s+ratio openseason/transformers: ([\d.]+)x", line)
        if m and model is not None:
            model["ratio"] = _num(m[1])
    return rows


def parse_finetune(out: str) -> list[dict]:
    rows = []
    for line in out.splitlines():
        m = re.match(r"(\S+)\s+(\S+)\s+(\S+)\s+(\S+)\s+([\d.]+) tok/s\s+peak (GPU|RSS)\s+([\d.]+) (GB|MB)\s+"
                     r"trainable ([\d,]+)(?:\s+MFU ([\d.]+)%)?", line)
        if m:
            gb = _num(m[7]) / (1 if m[8] == "GB" else 1024)
            rows.append(dict(model=m[1], data=m[2], precision=m[3], contender=m[4], tps=_num(m[5]),
                             memory=f"peak {m[6]}", peak_gb=gb, trainable=int(_num(m[9])), mfu=_num(m[10])))
            continue
        m = re.match(r"(\S+)\s+\S+\s+\S+\s+(\S+)\s+speed x([\d.]+)\s+memory x([\d.]+)", line)
        if m:
            for row in rows:
                if (row["model"], row["contender"]) == (m[1], m[2]):
                    row.update(speed_vs_peft=_num(m[3]), memory_vs_peft=_num(m[4]))
    return rows


def parse_serve(out: str) -> list[dict]:
    last = [line for line in out.splitlines() if line.startswith("{")]
    return [json.loads(last[-1])] if last else []


PARSERS = {"decode": parse_decode, "pretrain": parse_pretrain, "finetune": parse_finetune, "serve": parse_serve}


# -- running ---------------------------------------------------------------------------------------
def probe_environment() -> dict:
    """GPU, torch and peers' versions, from a subprocess (this process never touches CUDA, so it holds
    no GPU memory while the parts run)."""
    code = r"""
import importlib.metadata as md, json, sys, torch
sys.path[:0] = sys.argv[1:3]
from timing import machine
def version(name):
    try:
        return md.version(name)
    except md.PackageNotFoundError:
        return None
info = {"torch": torch.__version__, "cuda": torch.version.cuda, "host": machine(),
        "transformers": version("transformers"), "peft": version("peft"), "vllm": version("vllm")}
if torch.cuda.is_available():
    p = torch.cuda.get_device_properties(0)
    info.update(gpu=p.name, gpu_gb=round(p.total_memory / 2**30, 1), gpu_count=torch.cuda.device_count())
print(json.dumps(info))
"""
    try:
        out = subprocess.run([sys.executable, "-c", code, str(HERE), str(HERE.parent)], capture_output=True,
                             text=True, timeout=120)
    except subprocess.TimeoutExpired:
        return {"error": "the probe timed out after 120 s"}
    if out.returncode:
        return {"error": out.stderr.strip().splitlines()[-1] if out.stderr.strip() else f"exit {out.returncode}"}
    return json.loads(out.stdout.strip().splitlines()[-1])


def run_part(part: Part, args: list[str], timeout: float, out_dir: Path) -> dict:
    """Run one part as a subprocess in its own session (a timeout ends its children too, vLLM's engine
    among them); its output streams into OUT/<part>.log, so a killed part keeps what it printed."""
    cmd = [sys.executable, str(HERE / part.script), *args]
    log = out_dir / f"{part.name}.log"
    # the repository on the path: the scripts import openseason whether or not it is installed
    path = os.pathsep.join(x for x in (str(HERE.parent), os.environ.get("PYTHONPATH")) if x)
    env = dict(os.environ, PYTHONUNBUFFERED="1", PYTHONPATH=path)
    start = time.perf_counter()
    with log.open("w") as fo:
        fo.write(f"$ {' '.join(cmd)}\n")
        fo.flush()
        proc = subprocess.Popen(cmd, stdout=fo, stderr=subprocess.STDOUT, env=env, cwd=HERE.parent,
                                start_new_session=True)
        try:
            code = proc.wait(timeout=timeout)
            status = "ok" if code == 0 else f"failed (exit {code})"
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
            status = f"timed out after {timeout:.0f} s"
    seconds = time.perf_counter() - start
    text = log.read_text()
    result = {"part": part.name, "status": status, "seconds": round(seconds, 1), "timeout": round(timeout),
              "command": " ".join(["python", f"benchmarks/{part.script}", *args]), "rows": PARSERS[part.kind](text)}
    if status != "ok":
        result["error_tail"] = text.strip().splitlines()[-15:]
    return result


# -- the summary -----------------------------------------------------------------------------------
def _f(value, fmt: str = "{:,.1f}", missing: str = "–") -> str:
    return missing if value is None else fmt.format(value)


def table(head: list[str], rows: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)] + ["| " + " | ".join(r) + " |" for r in rows]


def figures(kind: str, rows: list[dict]) -> list[str]:
    if kind == "decode":
        return table(["model", "dtype", "ours tok/s", "transformers tok/s", "ours/transformers", "HBM ceiling tok/s",
                      "ours % of HBM", "transformers % of HBM", "tokens"],
                     [[r["model"], r["dtype"], _f(r["ours"]), _f(r["transformers"]), _f(r["ratio"], "{:.2f}x"),
                       _f(r.get("ceiling"), "{:,.0f}", "n/a (CPU)"), _f(r.get("ours_hbm"), "{:.0f}%"),
                       _f(r.get("transformers_hbm"), "{:.0f}%"), r["tokens"]] for r in rows])
    if kind == "pretrain":
        return table(["model", "batch x seq", "ours tokens/s", "ours MFU", "transformers tokens/s", "transformers MFU",
                      "ours/transformers"],
                     [[r["model"], f"{r['batch']} x {r['seq']}", _f(r.get("openseason_tps"), "{:,.0f}"),
                       _f(r.get("openseason_mfu"), "{:.1f}%", "n/a"), _f(r.get("transformers_tps"), "{:,.0f}"),
                       _f(r.get("transformers_mfu"), "{:.1f}%", "n/a"), _f(r.get("ratio"), "{:.2f}x")] for r in rows])
    if kind == "finetune":
        return table(["model", "contender", "tokens/s", "peak memory", "trainable", "MFU", "speed vs peft",
                      "memory vs peft"],
                     [[r["model"], r["contender"], _f(r["tps"]), f"{r['peak_gb']:.2f} GB ({r['memory']})",
                       f"{r['trainable']:,}", _f(r["mfu"], "{:.1f}%", "n/a"), _f(r.get("speed_vs_peft"), "{:.2f}x"),
                       _f(r.get("memory_vs_peft"), "{:.2f}x")] for r in rows])
    return table(["model", "dtype", "prompts x new tokens", "ours tok/s", "vLLM tok/s", "ours/vLLM",
                  "identical completions", "vLLM start-up"],
                 [[r["model"], r["dtype"], f"{r['prompts']} x {r['new_tokens']}", _f(r["ours_tps"], "{:,.0f}"),
                   _f(r.get("vllm_tps"), "{:,.0f}", (r.get("vllm") or "–").split(" (")[0]), _f(r.get("ratio"), "{:.2f}x"),
                   f"{r['identical']}/{r['prompts']}" if "identical" in r else "–",
                   _f(r.get("vllm_startup_s"), "{:.0f} s")] for r in rows])


def summary(env: dict, results: list[dict], dry: bool, budget: float, wall: float, argv: list[str]) -> str:
    gpu = (f"{env['gpu']} ({env['gpu_gb']} GB), {env.get('gpu_count', 1)} visible" if "gpu" in env else "none")
    lines = ["# GPU suite (`benchmarks/gpu_suite.py`)", "",
             f"- date: {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC",
             f"- GPU: {gpu}; host: {env.get('host', '?')}",
             f"- torch {env.get('torch')} (CUDA {env.get('cuda')}), transformers {env.get('transformers')}, "
             f"peft {env.get('peft')}, vLLM {env.get('vllm') or 'not installed'}",
             f"- command: `python benchmarks/gpu_suite.py {' '.join(argv)}`",
             f"- wall time {wall:.0f} s of a {budget:.0f} s budget"]
    if "error" in env:
        lines.append(f"- environment probe failed: {env['error']}")
    if dry:
        lines += ["", "**Dry run on the CPU with tiny stand-in configs: these figures prove the plumbing and say "
                  "nothing about a GPU.**"]
    lines += ["", *table(["part", "status", "seconds", "timeout"],
                         [[r["part"], r["status"], f"{r['seconds']:.0f}", f"{r['timeout']}"] for r in results])]
    for r in results:
        part = next(p for p in PARTS if p.name == r["part"])
        lines += ["", f"## {r['part']}: {r['status']}"]
        if r.get("command"):
            lines += ["", f"`{r['command']}`"]
        lines += ["", f"Target: {part.target}."]
        if r["rows"]:
            lines += ["", *figures(part.kind, r["rows"])]
        elif r["status"] == "ok":
            lines += ["", f"(no figures found in its output: see {r['part']}.log)"]
        if r.get("error_tail"):
            lines += ["", "```", *r["error_tail"], "```"]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default=os.environ.get("OUT") or "gpu_suite_out",
                   help="output directory (default: $OUT if set, else ./gpu_suite_out)")
    p.add_argument("--dry-run", action="store_true", help="every part on the CPU with tiny configs")
    p.add_argument("--parts", default=",".join(x.name for x in PARTS), help="comma-separated subset, in suite order")
    p.add_argument("--budget-s", type=float, default=360, help="seconds for the whole suite (caps part timeouts)")
    p.add_argument("--overwrite", action="store_true", help="write into a non-empty --out (replacing our files)")
    args = p.parse_args(argv)
    chosen = args.parts.split(",")
    unknown = sorted(set(chosen) - {x.name for x in PARTS})
    if unknown:
        p.error(f"unknown parts {unknown}: choose from {', '.join(x.name for x in PARTS)}")
    from openseason.errors import OpenseasonError
    from openseason.fileio import LOCK_NAME, lock_directory, write_text_atomic

    out = Path(args.out)
    if out.is_dir() and any(f.name != LOCK_NAME for f in out.iterdir()) and not args.overwrite:
        p.error(f"{out} is not empty: choose another --out, or --overwrite to replace an earlier run's files")
    env = probe_environment()
    if not args.dry_run and "gpu" not in env:
        p.error(f"no CUDA device here ({env.get('error') or 'torch.cuda.is_available() is False'}): "
                "run on the GPU machine, or --dry-run to check the plumbing on the CPU")
    try:
        with lock_directory(out):
            start = time.perf_counter()
            results = []
            for part in (x for x in PARTS if x.name in chosen):
                left = args.budget_s - (time.perf_counter() - start)
                if left < 15:
                    results.append({"part": part.name, "status": f"skipped ({left:.0f} s of the budget left)",
                                    "seconds": 0, "timeout": 0, "rows": []})
                    continue
                timeout = min(part.timeout, left)
                extra = []
                if part.kind == "serve":   # vLLM's own limit, so ours is reported even if vLLM runs long
                    extra = ["--vllm-timeout", f"{max(timeout - 45, 15):.0f}"]
                print(f"# {part.name}: up to {timeout:.0f} s", flush=True)
                results.append(run_part(part, (part.dry if args.dry_run else part.gpu) + extra, timeout, out))
                print(f"#   {results[-1]['status']} in {results[-1]['seconds']:.0f} s", flush=True)
            wall = time.perf_counter() - start
            text = summary(env, results, args.dry_run, args.budget_s, wall, argv)
            write_text_atomic(out / "summary.md", text)
    except OpenseasonError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(text)
    return 0 if all(r["status"] == "ok" for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
