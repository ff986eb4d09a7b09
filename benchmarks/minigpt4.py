"""MiniGPT-4 on CPU: openseason's forward and greedy generation against transformers'
Blip2ForConditionalGeneration with the SAME random weights (a small BLIP-2: EVA ViT + Q-Former with 32
queries + a LLaMA), side by side in one process, best of --repeat.

    .venv/bin/python benchmarks/minigpt4.py [--batch 4] [--text 48] [--new 32] [--repeat 3]

Prints: max |logits difference|, forward seconds of each side and the ratio, and greedy generation of
--new tokens (ours: the engine with the KV cache, images spliced at prefill; transformers: generate()
with its cache) with the tokens compared.
"""
from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path

import torch


from timing import best_time  # noqa: E402

def build(root: Path):
    from transformers import Blip2Config, Blip2ForConditionalGeneration

    from openseason.checkpoint import load_full_model
    from openseason.convert import convert_from_hf
    from openseason.peft import apply
    from openseason.peft.media import VisionTower
    from openseason.vision import hf_blip2_projection, vision_from_hf

    vocab = 512
    config = Blip2Config(
        vision_config=dict(image_size=112, patch_size=14, hidden_size=256, num_hidden_layers=4, num_attention_heads=4,
                           intermediate_size=1024, qkv_bias=True),
        qformer_config=dict(hidden_size=256, num_hidden_layers=4, num_attention_heads=4, intermediate_size=1024,
                            cross_attention_frequency=2, encoder_hidden_size=256, vocab_size=100),
        text_config=dict(model_type="llama", vocab_size=vocab, hidden_size=512, num_hidden_layers=6,
                         num_attention_heads=8, num_key_value_heads=8, intermediate_size=1376,
                         max_position_embeddings=512, bos_token_id=1, eos_token_id=2, pad_token_id=0),
        num_query_tokens=32, image_token_index=vocab - 1)
    torch.manual_seed(0)
    hf = Blip2ForConditionalGeneration(config).eval()
    with torch.no_grad():
        hf.query_tokens.normal_(0, 0.5)
    hf.save_pretrained(root / "hf")
    hf.language_model.save_pretrained(root / "llama")
    lm = load_full_model(convert_from_hf(root / "llama", root / "ours"))
    encoder = vision_from_hf(root / "hf")
    model = apply(lm, "minigpt4", vision=VisionTower(encoder, lambda image: encoder.preprocess([image])))
    projection = hf_blip2_projection(root / "hf")
    with torch.no_grad():
        model.media.proj.weight.copy_(projection["weight"])
        model.media.proj.bias.copy_(projection["bias"])
    return hf, model.eval(), vocab


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--text", type=int, default=48, help="text tokens after the 32 image positions")
    parser.add_argument("--new", type=int, default=32, help="generated tokens")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    from openseason.generation import SamplingParams, generate_ids

    with tempfile.TemporaryDirectory() as tmp:
        hf, model, vocab = build(Path(tmp))
    g = torch.Generator().manual_seed(1)
    pixels = torch.randn(args.batch, 3, 112, 112, generator=g)
    text = torch.randint(3, vocab - 1, (args.batch, args.text), generator=g)
    ids = torch.cat([torch.full((args.batch, 32), vocab - 1), text], dim=1)
    rows, starts = torch.arange(args.batch), torch.zeros(args.batch, dtype=torch.long)

    def ours():
        embeds, _ = model.media.inputs(model, ids, pixels, rows, starts)
        return model(ids, inputs_embeds=embeds)

    with torch.inference_mode():
        reference = hf(pixel_values=pixels, input_ids=ids).logits
        diff = float((ours() - reference).abs().max())
        spread = float(reference.std())
        t_ours = best_time(ours, args.repeat)
        t_hf = best_time(lambda: hf(pixel_values=pixels, input_ids=ids), args.repeat)
        params = SamplingParams(max_new_tokens=args.new, ignore_eos=True)
        media = [[(pixels[i], 0)] for i in range(args.batch)]
        prompts = [row.tolist() for row in ids]
        got = []
        g_ours = best_time(lambda: got.append(generate_ids(model, prompts, params, media=media)), args.repeat)
        want = []
        g_hf = best_time(lambda: want.append(hf.generate(pixel_values=pixels, input_ids=ids, max_new_tokens=args.new,
                                                         min_new_tokens=args.new, do_sample=False)), args.repeat)
    ours_tokens = [c.token_ids for c in got[-1]]
    hf_tokens = want[-1][:, -args.new:].tolist()
    same = sum(a == b for a, b in zip(ours_tokens, hf_tokens))
    print(f"threads {torch.get_num_threads()}, load average {os.getloadavg()[0]:.1f}; batch {args.batch}, "
          f"{32 + args.text} prompt positions (32 image), {args.new} new tokens")
    print(f"max |logits difference| {diff:.2e} (logits std {spread:.3f})")
    print(f"forward: transformers {t_hf * 1000:.1f} ms, openseason {t_ours * 1000:.1f} ms, ratio {t_hf / t_ours:.2f}x")
    print(f"greedy generation: transformers {g_hf:.2f} s, openseason {g_ours:.2f} s, ratio {g_hf / g_ours:.2f}x; "
          f"identical token sequences {same}/{args.batch}")


if __name__ == "__main__":
    main()
