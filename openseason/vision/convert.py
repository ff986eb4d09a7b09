"""Hugging Face vision checkpoints -> VisionEncoder.

    CLIPVisionModel / CLIPModel directory     -> CLIP ViT (+ visual_projection when present)
    Blip2ForConditionalGeneration directory   -> EVA ViT + Q-Former (query tokens included)

Only the image half is read; the text tower of CLIPModel, and BLIP-2's language_projection and
language model, are left to the callers that need them (`hf_blip2_projection` hands the projection
to MiniGPT-4). Every tensor of the image half is mapped or the conversion fails naming it.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Optional

import torch

from ..convert.hf_files import load_hf_state, read_hf_config, read_json
from ..errors import CheckpointError
from .config import QFormerConfig, VisionConfig, ViTConfig
from .encoder import VisionEncoder
from .images import from_hf_preprocessor

CLIP_TYPES = ("clip", "clip_vision_model")
BLIP2_TYPES = ("blip-2",)


def _act(name: str, where: str) -> str:
    if name in ("quick_gelu", "gelu"):
        return name
    if name in ("gelu_pytorch_tanh", "gelu_new"):
        return "gelu_tanh"
    raise CheckpointError(f"unsupported activation {name!r}", where=where)


def _preprocessor(hf_dir: Path) -> dict:
    path = hf_dir / "preprocessor_config.json"
    return read_json(path) if path.exists() else {}


def clip_config(hf: dict, hf_dir: Path) -> VisionConfig:
    v = hf.get("vision_config", hf) if hf.get("model_type") == "clip" else hf
    where = str(hf_dir / "config.json")
    vit = ViTConfig(image_size=v.get("image_size", 224), patch_size=v.get("patch_size", 32),
                    hidden_size=v.get("hidden_size", 768), num_layers=v.get("num_hidden_layers", 12),
                    num_heads=v.get("num_attention_heads", 12), intermediate_size=v.get("intermediate_size", 3072),
                    layer_norm_eps=v.get("layer_norm_eps", 1e-5), activation=_act(v.get("hidden_act", "quick_gelu"), where),
                    pre_norm=True, patch_bias=False, qkv_bias=True,
                    projection_dim=hf.get("projection_dim", 512) if hf.get("model_type") == "clip" else None)
    processor = from_hf_preprocessor(_preprocessor(hf_dir), vit.image_size, "clip")
    return VisionConfig(vit=vit, processor=processor, output_norm=False, name=hf_dir.name)


def blip2_config(hf: dict, hf_dir: Path) -> VisionConfig:
    v, q = hf.get("vision_config") or {}, hf.get("qformer_config") or {}
    where = str(hf_dir / "config.json")
    vit = ViTConfig(image_size=v.get("image_size", 224), patch_size=v.get("patch_size", 14),
                    hidden_size=v.get("hidden_size", 1408), num_layers=v.get("num_hidden_layers", 39),
                    num_heads=v.get("num_attention_heads", 16), intermediate_size=v.get("intermediate_size", 6144),
                    layer_norm_eps=v.get("layer_norm_eps", 1e-6), activation=_act(v.get("hidden_act", "gelu"), where),
                    pre_norm=False, patch_bias=True, qkv_bias=v.get("qkv_bias", True))
    qformer = QFormerConfig(num_query_tokens=hf.get("num_query_tokens", 32), hidden_size=q.get("hidden_size", 768),
                            num_layers=q.get("num_hidden_layers", 12), num_heads=q.get("num_attention_heads", 12),
                            intermediate_size=q.get("intermediate_size", 3072),
                            cross_attention_frequency=q.get("cross_attention_frequency", 2),
                            encoder_hidden_size=q.get("encoder_hidden_size", vit.hidden_size),
                            layer_norm_eps=q.get("layer_norm_eps", 1e-12), activation=_act(q.get("hidden_act", "gelu"), where))
    processor = from_hf_preprocessor(_preprocessor(hf_dir), vit.image_size, "blip")
    return VisionConfig(vit=vit, qformer=qformer, processor=processor, output_norm=True, name=hf_dir.name)


# (HF key pattern, our key template) for the parts that map one to one; {0} is the layer index.
_CLIP_LAYER = {"layer_norm1": "norm1", "layer_norm2": "norm2", "self_attn.out_proj": "attn.proj",
               "mlp.fc1": "mlp.fc1", "mlp.fc2": "mlp.fc2"}
_CLIP_TOP = {"embeddings.patch_embedding.weight": "patch_embed.weight", "pre_layrnorm.weight": "ln_pre.weight",
             "pre_layrnorm.bias": "ln_pre.bias", "post_layernorm.weight": "ln_post.weight",
             "post_layernorm.bias": "ln_post.bias", "embeddings.class_embedding": "class_embedding",
             "embeddings.position_embedding.weight": "pos_embed"}
_BLIP2_LAYER = {"layer_norm1": "norm1", "layer_norm2": "norm2", "self_attn.qkv": "attn.qkv",
                "self_attn.projection": "attn.proj", "mlp.fc1": "mlp.fc1", "mlp.fc2": "mlp.fc2"}
_BLIP2_TOP = {"embeddings.patch_embedding.weight": "patch_embed.weight",
              "embeddings.patch_embedding.bias": "patch_embed.bias",
              "post_layernorm.weight": "ln_post.weight", "post_layernorm.bias": "ln_post.bias"}
_QFORMER_LAYER = {"attention.attention.query": "self_attn.q", "attention.attention.key": "self_attn.k",
                  "attention.attention.value": "self_attn.v", "attention.output.dense": "self_attn.o",
                  "attention.output.LayerNorm": "self_attn.norm",
                  "crossattention.attention.query": "cross_attn.q", "crossattention.attention.key": "cross_attn.k",
                  "crossattention.attention.value": "cross_attn.v", "crossattention.output.dense": "cross_attn.o",
                  "crossattention.output.LayerNorm": "cross_attn.norm",
                  "intermediate_query.dense": "ffn.fc1", "output_query.dense": "ffn.fc2",
                  "output_query.LayerNorm": "ffn.norm"}
# The Q-Former's text branch: trained in BLIP-2's stage 1, unused for image features.
_QFORMER_TEXT = re.compile(r"^qformer\.(embeddings\.|encoder\.layer\.\d+\.(intermediate|output)\.)")
_CLIP_TEXT = ("text_model.", "text_projection.", "logit_scale")
_LAYER = re.compile(r"^(.*?)\.(\d+)\.(.+)\.(weight|bias)$")


def _map_layer(rest: str, table: dict, prefix: str) -> Optional[str]:
    m = _LAYER.match(rest)
    if not m or m.group(3) not in table:
        return None
    return f"{prefix}.{m.group(2)}.{table[m.group(3)]}.{m.group(4)}"


def clip_state(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    out, qkv = {}, {}
    for key, t in state.items():
        if key == "visual_projection.weight":
            out["vit.proj.weight"] = t
            continue
        if key.startswith(_CLIP_TEXT):
            continue   # CLIPModel's text tower
        # the Hub's CLIPVisionModel files prefix "vision_model."; transformers 5 writes none
        rest = key[len("vision_model."):] if key.startswith("vision_model.") else key
        if rest in _CLIP_TOP:
            out["vit." + _CLIP_TOP[rest]] = t
            continue
        m = re.match(r"^encoder\.layers\.(\d+)\.self_attn\.([qkv])_proj\.(weight|bias)$", rest)
        if m:
            qkv.setdefault((int(m.group(1)), m.group(3)), {})[m.group(2)] = t
            continue
        mapped = _map_layer(rest, _CLIP_LAYER, "vit.blocks") if rest.startswith("encoder.layers.") else None
        if mapped is None:
            raise CheckpointError(f"unexpected CLIP vision weight {key!r}")
        out[mapped] = t
    for (layer, kind), parts in qkv.items():
        out[f"vit.blocks.{layer}.attn.qkv.{kind}"] = torch.cat([parts["q"], parts["k"], parts["v"]])
    return out


def blip2_state(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    out = {}
    for key, t in state.items():
        if key.startswith("vision_model."):
            rest = key[len("vision_model."):]
            if rest in _BLIP2_TOP:
                out["vit." + _BLIP2_TOP[rest]] = t
            elif rest == "embeddings.class_embedding":
                out["vit.class_embedding"] = t.reshape(-1)
            elif rest == "embeddings.position_embedding":
                out["vit.pos_embed"] = t.reshape(t.shape[-2], t.shape[-1])
            elif (mapped := _map_layer(rest, _BLIP2_LAYER, "vit.blocks")) is not None:
                out[mapped] = t
            else:
                raise CheckpointError(f"unexpected BLIP-2 vision weight {key!r}")
        elif key == "query_tokens":
            out["qformer.query_tokens"] = t
        elif key.startswith("qformer."):
            rest = key[len("qformer."):]
            if rest.startswith("layernorm."):
                out["qformer.ln_in." + rest.split(".", 1)[1]] = t
            elif (mapped := _map_layer(rest, _QFORMER_LAYER, "qformer.layers")) is not None:
                out[mapped] = t
            elif not _QFORMER_TEXT.match(key):
                raise CheckpointError(f"unexpected BLIP-2 Q-Former weight {key!r}")
    return out


def vision_from_hf(hf_dir: str | Path, dtype: Optional[torch.dtype] = torch.float32) -> VisionEncoder:
    """A VisionEncoder holding the image half of a Hugging Face CLIP or BLIP-2 directory."""
    hf_dir = Path(hf_dir)
    hf = read_hf_config(hf_dir)
    model_type = hf.get("model_type")
    if model_type in CLIP_TYPES:
        config, convert = clip_config(hf, hf_dir), clip_state
    elif model_type in BLIP2_TYPES:
        config, convert = blip2_config(hf, hf_dir), blip2_state
    else:
        raise CheckpointError(f"model_type {model_type!r} is not a vision model openseason converts",
                              where=str(hf_dir / "config.json"),
                              hint="supported: CLIPVisionModel / CLIPModel (clip, clip_vision_model) and "
                                   "Blip2ForConditionalGeneration (blip-2)")
    state, _, listing = load_hf_state(hf_dir)
    ours = convert(state)
    with torch.device("meta"):
        encoder = VisionEncoder(config)
    expected = encoder.state_dict()
    missing = sorted(set(expected) - set(ours))
    if missing:
        raise CheckpointError(f"the Hugging Face weights lack {missing[:5]}{' ...' if len(missing) > 5 else ''}",
                              where=str(listing))
    for key, t in ours.items():
        if tuple(t.shape) != tuple(expected[key].shape):
            raise CheckpointError(f"shape mismatch for {key}: {tuple(t.shape)} vs {tuple(expected[key].shape)} "
                                  f"from config.json", where=str(listing))
    encoder.load_state_dict({k: v.to(dtype) if dtype and v.is_floating_point() else v for k, v in ours.items()},
                            assign=True)
    return encoder.eval()


def hf_blip2_projection(hf_dir: str | Path) -> dict[str, torch.Tensor]:
    """BLIP-2's language_projection ({"weight", "bias"}: Q-Former width -> LM width), for MiniGPT-4."""
    state, _, listing = load_hf_state(Path(hf_dir))
    out = {k.split(".", 1)[1]: v for k, v in state.items() if k.startswith("language_projection.")}
    if set(out) != {"weight", "bias"}:
        raise CheckpointError("no language_projection weight and bias", where=str(listing))
    return out


def convert_vision(hf_dir: str | Path, out: str | Path) -> dict:
    """`openseason vision convert`: write the image half of a HF directory as a vision checkpoint."""
    from .checkpoint import save_vision_encoder

    encoder = vision_from_hf(hf_dir)
    save_vision_encoder(out, encoder, run_card={"converted_from": str(Path(hf_dir).resolve()),
                                                "source_format": "huggingface"})
    return {"out": str(out), "tokens": encoder.num_tokens, "hidden_size": encoder.hidden_size,
            "image_size": encoder.image_size, "parameters": sum(p.numel() for p in encoder.parameters())}
