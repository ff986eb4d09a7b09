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
