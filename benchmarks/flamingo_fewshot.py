"""OpenFlamingo on CPU: few-shot classification of held-out synthetic images with 0, 2 and 4 in-context
examples (openseason.train.flamingo_fewshot has the steps).

    python benchmarks/flamingo_fewshot.py [--images 400] [--steps 500] [--eval 80] [--clip-steps 300]
                                          [--vision ENCODER] [--lm-steps 300] [--out DIR]

The suite's shape scenes (32 px), a frozen vision tower (--vision, else the vision package's tiny CLIP
trained --clip-steps on the suite's captions, else a random frozen one with --clip-steps 0), a frozen
tiny decoder trained on the episodes' text (--lm-steps; 0 = random), then `finetune --method flamingo`.
Prints one JSON summary: accuracy per shot count before and after, 95% Wilson intervals, chance.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def vision_encoder(out: Path, given, suite: Path, clip_steps: int, seed: int) -> tuple[Path, str]:
    if given:
        return Path(given), f"given: {given}"
    if clip_steps:
        from openseason.vision.clip_train import train_clip

        report = train_clip(suite, out, max_steps=clip_steps, seed=seed, progress=False, overwrite=True)
        return out / "encoder", (f"tiny CLIP trained {clip_steps} steps on the suite's captions "
                                 f"(zero-shot {report.get('zero_shot_mean')})")
    import torch

    from openseason.vision import VisionConfig, VisionEncoder, save_vision_encoder

    torch.manual_seed(seed)
    return save_vision_encoder(out / "encoder", VisionEncoder(VisionConfig.named("tiny-clip-vit")),
                               run_card={"note": "random init, frozen"}), "random frozen tiny-clip-vit"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--images", type=int, default=400, help="training images (eval: a fifth, at least 40)")
    ap.add_argument("--episodes", type=int, default=3000, help="training episodes")
    ap.add_argument("--steps", type=int, default=500, help="Flamingo training steps")
    ap.add_argument("--eval", type=int, default=80, help="held-out episodes per shot count")
    ap.add_argument("--vision", default=None, help="a vision checkpoint (default: train the tiny CLIP)")
    ap.add_argument("--clip-steps", type=int, default=300)
    ap.add_argument("--lm-steps", type=int, default=300)
    ap.add_argument("--lr", type=float, default=3e-3, help="Flamingo learning rate")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()

    from openseason.data.image_tasks import write_suite
    from openseason.train.flamingo_fewshot import flamingo_fewshot

    root = Path(args.out or tempfile.mkdtemp(prefix="flamingo-fewshot-"))
    t0 = time.time()
    suite = root / "suite"
    if not (suite / "suite.json").exists():
        write_suite(suite, n=args.images, n_eval=max(40, args.images // 5), size=32, families=["shape"], seed=args.seed)
    encoder, vision_note = vision_encoder(root / "clip", args.vision, suite, args.clip_steps, args.seed)
    report = flamingo_fewshot(root / "flamingo", suite, encoder, steps=args.steps, lm_steps=args.lm_steps,
                              episodes=args.episodes, eval_per_shot=args.eval, lr=args.lr, seed=args.seed)
    rounded = lambda acc: {k: {"accuracy": round(v["accuracy"], 3), "ci95": [round(x, 3) for x in v["ci95"]],  # noqa: E731
                               "n": v["n"]} for k, v in acc.items()}
    print(json.dumps({"vision": vision_note, "chance": round(report["chance"], 3), "steps": report["steps"],
                      "lm_steps": report["lm_steps"], "trainable_parameters": report["trainable_parameters"],
                      "parameters": report["parameters"], "before": rounded(report["before"]),
                      "after": rounded(report["after"]),
                      "timings_s": {k: round(v, 1) for k, v in report["timings"].items()},
                      "seconds": round(time.time() - t0, 1), "out": str(root)}), flush=True)


if __name__ == "__main__":
    main()
