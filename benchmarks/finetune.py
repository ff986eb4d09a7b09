"""Finetuning speed and memory: our LoRA and LLaMA-Adapter v2 vs transformers + peft LoRA.

Same model configs (pythia-70m and a small LLaMA), same random weights (ours converted with
`openseason.convert.convert_to_hf`), same token batches, batch size and sequence length. Each
contender runs in its own subprocess so peak memory (ru_maxrss of that process) is its own.

    python benchmarks/finetune.py [--steps 5] [--batch 2] [--seq 128] [--threads N]

Prints one line per contender and the ratios ours / peft.
"""
from __future__ import annotations

import argparse
import json
import resource
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


def build_checkpoint(model_key: str, root: Path) -> Path:
    import torch

    from openseason.checkpoint import save_checkpoint
    from openseason.config import Config
    from openseason.convert import convert_to_hf
    from openseason.model import GPT
    from openseason.tokenizer import train_bpe

    spec = MODELS[model_key]
    from openseason.config import NAMED_CONFIGS
    config = Config(**{**NAMED_CONFIGS[spec["name"]], **spec.get("overrides", {})})
    torch.manual_seed(0)
    model = GPT(config)
    model.init_weights()
    tok = train_bpe(["hello world"] * 10, vocab_size=300)
    ckpt = save_checkpoint(root / model_key, model, tokenizer=tok)
    convert_to_hf(ckpt, root / f"{model_key}-hf")
    return ckpt


def run_contender(contender: str, model_key: str, root: Path, steps: int, batch: int, seq: int, threads: int) -> dict:
    import torch

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    ckpt = root / model_key
    from openseason.config import Config
    vocab = Config.from_file(ckpt / "config.json").vocab_size
    gen = torch.Generator().manual_seed(1)
    data = [torch.randint(0, vocab, (batch, seq), generator=gen) for _ in range(steps + 2)]
    if contender.startswith("ours"):
        from openseason.checkpoint import load_model
        from openseason.peft import apply
        from openseason.train.loop import token_loss_sum
        from openseason.train.schedule import make_optimizer

        model = load_model(ckpt)
        if contender == "ours-lora":
            apply(model, "lora", rank=8, alpha=16, dropout=0.0, targets=["q", "v"])
        else:
            apply(model, "adapter-v2", prompt_length=10)
        model.train()
        opt = make_optimizer(model, lr=1e-4, weight_decay=0.0)

        def step(ids):
            loss, n = token_loss_sum(model, {"input_ids": ids, "labels": ids})
            (loss / n).backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
    else:
        import peft
        from transformers import AutoModelForCausalLM

        hf = AutoModelForCausalLM.from_pretrained(root / f"{model_key}-hf", torch_dtype=torch.float32)
        family = Config.from_file(ckpt / "config.json").family
        targets = ["query_key_value"] if family == "gpt_neox" else ["q_proj", "v_proj"]
        cfg = peft.LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0, target_modules=targets, task_type="CAUSAL_LM")
        model = peft.get_peft_model(hf, cfg)
        model.train()
        opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)

        def step(ids):
            model(input_ids=ids, labels=ids).loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)

    for ids in data[:2]:  # warm-up
        step(ids)
    t = time.perf_counter()
    for ids in data[2:]:
        step(ids)
    seconds = time.perf_counter() - t
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return {"contender": contender, "model": model_key, "tokens_per_s": steps * batch * seq / seconds,
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "trainable": trainable}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--seq", type=int, default=128)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--models", default="pythia-70m,tiny-llama")
    parser.add_argument("--contender")
    parser.add_argument("--model")
    parser.add_argument("--root")
    args = parser.parse_args()
    if args.contender:
        print(json.dumps(run_contender(args.contender, args.model, Path(args.root), args.steps, args.batch,
                                       args.seq, args.threads)))
        return
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        for model_key in args.models.split(","):
            build_checkpoint(model_key, root)
            for contender in ("peft-lora", "ours-lora", "ours-adapter-v2"):
                out = subprocess.run([sys.executable, __file__, "--contender", contender, "--model", model_key,
                                      "--root", str(root), "--steps", str(args.steps), "--batch", str(args.batch),
                                      "--seq", str(args.seq), "--threads", str(args.threads)],
                                     capture_output=True, text=True, check=True)
                row = json.loads(out.stdout.strip().splitlines()[-1])
                results.append(row)
                print(f"{model_key:12s} {contender:16s} {row['tokens_per_s']:9.1f} tok/s  "
                      f"peak RSS {row['peak_rss_mb']:7.1f} MB  trainable {row['trainable']:,}", flush=True)
    for model_key in args.models.split(","):
        peer = next(r for r in results if r["model"] == model_key and r["contender"] == "peft-lora")
        for r in results:
            if r["model"] == model_key and r["contender"] != "peft-lora":
                print(f"{model_key:12s} {r['contender']:16s} speed x{r['tokens_per_s'] / peer['tokens_per_s']:.2f}  "
                      f"memory x{r['peak_rss_mb'] / peer['peak_rss_mb']:.2f}  (vs transformers+peft LoRA)")


if __name__ == "__main__":
    main()
