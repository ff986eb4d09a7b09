"""`openseason quickstart --multimodal`: images into a tiny decoder, MiniGPT-4 and LLaMA-Adapter V2, offline.

1. Render the synthetic image suite (openseason.data.image_tasks): train and held-out eval scenes.
2. Train the tiny CLIP on the training captions (the vision package's trainer); its image tower is the
   frozen encoder of both methods.
3. Pretrain a tiny LM from scratch on the TEXT of the same tasks: each question is asked about a
   description of the scene written where the image goes: its caption (`###Human: <Img>a red circle at
   the top left</Img> What color is the shape? ###Assistant: red###`) or its facts shuffled among filler
   dots (`<Img>. top left . . red circle .</Img>`). The LM learns to answer from a description; it never
   sees an image.
4. MiniGPT-4: only the projection trains, on the image records (caption and questions), so that the
   visual tokens at <ImageHere> stand in for the description.
5. LLaMA-Adapter V2 multimodal (paper mode, early fusion) on the same records: the visual group trains.
6. Held-out VQA accuracy (and caption metrics) of each method before (its initialization: a random
   projection / closed gates) and after, next to the majority baseline; OUT/report.md, report.json,
   examples.png (held-out images with the questions and both methods' answers) and loss curves.
"""
from __future__ import annotations

import random
import time
from pathlib import Path
from typing import Any

from ..fileio import write_json_atomic, write_text_atomic
from .quickstart import QUICKSTART_MODEL, _plot, pretrain_tiny

MM_MODEL = dict(QUICKSTART_MODEL, name="quickstart-mm-tiny", block_size=96)
VOCAB = 512   # BPE on the task texts: answers ("circle", "top left") become one or two tokens
STYLE = "minigpt4"
IMAGE_SIZE = 32
TWIN_VARIANTS = 3   # text twins per image record: the caption, then 2 shuffled fact lists (text_records)
FILLER = "."


def text_records(image_records: list[dict], variants: int = TWIN_VARIANTS, seed: int = 0) -> list[dict]:
    """The text twins of every image record: the image part replaced by a description of the scene inside
    the image markers. Variant 0 writes the scene's caption; variants 1.. write its facts
    (meta.facts: "red", "circle", "top left") in a random order with 0-3 filler dots around each, so the
    LM learns to find an attribute by what it is, not by where a caption template puts it. That is what a
    frozen LM must do with visual tokens: the projection can make a token that means "red", but not put
    it where the caption would have had it. (With captions alone the projection-only model answered a
    colour to "Where is the shape?": the LM read positions, not words.)"""
    rng = random.Random(f"{seed}-text-twins")
    captions = {(r.get("meta") or {}).get("image_id"): r["messages"][-1]["content"]
                for r in image_records if (r.get("meta") or {}).get("task") == "caption"}
    out = []
    for variant in range(variants):
        for r in image_records:
            meta = r.get("meta") or {}
            caption = captions.get(meta.get("image_id"))
            if caption is None:
                continue
            description = caption if variant == 0 or not meta.get("facts") else describe(meta["facts"], rng)
            user = r["messages"][0]
            text = " ".join(p["text"] if p["type"] == "text" else f"<Img>{description}</Img>" for p in user["content"])
            out.append({"id": f"text-{r['id']}" + (f"-v{variant}" if variant else ""),
                        "messages": [{"role": "user", "content": text}, r["messages"][-1]],
                        "meta": {**meta, "modality": "text"}})
    return out


def describe(facts: list[str], rng: random.Random, filler: str = FILLER, max_gap: int = 3) -> str:
    """The facts in a random order, each after 0..max_gap filler tokens, and 0..max_gap fillers at the end."""
    facts = list(facts)
    rng.shuffle(facts)
    words: list[str] = []
    for fact in facts:
        words += [filler] * rng.randint(0, max_gap) + [fact]
    return " ".join(words + [filler] * rng.randint(0, max_gap))


def quickstart_multimodal(out: Path, *, seed: int, scenes: int, eval_items: int, clip_steps: int,
                          pretrain_steps: int, finetune_steps: int, progress: bool,
                          flamingo_steps: int = 0) -> dict[str, Any]:
    from ..data.image_tasks import write_suite
    from ..data.sft import load_conversations

    t0 = time.time()
    timings: dict[str, float] = {}
    curves: dict[str, Path] = {}
    t = time.time()
    suite = out / "suite"
    write_suite(suite, n=scenes, seed=seed, n_eval=max(1, eval_items // 3), size=IMAGE_SIZE, style=STYLE)
    train_records = load_conversations(suite / "train")
    timings["data_s"] = time.time() - t

    t = time.time()
    encoder, clip_report = _train_clip(out, suite, clip_steps, seed, progress)
    timings["clip_s"] = time.time() - t

    t = time.time()
    texts = text_records(train_records, seed=seed)
    for r in texts:
        r.pop("_where", None)
    base, tokenizer, metrics = pretrain_tiny(out, texts, MM_MODEL, STYLE, pretrain_steps, seed, progress,
                                             {"image_suite": str(suite), "as_text": True}, vocab_size=VOCAB)
    curves["LM pretraining (text twins)"] = metrics
    timings["pretrain_s"] = time.time() - t

    results = {}
    for method, options in (("minigpt4", {"lr": 3e-3}),
                            ("adapter-v2-mm", {"mm_mode": "paper", "adapter_prompt_length": 10, "lr": 1e-2})):
        results[method] = _method(out, base, suite, encoder, method, options, finetune_steps, seed, eval_items,
                                  progress, timings, curves, val_size=min(64, max(1, len(train_records) // 8)))
    flamingo = None
    if flamingo_steps:   # OpenFlamingo few-shot on the same suite and encoder (train/flamingo_fewshot.py)
        from .flamingo_fewshot import flamingo_fewshot

        t = time.time()
        flamingo = flamingo_fewshot(out / "flamingo", suite, encoder, steps=flamingo_steps, seed=seed,
                                    eval_per_shot=max(20, eval_items // 3))
        timings["flamingo_s"] = time.time() - t
    plot = _plot(curves, out / "loss_curves.png")
    examples = _examples_png(out, suite, results)
    timings["total_s"] = time.time() - t0
    report = {"kind": "multimodal", "suite": str(suite), "clip": clip_report, "base_checkpoint": str(base),
              "vision_encoder": str(encoder), "methods": results, "loss_curves": str(plot),
              "examples_png": str(examples), "timings": timings, "seed": seed, "report_md": str(out / "report.md"),
              "flamingo_fewshot": flamingo}
    write_json_atomic(out / "report.json", report)
    write_text_atomic(out / "report.md", _markdown(report))
    return report


def _train_clip(out: Path, suite: Path, steps: int, seed: int, progress: bool) -> tuple[Path, dict]:
    from ..vision.clip_train import train_clip

    report = train_clip(suite, out / "clip", max_steps=steps, seed=seed, progress=progress)
    keep = ("steps", "seconds", "final_loss", "zero_shot_mean", "chance_mean", "heldout_images")
    return out / "clip" / "encoder", {k: report.get(k) for k in keep}


def _method(out, base, suite, encoder, method, options, steps, seed, eval_items, progress, timings, curves,
            val_size: int) -> dict:
    from ..generation.llm import LLM
    from ..evaluate.images import evaluate_images
    from .finetune import finetune

    t = time.time()
    before = evaluate_images(_initial_llm(base, method, options, encoder, seed), suite / "eval", tasks={"vqa"},
                             limit=eval_items)
    timings[f"{method}_before_s"] = time.time() - t
    t = time.time()
    result = finetune(base, suite / "train", method, out / method, max_steps=steps, seed=seed, vision=str(encoder),
                      prompt_style=STYLE, micro_batch_size=16, warmup_steps=10, eval_every=max(1, steps // 5),
                      val_size=val_size, progress=progress, register=False, **options)
    curves[f"{method} (trained parts only)"] = result["metrics"]
    timings[f"{method}_train_s"] = time.time() - t
    t = time.time()
    llm = LLM.load(result["final"])
    after = evaluate_images(llm, suite / "eval", tasks={"vqa"}, limit=eval_items)
    captions = evaluate_images(llm, suite / "eval", tasks={"caption"}, limit=max(8, eval_items // 4),
                               max_new_tokens=40)
    timings[f"{method}_after_s"] = time.time() - t
    strip = lambda r: {k: v for k, v in r.items() if k != "items"}  # noqa: E731
    return {"checkpoint": str(result["final"]), "steps": result["steps"], "final_loss": result["final_loss"],
            "trainable_parameters": sum(p.numel() for p in llm.model.parameters() if p.requires_grad),
            "before": strip(before), "after": strip(after), "captions": strip(captions),
            "items": after["items"]}


def _initial_llm(base, method: str, options: dict, encoder, seed: int):
    """The method's starting point, in memory: the base with the method applied exactly as finetune()
    applies it with this seed (the same random projection; gates at zero)."""
    import torch

    from ..checkpoint import load_model
    from ..generation.llm import LLM
    from ..peft import apply
    from ..tokenizer import Tokenizer
    from .finetune import method_options

    torch.manual_seed(seed)
    model = load_model(base)
    opts = {"vision": str(encoder), "mm_mode": options.get("mm_mode"), "adapter_layers": None,
            "adapter_prompt_length": options.get("adapter_prompt_length", 10), "early_layers": None,
            "visual_blocks": None}
    apply(model, method, **method_options(method, opts))
    return LLM(model.eval(), Tokenizer.from_dir(base, model.config), prompt_style=STYLE)


def _examples_png(out: Path, suite: Path, results: dict, n: int = 8) -> Path:
    """Held-out images with a question, the reference and each method's answer."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from PIL import Image

    from ..data.sft import load_conversations

    records = {r["id"]: r for r in load_conversations(suite / "eval")}
    methods = list(results)
    first = results[methods[0]]["items"]
    picks = random.Random(0).sample(first, min(n, len(first)))
    fig, axes = plt.subplots(2, (len(picks) + 1) // 2, figsize=(3.2 * ((len(picks) + 1) // 2), 7.2))
    for ax, item in zip(axes.flat, picks):
        record = records[item["id"]]
        path = next(p["path"] for p in record["messages"][0]["content"] if p["type"] == "image")
        ax.imshow(Image.open(suite / "eval" / path), interpolation="nearest")
        answers = [next(i["prediction"] for i in results[m]["items"] if i["id"] == item["id"]) for m in methods]
        lines = [item["question"], f"truth: {item['reference']}"] + [f"{m}: {a}" for m, a in zip(methods, answers)]
        ax.set_title("\n".join(lines), fontsize=8, loc="left")
        ax.axis("off")
    for ax in list(axes.flat)[len(picks):]:
        ax.axis("off")
    fig.tight_layout()
    path = out / "examples.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _markdown(report: dict) -> str:
    lines = ["# openseason quickstart --multimodal", "",
             "Held-out synthetic images (unseen scenes and unseen handwritten digits), greedy answers, normalized "
             "exact match.", "",
             "| method | trained parameters | VQA before | VQA after | chance | majority baseline | caption CIDEr-D after |",
             "|---|---|---|---|---|---|---|"]
    for method, r in report["methods"].items():
        lines.append(f"| {method} | {r['trainable_parameters']:,} | {r['before']['vqa']['accuracy']:.1%} | "
                     f"{r['after']['vqa']['accuracy']:.1%} | {r['after']['vqa']['chance']:.1%} | "
                     f"{r['after']['vqa']['majority_baseline']:.1%} | "
                     f"{r['captions']['caption']['cider']:.2f} |")
    lines += ["", "Per family (after): " + "; ".join(
        f"{m}: " + ", ".join(f"{f} {a:.0%}" for f, a in r["after"]["vqa"]["by_family"].items())
        for m, r in report["methods"].items()), "",
        "![examples](examples.png)", "", "![loss curves](loss_curves.png)", ""]
    flamingo = report.get("flamingo_fewshot")
    if flamingo:
        lines += ["OpenFlamingo few-shot (held-out images; shape or color, unnamed; chance "
                  f"{flamingo['chance']:.1%}): " + ", ".join(
                      f"{k} shots {flamingo['before'][k]['accuracy']:.0%} -> {v['accuracy']:.0%}"
                      for k, v in flamingo["after"].items()), ""]
    lines += [
        "Timings: " + ", ".join(f"{k} {v:.0f}s" for k, v in report["timings"].items()), ""]
    return "\n".join(lines)
