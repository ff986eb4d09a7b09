"""CLI verbs of the vision stage: `openseason vision convert` (Hugging Face CLIP / BLIP-2 -> a vision
checkpoint) and `openseason vision train-clip` (a tiny CLIP on the synthetic image suite); thin
wrappers over convert.convert_vision and clip_train.train_clip."""
from __future__ import annotations


def _convert(args) -> int:
    from .convert import convert_vision

    result = convert_vision(args.hf_dir, args.out)
    print(f"wrote {result['out']}: {result['parameters']:,} parameters; {result['image_size']}px images -> "
          f"{result['tokens']} x {result['hidden_size']} features")
    return 0


def register(sub) -> None:
    p = sub.add_parser("vision", help="vision encoders: convert CLIP / BLIP-2, train a tiny CLIP",
                       description="Image encoders for the multimodal methods (MiniGPT-4, LLaMA-Adapter V2, "
                                   "OpenFlamingo): a vision checkpoint holds a ViT (+ Q-Former) and its preprocessing.")
    verbs = p.add_subparsers(dest="vision_command", metavar="VERB")
    verbs.required = True

    c = verbs.add_parser("convert", help="a Hugging Face CLIP or BLIP-2 directory -> a vision checkpoint",
                         description="Convert the image half of a CLIPVisionModel / CLIPModel or "
                                     "Blip2ForConditionalGeneration directory (config.json + weights, and "
                                     "preprocessor_config.json when present) into OUT.")
    c.add_argument("hf_dir", help="Hugging Face model directory")
    c.add_argument("out", help="output vision checkpoint directory")
    c.set_defaults(func=_convert)
    register_train_clip(verbs)


def _train_clip(args) -> int:
    from .clip_train import CLIPOptions, train_clip
    from ..options import given_options

    report = train_clip(args.data, args.out, resume=args.resume, overwrite=args.overwrite,
                        **given_options(args, CLIPOptions))
    print(f"trained {report['steps']} steps in {report['seconds']}s; final loss {report['final_loss']}")
    for task, result in report["zero_shot"].items():
        print(f"  zero-shot {task:<14} {result['accuracy']:.3f}  (chance {result['chance']:.3f}, "
              f"{result['images']} held-out images)")
    print(f"image tower: {args.out}/encoder (use it with --vision)")
    return 0


def register_train_clip(verbs) -> None:
    from ..options import add_arguments
    from .clip_train import CLIPOptions

    t = verbs.add_parser("train-clip", help="train a tiny CLIP on the synthetic image suite",
                         description="Contrastive image-text training (symmetric InfoNCE, learned temperature) "
                                     "of a tiny ViT and a tiny text transformer on the caption records of --data "
                                     "(a suite from `openseason data images`, or a prepared directory). Writes "
                                     "OUT/encoder (a vision checkpoint), OUT/report.json (zero-shot accuracy on "
                                     "DATA/eval), metrics.csv, loss.png and resumable step checkpoints.")
    t.add_argument("--data", required=True, help="suite directory (DIR/train, DIR/eval) or a prepared directory")
    t.add_argument("--out", required=True, help="run directory")
    t.add_argument("--resume", choices=("auto",), help="continue from the newest checkpoint under --out")
    t.add_argument("--overwrite", action="store_true", help="replace a previous run in --out")
    add_arguments(t, CLIPOptions)
    t.set_defaults(func=_train_clip)
