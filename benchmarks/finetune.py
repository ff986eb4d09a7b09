"""Finetuning speed and memory: our LoRA, LLaMA-Adapter v2 and full finetuning vs transformers + peft LoRA.

Same model configs (pythia-70m and a small LLaMA by default; any named config of openseason.config
with --models), same random weights (ours converted with `openseason.convert.convert_to_hf`), same
batches, batch size and sequence length. Each contender runs in its own subprocess so peak memory
(ru_maxrss of that process) is its own.

    python benchmarks/finetune.py [--steps 5] [--batch 2] [--seq 128] [--threads N] [--data random,sft]
                                  [--precision fp32,bf16] [--interleave] [--compile]
                                  [--models pythia-70m,tiny-llama] [--contenders peft-lora,ours-lora,...]
    python benchmarks/finetune.py --device cuda --models llama-7b --contenders peft-lora,ours-lora \
                                  --batch 4 --seq 1024 --steps 8           # LoRA on a 7B shape
    python benchmarks/finetune.py --device cuda --models pythia-1b --contenders ours-full \
                                  --batch 8 --seq 2048 --steps 5           # full finetuning, MFU

--data random: random tokens, every position a target. --data sft: real instruction data (Dolly
responses from ../shared/data in the Alpaca template, tokenized with a BPE trained on it), prompt tokens
without loss, rows of their own lengths right-padded to the longest in the batch (at most --seq); the
parent process writes the batches once and every contender reads the same file. tokens/s counts the
real (non-padding) tokens. --data sft-packed: the same batches, but our contenders train on each batch's
rows packed into rows of --seq tokens (`--packing`: segment ids keep attention inside each example;
fewer rows when short examples share one), while transformers+peft pads them as in sft (it packs
only with flash-attention, which this CPU has not). --precision bf16 runs every contender under torch.autocast(bfloat16) (on
CPUs with AMX or AVX-512-BF16 the matrix products run in bf16).

Contenders (--contenders): peft-lora, ours-lora, ours-adapter-v2 (the default three) and ours-full
(every parameter trains, fp32 weights under the autocast; on a GPU its line also prints MFU, the
training FLOPs per token of openseason.train.pretrain.flops_per_token against the GPU's dense bf16
peak, as benchmarks/pretrain.py does).

--device cuda: every contender under bf16 autocast, weights built directly on the GPU (--direct),
CUDA synchronized around the timed steps, and peak memory is torch.cuda.max_memory_allocated() over
the timed steps (reset after the warm-up) instead of RSS. --direct (implied on cuda): no checkpoint
on disk; each contender process builds the model from its named config with seed 0 on --device
(a 7B checkpoint would take minutes to write and read), LoRA / adapter bases frozen in bf16 with the
trained parameters in fp32 as `openseason finetune` loads them on a GPU, ours-full in fp32;
transformers gets the same tensors through benchmarks/decode.py's `hf_twin` (peft keeps its adapter
weights in fp32 too). On the CPU --direct needs --precision bf16 (it proves the GPU path's plumbing).

Prints one line per contender and the ratios ours / peft at the same precision and data.
"""
from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

MODELS = {
    "pythia-70m": dict(name="pythia-70m"),
    "tiny-llama": dict(name="tiny-llama", overrides=dict(name="bench-llama", n_layer=6, n_embd=512, n_head=8,
                                                         n_query_groups=8, intermediate_size=1376,
                                                         vocab_size=32000)),
}


CONTENDERS = ("peft-lora", "ours-lora", "ours-adapter-v2")   # the default set
EVERY_CONTENDER = CONTENDERS + ("ours-full",)
# our contenders: the openseason.peft method and its options
METHODS = {"ours-lora": ("lora", dict(rank=8, alpha=16, dropout=0.0, targets=["q", "v"])),
           "ours-adapter-v2": ("adapter-v2", dict(prompt_length=10)),
           "ours-full": ("full", {})}


def model_config(model_key: str):
    """The Config of `model_key`: a shape of MODELS, else the named config of that name."""
    from openseason.config import NAMED_CONFIGS, Config

    spec = MODELS.get(model_key, dict(name=model_key))
    if spec["name"] not in NAMED_CONFIGS:
        return Config.from_name(spec["name"])   # the error, with close names as a hint
    return Config(**{**NAMED_CONFIGS[spec["name"]], **spec.get("overrides", {})})


def build_checkpoint(model_key: str, root: Path) -> Path:
    import torch

    from openseason.checkpoint import save_checkpoint
    from openseason.convert import convert_to_hf
    from openseason.model import GPT
    from openseason.tokenizer import train_bpe

    torch.manual_seed(0)
    model = GPT(model_config(model_key))
    model.init_weights()
    tok = train_bpe(["hello world"] * 10, vocab_size=300)
    ckpt = save_checkpoint(root / model_key, model, tokenizer=tok)
    convert_to_hf(ckpt, root / f"{model_key}-hf")
    return ckpt


def build_direct(model_key: str, device: str, frozen: bool):
    """`model_key`'s model built in this process on `device` from seed 0, so every contender process
    holds the same weights with no checkpoint on disk; `frozen`: cast to bf16 (a LoRA / adapter base)."""
    import torch

    from openseason.model import GPT

    torch.manual_seed(0)
    with torch.device(device):
        model = GPT(model_config(model_key))
    model.init_weights()
    return model.to(torch.bfloat16) if frozen else model


def to_device(batch: dict, device: str) -> dict:
    """`batch` with its tensors (its packed form's too) on `device`."""
    import torch

    return {k: to_device(v, device) if isinstance(v, dict) else v.to(device) if isinstance(v, torch.Tensor) else v
            for k, v in batch.items()}


def sft_batches(path: Path, n: int, batch: int, seq: int, seed: int = 1) -> list[dict]:
    """`n` batches of Dolly rows in the Alpaca template: input_ids right-padded with 0, labels -100 on
    the prompt and the padding."""
    import random

    import torch

    from openseason.data.sft import collate
    from openseason.prompts import get_style
    from openseason.tokenizer import train_bpe

    data = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "dolly-15k" / "dolly_sample.jsonl"
    rows = [json.loads(line) for line in data.read_text().splitlines() if line.strip()]
    style = get_style("alpaca")
    pairs = []
    for r in rows:
        user = r["instruction"] + ("\n\n" + r["context"] if r.get("context") else "")
        pairs.append((style.render([{"role": "user", "content": user}]), r["response"]))
    tok = train_bpe([p + a for p, a in pairs], vocab_size=4096)
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        encoded = []
        for prompt, answer in rng.sample(pairs, batch):
            p, a = tok.encode(prompt), tok.encode(answer, eos=True)
            ids = (p + a)[:seq]
            encoded.append((ids, min(len(p), len(ids))))
        width = max(len(ids) for ids, _ in encoded)
        input_ids = torch.zeros(batch, width, dtype=torch.long)
        labels = torch.full((batch, width), -100, dtype=torch.long)
        for i, (ids, cut) in enumerate(encoded):
            input_ids[i, :len(ids)] = torch.tensor(ids)
            labels[i, cut:len(ids)] = torch.tensor(ids[cut:])
        # the same rows packed into rows of --seq tokens (openseason.data.sft.collate, as --packing does)
        packed = collate([{"input_ids": ids, "labels": [-100] * cut + ids[cut:]} for ids, cut in encoded], 0, seq,
                         packing=True)
        packed = {k: packed[k] for k in ("input_ids", "labels", "segment_ids", "position_ids")}
        out.append({"input_ids": input_ids, "labels": labels, "tokens": sum(len(ids) for ids, _ in encoded),
                    "packed": packed})
    torch.save(out, path)
    return out


def peak_rss_mb() -> float:
    """This program's peak resident memory. On Linux VmHWM of /proc/self/status: ru_maxrss would also
    count the pages the child shared with the parent between fork and exec, i.e. the parent's size."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def load_batches(root: Path, model_key: str, steps: int, batch: int, seq: int, data_kind: str) -> list[dict]:
    import torch

    if data_kind in ("sft", "sft-packed"):
        return torch.load(root / "sft_batches.pt")[:steps + 2]
    vocab = model_config(model_key).vocab_size
    gen = torch.Generator().manual_seed(1)
    out = []
    for _ in range(steps + 2):
        ids = torch.randint(0, vocab, (batch, seq), generator=gen)
        out.append({"input_ids": ids, "labels": ids, "tokens": ids.numel()})
    return out


def make_contender(contender: str, model_key: str, root: Path, precision: str = "fp32", packed: bool = False,
                   device: str = "cpu", direct: bool = False):
    """(one training step on a batch, the model) for `contender`, built from the same weights; `packed`:
    ours trains on the packed form of each batch; `direct`: weights from `build_direct` on `device`
    instead of the parent's checkpoint."""
    import contextlib

    import torch

    torch.manual_seed(0)
    ckpt = root / model_key
    autocast = ((lambda: torch.autocast(torch.device(device).type, dtype=torch.bfloat16)) if precision == "bf16"
                else contextlib.nullcontext)
    if contender.startswith("ours"):
        from openseason.checkpoint import load_model
        from openseason.peft import apply
        from openseason.train.loop import compile_blocks, token_loss_sum
        from openseason.train.schedule import make_optimizer

        method, options = METHODS[contender.removesuffix("+compile")]
        model = build_direct(model_key, device, frozen=method != "full") if direct else load_model(ckpt)
        apply(model, method, **options)
        if direct and method != "full":
            # as openseason.train.finetune on a GPU: frozen base in bf16, trained parameters and
            # optimizer state in fp32
            for p in model.parameters():
                if p.requires_grad:
                    p.data = p.data.float()
        if contender.endswith("+compile"):
            compile_blocks(model)   # what --compile does in the training loop
        model.train()
        opt = make_optimizer(model, lr=1e-4, weight_decay=0.0)

        def step(b):
            # sft-packed: our side trains on the batch's rows packed (segments attend only within
            # themselves); transformers+peft has no packing without flash-attention, so it pads
            b = b["packed"] if packed else b
            with autocast():
                loss, n = token_loss_sum(model, {k: b[k] for k in ("input_ids", "labels", "segment_ids",
                                                                   "position_ids") if k in b})
            (loss / n).backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
    else:
        import peft
        from transformers import AutoModelForCausalLM

        if direct:
            from decode import hf_twin   # the same tensors through the production key map, in bf16

            base = build_direct(model_key, device, frozen=True)
            hf = hf_twin(base, device, torch.bfloat16)
            del base
        else:
            hf = AutoModelForCausalLM.from_pretrained(root / f"{model_key}-hf", torch_dtype=torch.float32)
        family = model_config(model_key).family
        targets = ["query_key_value"] if family == "gpt_neox" else ["q_proj", "v_proj"]
        cfg = peft.LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0, target_modules=targets, task_type="CAUSAL_LM")
        model = peft.get_peft_model(hf, cfg)
        model.train()
        opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)

        def step(b):
            with autocast():
                loss = model(input_ids=b["input_ids"], labels=b["labels"]).loss
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
    return step, model


def run_contender(contender: str, model_key: str, root: Path, steps: int, batch: int, seq: int, threads: int,
                  data_kind: str = "random", precision: str = "fp32", device: str = "cpu",
                  direct: bool = False) -> dict:
    """One contender alone in this process: tokens/s and this process's peak RSS (on a GPU: peak
    allocated GPU memory over the timed steps; MFU for ours-full where the GPU's peak is known)."""
    import torch

    torch.set_num_threads(threads)
    cuda = torch.device(device).type == "cuda"
    data = [to_device(b, device) for b in load_batches(root, model_key, steps, batch, seq, data_kind)]
    step, model = make_contender(contender, model_key, root, precision, data_kind == "sft-packed", device, direct)
    for b in data[:2]:  # warm-up
        step(b)
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    t = time.perf_counter()
    for b in data[2:]:
        step(b)
    if cuda:
        torch.cuda.synchronize()
    seconds = time.perf_counter() - t
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    tokens = sum(b["tokens"] for b in data[2:])
    row = {"contender": contender, "model": model_key, "data": data_kind, "precision": precision,
           "tokens_per_s": tokens / seconds}
    if cuda:
        row["peak_gpu_mb"] = torch.cuda.max_memory_allocated() / 2**20
    else:
        row["peak_rss_mb"] = peak_rss_mb()
    row["trainable"] = trainable
    if contender.startswith("ours-full"):
        from openseason.train.pretrain import flops_per_token, peak_flops

        peak = peak_flops(torch.device(device))
        if peak:
            fed = [b["packed"] if data_kind == "sft-packed" else b for b in data[2:]]
            width = statistics.mean(b["input_ids"].shape[1] for b in fed)
            row["mfu"] = row["tokens_per_s"] * flops_per_token(model.config, int(width)) / peak
    return row


def run_interleaved(model_key: str, root: Path, steps: int, batch: int, seq: int, threads: int, data_kind: str,
                    precision: str, contenders: tuple = (), device: str = "cpu", direct: bool = False) -> dict[str, float]:
    """Every contender in one process, one step each in turn on the same batch, so load changes hit
    all alike; tokens/s per contender over its own step times (memory: see the separate runs)."""
    import torch

    torch.set_num_threads(threads)
    cuda = torch.device(device).type == "cuda"
    data = [to_device(b, device) for b in load_batches(root, model_key, steps, batch, seq, data_kind)]
    contenders = contenders or CONTENDERS
    steps_of = {c: make_contender(c, model_key, root, precision, data_kind == "sft-packed", device, direct)[0]
                for c in contenders}
    seconds = dict.fromkeys(contenders, 0.0)
    for i, b in enumerate(data):
        for contender, step in steps_of.items():
            if cuda:
                torch.cuda.synchronize()
            t = time.perf_counter()
            step(b)
            if cuda:
                torch.cuda.synchronize()
            if i >= 2:   # the first two are warm-up
                seconds[contender] += time.perf_counter() - t
    tokens = sum(b["tokens"] for b in data[2:])
    return {c: tokens / seconds[c] for c in contenders}


def peak_mb(row: dict) -> float:
    return row["peak_gpu_mb"] if "peak_gpu_mb" in row else row["peak_rss_mb"]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--seq", type=int, default=128)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--models", default="pythia-70m,tiny-llama",
                        help=f"comma-separated: {', '.join(MODELS)} or any named config (pythia-1b, llama-7b, ...)")
    parser.add_argument("--contenders", default=",".join(CONTENDERS),
                        help=f"comma-separated, of {', '.join(EVERY_CONTENDER)}")
    parser.add_argument("--device", default="cpu", help="cpu or cuda[:N]")
    parser.add_argument("--direct", action="store_true",
                        help="build the weights in each contender process on --device (bf16 frozen bases) instead "
                             "of from a checkpoint; implied on cuda")
    parser.add_argument("--data", default="random,sft",
                        help="random, sft, sft-packed (ours on the same rows packed), comma-separated")
    parser.add_argument("--precision", default=None,
                        help="fp32, bf16 or both (comma-separated); default fp32 on cpu, bf16 (the only one) on cuda")
    parser.add_argument("--interleave", action="store_true",
                        help="also time the contenders in one process, a step each in turn on the same batch")
    parser.add_argument("--compile", action="store_true",
                        help="add our contenders with every block compiled (the training loop's --compile); the "
                             "first two steps, which compile, are the untimed warm-up")
    parser.add_argument("--contender")
    parser.add_argument("--model")
    parser.add_argument("--root")
    args = parser.parse_args()
    cuda = args.device.split(":")[0] == "cuda"
    if not cuda and args.device != "cpu":
        parser.error(f"--device {args.device!r}: use cpu or cuda[:N]")
    direct = args.direct or cuda
    precisions = (args.precision or ("bf16" if cuda else "fp32")).split(",")
    if cuda and precisions != ["bf16"]:
        parser.error("on cuda every contender runs under bf16 autocast: --precision must be bf16")
    if direct and precisions != ["bf16"]:
        parser.error("--direct builds LoRA / adapter bases in bf16: it needs --precision bf16")
    chosen = tuple(args.contenders.split(","))
    unknown = sorted(set(chosen) - set(EVERY_CONTENDER))
    if unknown:
        parser.error(f"unknown contenders {unknown}: choose from {', '.join(EVERY_CONTENDER)}")
    common = ["--steps", str(args.steps), "--batch", str(args.batch), "--seq", str(args.seq),
              "--threads", str(args.threads), "--device", args.device, *(["--direct"] if direct else [])]
    # --compile: our contenders again with their blocks compiled as the training loop's --compile does
    contenders = chosen + (tuple(f"{c}+compile" for c in chosen if c.startswith("ours")) if args.compile else ())
    if args.contender == "interleaved":
        print(json.dumps(run_interleaved(args.model, Path(args.root), args.steps, args.batch, args.seq, args.threads,
                                         args.data, args.precision, contenders, args.device, direct)))
        return
    if args.contender:
        print(json.dumps(run_contender(args.contender, args.model, Path(args.root), args.steps, args.batch,
                                       args.seq, args.threads, args.data, args.precision, args.device, direct)))
        return
    import os
    from timing import machine
    from openseason.errors import OpenseasonError
    for model_key in args.models.split(","):
        try:
            model_config(model_key)   # an unknown name fails here, before any work
        except OpenseasonError as exc:
            parser.error(f"--models: {exc}")
    where = machine()
    if cuda:
        import torch

        where = f"{torch.cuda.get_device_name(args.device)}, torch {torch.__version__}, host {where}"
    if direct:
        where += "; weights built in each contender process (frozen bases bf16)"
    print(f"# finetune benchmark: {where}; batch {args.batch}, up to {args.seq} tokens, {args.steps} "
          f"timed steps, {args.threads} threads, load average %.2f %.2f %.2f" % os.getloadavg(), flush=True)
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        if {"sft", "sft-packed"} & set(args.data.split(",")):
            sft_batches(root / "sft_batches.pt", args.steps + 2, args.batch, args.seq)
        for model_key in args.models.split(","):
            if not direct:
                build_checkpoint(model_key, root)
            for data_kind in args.data.split(","):
                for precision in precisions:
                    for contender in contenders:
                        out = subprocess.run([sys.executable, __file__, "--contender", contender, "--model", model_key,
                                              "--root", str(root), "--data", data_kind, "--precision", precision,
                                              *common], capture_output=True, text=True)
                        if out.returncode:
                            sys.stderr.write(out.stderr)
                            raise SystemExit(f"{contender} on {model_key} failed (exit {out.returncode})")
                        row = json.loads(out.stdout.strip().splitlines()[-1])
                        results.append(row)
                        memory = (f"peak GPU {row['peak_gpu_mb'] / 1024:7.2f} GB" if "peak_gpu_mb" in row
                                  else f"peak RSS {row['peak_rss_mb']:7.1f} MB")
                        mfu = f"  MFU {row['mfu']:.1%}" if "mfu" in row else ""
                        print(f"{model_key:12s} {data_kind:10s} {precision:4s} {contender:24s} "
                              f"{row['tokens_per_s']:9.1f} tok/s  {memory}  "
                              f"trainable {row['trainable']:,}{mfu}", flush=True)
                    if args.interleave:
                        out = subprocess.run([sys.executable, __file__, "--contender", "interleaved", "--model",
                                              model_key, "--root", str(root), "--data", data_kind, "--precision",
                                              precision, "--contenders", ",".join(chosen), *common,
                                              *(["--compile"] if args.compile else [])],
                                             capture_output=True, text=True, check=True)
                        tps = json.loads(out.stdout.strip().splitlines()[-1])
                        peer = tps.get("peft-lora")
                        print(f"{model_key:12s} {data_kind:10s} {precision:4s} interleaved: " + "  ".join(
                            f"{c} {v:.1f} tok/s" + (f" ({v / peer:.2f}x)" if peer else "") for c, v in tps.items()),
                            flush=True)

    def peer_of(r: dict, precision: str):
        """transformers+peft LoRA on r's model and data at `precision`; None without one (or for ours-full,
        which trains other parameters)."""
        if r["contender"].startswith("ours-full"):
            return None
        return next((p for p in results if p["contender"] == "peft-lora" and p["precision"] == precision and
                     (p["model"], p["data"]) == (r["model"], r["data"])), None)

    for r in results:
        peer = peer_of(r, r["precision"])
        if peer is not None and r is not peer:
            print(f"{r['model']:12s} {r['data']:10s} {r['precision']:4s} {r['contender']:24s} "
                  f"speed x{r['tokens_per_s'] / peer['tokens_per_s']:.2f}  memory x{peak_mb(r) / peak_mb(peer):.2f}"
                  "  (vs transformers+peft LoRA, same data and precision)")
    if "bf16" in precisions and "fp32" in precisions:
        for r in results:
            peer = peer_of(r, "fp32")
            if r["precision"] == "bf16" and r["contender"] != "peft-lora" and peer is not None:
                print(f"{r['model']:12s} {r['data']:10s} bf16 {r['contender']:24s} "
                      f"speed x{r['tokens_per_s'] / peer['tokens_per_s']:.2f} vs transformers+peft LoRA in fp32")
    print("# load average %.2f %.2f %.2f at the end" % os.getloadavg())


if __name__ == "__main__":
    main()
