"""Vision: our preprocessing and encoders side by side with transformers', in one process.

    python benchmarks/vision.py [--threads 2] [--repeat 3]

1. preprocessing of real photographs (scikit-image, scikit-learn, matplotlib samples): ours vs
   `CLIPImageProcessor` (224 shortest edge + center crop) and `BlipImageProcessor` (224 square), both
   on transformers' PIL backend; images/s, and whether the pixels are identical;
2. forward of random-weight towers: a ViT-B/32-shaped CLIP vision tower vs `CLIPVisionModel`, and a
   small EVA tower + Q-Former vs `Blip2ForConditionalGeneration.get_image_features` minus its projection;
   images/s and the largest difference of the features.

Timing is printed (best of --repeat), never asserted.
"""
from __future__ import annotations

import argparse
import io
import os
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from openseason.vision import ImageProcessorConfig, preprocess, vision_from_hf  # noqa: E402


from timing import best_time  # noqa: E402

def photos():
    import matplotlib.cbook
    from PIL import Image
    from skimage import data
    from sklearn.datasets import load_sample_images

    images = [Image.fromarray(a) for a in (data.astronaut(), data.camera(), data.coffee(), data.chelsea(),
                                           *load_sample_images().images)]
    with matplotlib.cbook.get_sample_data("grace_hopper.jpg") as handle:
        images.append(Image.open(io.BytesIO(handle.read())).convert("RGB"))
    return images


def bench_preprocess(repeat: int) -> None:
    from transformers import BlipImageProcessor, CLIPImageProcessor

    images = photos() * 4
    for name, ours_cfg, ref in [
        ("CLIP 224 (resize + crop)", ImageProcessorConfig.clip(224),
         CLIPImageProcessor(size={"shortest_edge": 224}, crop_size={"height": 224, "width": 224})),
        ("BLIP 224 (square resize)", ImageProcessorConfig.blip(224), BlipImageProcessor(size={"height": 224, "width": 224})),
    ]:
        same = torch.equal(preprocess(images, ours_cfg), ref(images=images, return_tensors="pt")["pixel_values"])
        t_ref = best_time(lambda: ref(images=images, return_tensors="pt"), repeat)
        t_ours = best_time(lambda: preprocess(images, ours_cfg), repeat)
        print(f"| preprocess {name}, {len(images)} photos | {len(images) / t_ref:.0f} img/s | "
              f"{len(images) / t_ours:.0f} img/s | {t_ref / t_ours:.2f}x | identical pixels: {same} |")


def bench_encoders(repeat: int, workdir: Path) -> None:
    from transformers import Blip2Config, Blip2ForConditionalGeneration, CLIPVisionConfig, CLIPVisionModel

    clip = CLIPVisionModel(CLIPVisionConfig(image_size=224, patch_size=32, hidden_size=768, num_hidden_layers=12,
                                            num_attention_heads=12, intermediate_size=3072)).eval()
    clip.save_pretrained(workdir / "clip")
    ours = vision_from_hf(workdir / "clip")
    x = torch.randn(8, 3, 224, 224)
    _compare("CLIP ViT-B/32 shape, batch 8", lambda: clip(pixel_values=x).last_hidden_state, lambda: ours(x),
             8, repeat)

    blip = Blip2ForConditionalGeneration(Blip2Config(
        vision_config=dict(image_size=224, patch_size=14, hidden_size=384, num_hidden_layers=6, num_attention_heads=6,
                           intermediate_size=1536),
        qformer_config=dict(hidden_size=256, num_hidden_layers=4, num_attention_heads=4, intermediate_size=1024,
                            encoder_hidden_size=384),
        text_config=dict(model_type="llama", vocab_size=64, hidden_size=32, num_hidden_layers=1, num_attention_heads=4,
                         intermediate_size=48), num_query_tokens=32)).eval()
    blip.save_pretrained(workdir / "blip2")
    ours = vision_from_hf(workdir / "blip2")
    x = torch.randn(4, 3, 224, 224)
    _compare("EVA 384x6 + Q-Former 256x4 (32 queries), batch 4",
             lambda: blip.get_image_features(pixel_values=x).qformer_outputs.last_hidden_state, lambda: ours(x), 4,
             repeat)


def _compare(name, ref, ours, batch: int, repeat: int) -> None:
    with torch.no_grad():
        diff = (ref() - ours()).abs().max().item()
        t_ref, t_ours = best_time(ref, repeat), best_time(ours, repeat)
    print(f"| forward {name} | {batch / t_ref:.1f} img/s | {batch / t_ours:.1f} img/s | {t_ref / t_ours:.2f}x | "
          f"max |diff| {diff:.1e} |")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--work", default="/tmp/openseason-vision-bench")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    print(f"torch threads {args.threads}; load average {os.getloadavg()[0]:.1f}")
    print("| what | transformers | openseason | speedup | check |\n|---|---|---|---|---|")
    bench_preprocess(args.repeat)
    bench_encoders(args.repeat, work)
    print(f"load average after: {os.getloadavg()[0]:.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
