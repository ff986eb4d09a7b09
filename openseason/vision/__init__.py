"""Vision: images in, features out — the foundation MiniGPT-4, LLaMA-Adapter V2 multimodal and
OpenFlamingo build on.

Interface (code against this; everything else is internal):

    from openseason.vision import load_image, load_vision_encoder, VisionEncoder, VisionConfig

    image = load_image("cat.png")            # path, bytes or PIL image -> RGB PIL image (DataError if bad)
    enc = load_vision_encoder("ENCODER")     # a vision checkpoint dir (or a train-clip run dir: its
                                             # OUT/encoder); frozen, eval mode
    pixels = enc.preprocess([image])         # (B, 3, enc.image_size, enc.image_size) float32,
                                             # exactly as CLIPImageProcessor / BlipImageProcessor make them
    feats = enc(pixels)                      # (B, enc.num_tokens, enc.hidden_size)
    feats = enc.encode(["a.png", "b.png"])   # both steps, no grad, on the encoder's device/dtype

    enc.image_size    input side in pixels         enc.hidden_size   D of the features
    enc.num_tokens    N of the features            enc.config        VisionConfig (vit, qformer, processor,
                                                                     feature_layer, tokens, output_norm)
    enc.embed_images(pixels)  CLIP's pooled, projected image embedding (zero-shot classification)
    enc.freeze()      no gradients, eval mode (MiniGPT-4 / V2 / Flamingo keep the tower frozen)

What the features are:
    - CLIP tower (converted CLIPVisionModel / CLIPModel, or our `vision train-clip`): the hidden states
      of block `feature_layer` (-1 last, -2 as LLaVA), CLS + patches ("all", default), only patches
      ("patch", what OpenFlamingo's resampler reads) or only CLS; `output_norm` applies ln_post to them.
    - BLIP-2 (converted Blip2ForConditionalGeneration): EVA ViT -> ln_post -> Q-Former; the features
      are the 32 query outputs (N = num_query_tokens, D = the Q-Former width). The LM projection is
      not part of the encoder: `hf_blip2_projection(HF_DIR)` returns BLIP-2's language_projection.
    Change what comes out without converting again: `VisionConfig(..., tokens="patch")`, or
    `dataclasses.replace(enc.config, ...)` and `VisionEncoder(cfg).load_state_dict(enc.state_dict())`.

Checkpoints: `save_vision_encoder(DIR, enc, run_card)` writes DIR/config.json ({"kind":
"openseason-vision", "vision": VisionConfig}), model.safetensors and run_card.json atomically;
`openseason vision convert HF_DIR OUT` makes one from a Hugging Face directory and
`openseason vision train-clip --data DIR --out OUT` trains a tiny CLIP on the synthetic image suite
(OUT/encoder is the vision checkpoint). Named shapes: VisionConfig.named("clip-vit-l-14" |
"blip2-eva-vit-g" | "tiny-clip-vit").
"""
from .checkpoint import is_vision_checkpoint, load_vision_config, load_vision_encoder, save_vision_encoder
from .config import QFormerConfig, VisionConfig, ViTConfig
from .convert import hf_blip2_projection, vision_from_hf
from .encoder import VisionEncoder
from .images import ImageProcessorConfig, load_image, preprocess

__all__ = ["load_image", "preprocess", "ImageProcessorConfig", "VisionConfig", "ViTConfig", "QFormerConfig",
           "VisionEncoder", "load_vision_encoder", "load_vision_config", "save_vision_encoder",
           "is_vision_checkpoint", "vision_from_hf", "hf_blip2_projection"]
