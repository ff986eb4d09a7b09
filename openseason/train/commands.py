"""CLI verbs of the training stage: finetune, merge, quickstart (thin wrappers over finetune.py and
quickstart.py; the pretraining verb lives with pretraining)."""
from __future__ import annotations

import argparse


def _finetune_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("run")
    g.add_argument("--max-steps", type=int, help="optimizer steps")
    g.add_argument("--epochs", type=float, help="passes over the data (when --max-steps is not given)")
    g.add_argument("--max-time", type=float, help="stop (saving final) after this many seconds")
    g.add_argument("--save-every", type=int, help="write out/step-XXXXXX every K steps")
    g.add_argument("--keep-last", type=int, help="keep only the newest N step checkpoints")
    g.add_argument("--eval-every", type=int, help="validation loss and a sample generation every K steps")
    g.add_argument("--seed", type=int)
    g.add_argument("--resume", help="'auto' (newest checkpoint under --out, if any) or a step-XXXXXX directory")
    g.add_argument("--device", help="cpu, cuda, cuda:1 (default: cuda if available)")
    g.add_argument("--precision", choices=["bf16", "fp32"], help="default: bf16 autocast on GPU, fp32 on CPU")
    g.add_argument("--gradient-checkpointing", action="store_true", default=None,
                   help="recompute activations in the backward pass (less memory, ~30%% slower)")
    g = p.add_argument_group("optimization")
    g.add_argument("--micro-batch-size", type=int)
    g.add_argument("--grad-accum", type=int, help="micro-batches per optimizer step")
    g.add_argument("--lr", type=float, help="peak learning rate (default per method)")
    g.add_argument("--min-lr", type=float, help="end of the cosine decay (default lr/10)")
    g.add_argument("--warmup-steps", type=int)
    g.add_argument("--weight-decay", type=float)
    g.add_argument("--grad-clip", type=float)
    g = p.add_argument_group("data")
    g.add_argument("--max-length", type=int, help="tokens per example (longer ones are cut)")
    g.add_argument("--packing", action="store_true", default=None, help="pack several examples per row")
    g.add_argument("--train-on", choices=["assistant", "all"], help="which tokens carry loss")
    g.add_argument("--prompt-style", help="override the style stored with the data")
    g.add_argument("--val-size", type=int, help="held-out examples for validation loss")
    g = p.add_argument_group("LoRA")
    g.add_argument("--lora-rank", type=int)
    g.add_argument("--lora-alpha", type=float)
    g.add_argument("--lora-dropout", type=float)
    g.add_argument("--lora-targets", help="comma list of q,k,v,qkv,proj,mlp,lm_head or all (default q,v)")
    g = p.add_argument_group("LLaMA-Adapter")
    g.add_argument("--adapter-prompt-length", type=int, help="learned prompt tokens per layer (default 10)")
    g.add_argument("--adapter-layers", type=int, help="adapt the top L layers (default all but the first two)")


OPTION_NAMES = ["max_steps", "epochs", "max_time", "save_every", "keep_last", "eval_every", "seed", "device",
                "precision", "gradient_checkpointing", "micro_batch_size", "grad_accum", "lr", "min_lr",
                "warmup_steps", "weight_decay", "grad_clip", "max_length", "packing", "train_on", "prompt_style",
                "val_size", "lora_rank", "lora_alpha", "lora_dropout", "lora_targets", "adapter_prompt_length",
                "adapter_layers"]


def _finetune(args) -> int:
    from .finetune import finetune

    options = {name: getattr(args, name) for name in OPTION_NAMES}
    result = finetune(args.checkpoint, args.data, args.method, args.out, config=args.config, resume=args.resume,
                      **options)
    print(f"finetuned {result['steps']} steps, {result['tokens']:,} tokens in {result['seconds']:.1f}s; "
          f"final loss {result['final_loss']}; checkpoint {result['final']}")
    return 0


def _merge(args) -> int:
    from .finetune import merge_checkpoint

    print(f"wrote full checkpoint {merge_checkpoint(args.checkpoint, args.out)}")
    return 0


def _quickstart(args) -> int:
    from .quickstart import quickstart

    report = quickstart(args.out, model=args.model, data=args.data, pretrain_steps=args.pretrain_steps,
                        finetune_steps=args.finetune_steps, seed=args.seed, eval_items=args.eval_items)
    print(f"exact match on held-out '{report['heldout_family']}' items: before {report['before']['exact_match']:.1%}"
          f", after {report['after']['exact_match']:.1%}  (report: {report['report_md']})")
    return 0


def register(sub) -> None:
    p = sub.add_parser("finetune", help="finetune a checkpoint: full, LoRA, LLaMA-Adapter v1/v2",
                       description="Finetune CKPT on a prepared directory; checkpoints go to OUT/step-XXXXXX "
                                   "and OUT/final (PEFT methods store only their weights + a base reference).")
    p.add_argument("checkpoint", help="an openseason checkpoint directory (see `openseason convert from-hf`)")
    p.add_argument("--data", required=True, help="a prepared directory (`openseason data prepare`)")
    p.add_argument("--method", choices=["full", "lora", "adapter", "adapter-v2"], help="default lora")
    p.add_argument("--out", required=True, help="run directory")
    p.add_argument("--config", help="recipe YAML (see recipes/); flags override it")
    _finetune_args(p)
    p.set_defaults(func=_finetune)

    p = sub.add_parser("merge", help="fold a LoRA checkpoint into a full checkpoint")
    p.add_argument("checkpoint")
    p.add_argument("--out", required=True)
    p.set_defaults(func=_merge)

    p = sub.add_parser("quickstart", help="offline demo: pretrain a tiny model, adapter-v2 finetune, before/after",
                       description="Pretrains a tiny model on built-in generated tasks, finetunes it with "
                                   "LLaMA-Adapter v2 on a held-back task and reports exact match before/after. "
                                   "With --model and --data it finetunes a real checkpoint instead.")
    p.add_argument("--out", required=True)
    p.add_argument("--model", help="a real checkpoint to finetune instead of the tiny pretrained one")
    p.add_argument("--data", help="a prepared directory to finetune on (with --model)")
    p.add_argument("--pretrain-steps", type=int)
    p.add_argument("--finetune-steps", type=int)
    p.add_argument("--eval-items", type=int)
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=_quickstart)
