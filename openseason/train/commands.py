"""CLI verbs of the training stage: finetune, merge, quickstart, pretrain (thin wrappers over
finetune.py, quickstart.py and pretrain.py; their flags are built from train/options.py)."""
from __future__ import annotations

import sys

from ..options import add_arguments, given_options
from .options import FinetuneOptions, PretrainOptions, QuickstartOptions


def _report(verb: str, result: dict) -> None:
    """The last line of a run: what it did, or that a resume found nothing left to do."""
    loss = f"{result['final_loss']:.4f}" if isinstance(result["final_loss"], float) else "not recorded"
    if result["stopped"] == "already_done":
        print(f"nothing to do: the run is already at step {result['steps']} (its max_steps); final loss {loss}; "
              f"checkpoint {result['final']}. To train longer, raise --max-steps and pass --allow-changes "
              "(the learning-rate schedule changes with it)")
        return
    print(f"{verb} {result['steps']} steps, {result['tokens']:,} tokens in {result['seconds']:.1f}s; "
          f"final loss {loss}; checkpoint {result['final']}")


def _interruptible(run) -> int:
    """Ctrl-C / SIGTERM: the loop saved a checkpoint at the current step; exit 130 / 143 saying where."""
    from .interrupt import TrainingInterrupted

    try:
        return run()
    except TrainingInterrupted as exc:
        print(f"openseason: {exc}", file=sys.stderr)
        return exc.exit_status


def _finetune(args) -> int:
    from .finetune import finetune

    def run() -> int:
        _report("finetuned", finetune(args.checkpoint, args.data, out=args.out, config=args.config,
                                      resume=args.resume, **given_options(args, FinetuneOptions)))
        return 0

    return _interruptible(run)


def _merge(args) -> int:
    from .finetune import merge_checkpoint

    print(f"wrote full checkpoint {merge_checkpoint(args.checkpoint, args.out)}")
    return 0


def _quickstart(args) -> int:
    from .quickstart import quickstart

    report = quickstart(args.out, **given_options(args, QuickstartOptions))
    if report.get("kind") == "multimodal":
        for method, r in report["methods"].items():
            print(f"{method}: held-out VQA accuracy before {r['before']['vqa']['accuracy']:.1%}, after "
                  f"{r['after']['vqa']['accuracy']:.1%} (majority baseline {r['after']['vqa']['majority_baseline']:.1%})")
        print(f"report: {report['report_md']}")
        return 0
    t = report["timings"]
    expected = f", expected {t['expected_s'] / 60:.1f}" if "expected_s" in t else ""
    print(f"exact match on held-out '{report['heldout_family']}' items: before {report['before']['exact_match']:.1%}"
          f", after {report['after']['exact_match']:.1%}  (report: {report['report_md']}); "
          f"{t['total_s'] / 60:.1f} minutes{expected}")
    return 0


def register(sub) -> None:
    p = sub.add_parser("finetune", help="finetune a checkpoint: full, LoRA, LLaMA-Adapter v1/v2",
                       description="Finetune CKPT on a prepared directory; checkpoints go to OUT/step-XXXXXX "
                                   "and OUT/final (PEFT methods store only their weights + a base reference).")
    p.add_argument("checkpoint", help="an openseason checkpoint directory (see `openseason convert from-hf`)")
    p.add_argument("--data", required=True, help="a prepared directory (`openseason data prepare`)")
    p.add_argument("--out", required=True, help="run directory")
    p.add_argument("--config", help="recipe YAML (see recipes/); flags override it")
    p.add_argument("--resume", help="'auto' (newest checkpoint under --out, if any) or a step-XXXXXX directory")
    add_arguments(p, FinetuneOptions)
    p.set_defaults(func=_finetune)

    p = sub.add_parser("merge", help="fold a LoRA checkpoint into a full checkpoint")
    p.add_argument("checkpoint")
    p.add_argument("--out", required=True)
    p.set_defaults(func=_merge)

    p = sub.add_parser("quickstart", help="offline demo: pretrain a tiny model, adapter-v2 finetune, before/after",
                       description="Pretrains a tiny model on built-in generated tasks, finetunes it with "
                                   "LLaMA-Adapter v2 on a held-back task and reports exact match before/after. "
                                   "With --model and --data it finetunes a real checkpoint instead.")
    p.add_argument("--out", required=True, help="output directory (must be empty unless --overwrite)")
    add_arguments(p, QuickstartOptions)
    p.set_defaults(func=_quickstart)

    p = sub.add_parser("pretrain", help="pretrain from a named config on a token directory (Pythia recipe)",
                       description="Pretrain with the Pythia recipe on a token directory from `openseason data "
                                   "tokenize`. Under `torchrun --nproc-per-node N -m openseason pretrain ...` the "
                                   "model is sharded with FSDP2 and every process reads its slice of each step.")
    p.add_argument("--config", required=True, help="a named config (pythia-70m, llama-7b, tiny-neox, ...), a "
                                                    "config.json, or a checkpoint directory to continue")
    p.add_argument("--data", required=True, help="token directory (`openseason data tokenize`)")
    p.add_argument("--out", required=True)
    p.add_argument("--resume", help="'auto' or a step-XXXXXX directory (saved on any number of processes)")
    add_arguments(p, PretrainOptions)
    p.set_defaults(func=_pretrain)


def _pretrain(args) -> int:
    from .pretrain import pretrain

    def run() -> int:
        result = pretrain(args.config, args.data, args.out, resume=args.resume,
                          **given_options(args, PretrainOptions))
        if result["main_process"]:
            _report("pretrained", result)
        return 0

    return _interruptible(run)
