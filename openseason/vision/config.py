"""The shape of a vision encoder as data: a ViT (CLIP or EVA/BLIP-2 flavour), an optional Q-Former,
which features come out, and how images are preprocessed.

Named configs are plain dicts (like config.py's model configs), each naming its source. One ViT
class covers both towers by flags: `pre_norm` (CLIP's ln_pre), `patch_bias` (EVA's patch conv has a
bias, CLIP's has none), `qkv_bias`, `activation` (quick_gelu for OpenAI CLIP, gelu for EVA).
"""
from __future__ import annotations

import dataclasses
from dataclasses import asdict, dataclass, field
from typing import Any, Optional

from ..errors import ConfigError
from .images import ImageProcessorConfig

ACTIVATIONS = ("quick_gelu", "gelu", "gelu_tanh")
TOKENS = ("all", "patch", "cls")


@dataclass
class ViTConfig:
    image_size: int = 224
    patch_size: int = 14
    hidden_size: int = 1024
    num_layers: int = 24
    num_heads: int = 16
    intermediate_size: int = 4096
    layer_norm_eps: float = 1e-5
    activation: str = "quick_gelu"
    pre_norm: bool = True          # CLIP: LayerNorm on the embeddings before the blocks
    patch_bias: bool = False       # EVA / BLIP-2: the patch convolution has a bias
    qkv_bias: bool = True
    projection_dim: Optional[int] = None   # CLIPModel's visual_projection (pooled CLS -> joint space)

    def __post_init__(self):
        if self.image_size % self.patch_size:
            raise ConfigError(f"image_size {self.image_size} is not a multiple of patch_size {self.patch_size}")
        if self.hidden_size % self.num_heads:
            raise ConfigError(f"hidden_size {self.hidden_size} is not a multiple of num_heads {self.num_heads}")
        if self.activation not in ACTIVATIONS:
            raise ConfigError(f"unknown activation {self.activation!r}; known: {', '.join(ACTIVATIONS)}")

    @property
    def num_patches(self) -> int:
        return (self.image_size // self.patch_size) ** 2


@dataclass
class QFormerConfig:
    """BLIP-2's Querying Transformer: learned queries, BERT-style post-norm layers, cross-attention
    to the image features every `cross_attention_frequency` layers."""

    num_query_tokens: int = 32
    hidden_size: int = 768
    num_layers: int = 12
    num_heads: int = 12
    intermediate_size: int = 3072
    cross_attention_frequency: int = 2
    encoder_hidden_size: int = 1408
    layer_norm_eps: float = 1e-12
    activation: str = "gelu"

    def __post_init__(self):
        if self.hidden_size % self.num_heads:
            raise ConfigError(f"Q-Former hidden_size {self.hidden_size} is not a multiple of num_heads {self.num_heads}")
        if self.cross_attention_frequency < 1:
            raise ConfigError("cross_attention_frequency must be at least 1")
        if self.activation not in ACTIVATIONS:
            raise ConfigError(f"unknown activation {self.activation!r}; known: {', '.join(ACTIVATIONS)}")


@dataclass
class VisionConfig:
    """A whole image encoder. Output features (B, N, D):
    - without a Q-Former: the ViT's hidden states after block `feature_layer` (-1 the last, -2 the
      penultimate as LLaVA uses), the CLS and patch tokens or only one kind (`tokens`), optionally
      through the final LayerNorm (`output_norm`: BLIP-2 and open_clip's tokens do, CLIP's
      last_hidden_state does not);
    - with one: the Q-Former's query outputs (N = num_query_tokens, D = its hidden size)."""

    vit: ViTConfig = field(default_factory=ViTConfig)
    qformer: Optional[QFormerConfig] = None
    processor: ImageProcessorConfig = field(default_factory=ImageProcessorConfig)
    feature_layer: int = -1
    tokens: str = "all"
    output_norm: bool = False
    name: str = ""

    def __post_init__(self):
        if isinstance(self.vit, dict):
            self.vit = ViTConfig(**self.vit)
        if isinstance(self.qformer, dict):
            self.qformer = QFormerConfig(**self.qformer)
        if isinstance(self.processor, dict):
            self.processor = ImageProcessorConfig.from_dict(self.processor)
        if not -self.vit.num_layers <= self.feature_layer <= -1:
            raise ConfigError(f"feature_layer must be in -{self.vit.num_layers}..-1 (counted from the last block), "
                              f"not {self.feature_layer}")
        if self.tokens not in TOKENS:
            raise ConfigError(f"unknown tokens {self.tokens!r}; known: {', '.join(TOKENS)}")
        if self.processor.output_size != self.vit.image_size:
            raise ConfigError(f"the processor makes {self.processor.output_size}px images but the ViT takes "
                              f"{self.vit.image_size}px")
        if self.qformer is not None:
            if self.qformer.encoder_hidden_size != self.vit.hidden_size:
                raise ConfigError(f"the Q-Former reads {self.qformer.encoder_hidden_size}-wide features but the ViT "
                                  f"makes {self.vit.hidden_size}")
            if self.tokens != "all" or self.feature_layer != -1:
                raise ConfigError("a Q-Former reads every token of the last layer (tokens all, feature_layer -1)")

    @property
    def hidden_size(self) -> int:
        return self.qformer.hidden_size if self.qformer else self.vit.hidden_size

    @property
    def num_tokens(self) -> int:
        if self.qformer:
            return self.qformer.num_query_tokens
        return {"all": self.vit.num_patches + 1, "patch": self.vit.num_patches, "cls": 1}[self.tokens]

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["processor"] = self.processor.to_dict()
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "VisionConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ConfigError(f"unknown vision config keys {unknown}")
        try:
            return cls(**d)
        except TypeError as exc:
            raise ConfigError(f"bad vision config ({exc})") from None

    @classmethod
    def named(cls, name: str, **overrides) -> "VisionConfig":
        if name not in NAMED:
            raise ConfigError(f"unknown vision config {name!r}; known: {', '.join(NAMED)}")
        spec = {k: (dict(v) if isinstance(v, dict) else v) for k, v in NAMED[name].items()}
        spec.update(overrides)
        return cls(name=name, **spec)


NAMED: dict[str, dict] = {
    # openai/clip-vit-large-patch14 config.json (vision_config); LLaVA and OpenFlamingo use this tower
    "clip-vit-l-14": {"vit": dict(image_size=224, patch_size=14, hidden_size=1024, num_layers=24, num_heads=16,
                                  intermediate_size=4096, projection_dim=768),
                      "processor": {"mode": "clip", "size": 224, "crop_size": 224}},
    # Salesforce/blip2-opt-2.7b config.json: EVA-CLIP ViT-g/14 (39 blocks) + Q-Former (MiniGPT-4's encoder)
    "blip2-eva-vit-g": {"vit": dict(image_size=224, patch_size=14, hidden_size=1408, num_layers=39, num_heads=16,
                                    intermediate_size=6144, layer_norm_eps=1e-6, activation="gelu", pre_norm=False,
                                    patch_bias=True),
                        "qformer": {}, "output_norm": True,
                        "processor": {"mode": "blip", "size": 224, "crop_size": None}},
    # the offline demo's tower: a tiny CLIP ViT for 32px synthetic images (openseason vision train-clip)
    "tiny-clip-vit": {"vit": dict(image_size=32, patch_size=8, hidden_size=64, num_layers=3, num_heads=4,
                                  intermediate_size=256, projection_dim=64),
                      "processor": {"mode": "clip", "size": 32, "crop_size": 32}},
}
