"""The Python API: `LLM.load(path)`, then generate, stream or chat.

    from openseason import LLM
    llm = LLM.load("runs/my-model")
    print(llm.generate("The capital of France is", max_new_tokens=20))
    for piece in llm.stream("Once upon a time", temperature=0.8, top_p=0.9, seed=0):
        print(piece, end="", flush=True)

Generation runs through the one decoding implementation (`engine.RunningBatch`, stepped here by a
`Decoder` in the caller's thread), so it gives the same tokens as the server's engine.
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterator, Optional, Sequence, Union

import torch

from ..errors import OpenseasonError
from .engine import Completion, Decoder, generate_ids
from .sampling import SamplingParams, as_params
from .speed import prepare_for_decoding

__all__ = ["LLM", "parse_dtype", "default_device"]

Prompt = Union[str, Sequence[int]]

_DTYPES = {"float32": torch.float32, "fp32": torch.float32, "float": torch.float32,
           "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
           "float16": torch.float16, "fp16": torch.float16, "half": torch.float16}


def parse_dtype(dtype) -> Optional[torch.dtype]:
    """A torch dtype from None, a torch.dtype or a name such as "bfloat16"."""
    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype
    name = str(dtype).replace("torch.", "").lower()
    if name not in _DTYPES:
        raise OpenseasonError(f"unknown dtype {dtype!r}", hint="use float32, bfloat16 or float16")
    return _DTYPES[name]


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def _is_batch(prompt) -> bool:
    """A list of strings or of token-id lists is a batch; a string or a flat list of ints is one prompt."""
    if isinstance(prompt, str):
        return False
    if isinstance(prompt, torch.Tensor):
        return prompt.dim() == 2
    items = list(prompt)
    if not items:
        return False
    first = items[0]
    return isinstance(first, (str, list, tuple)) or (isinstance(first, torch.Tensor) and first.dim() > 0)


class LLM:
    """A loaded model with its tokenizer: generate, stream and chat.

    model         openseason.model.GPT (a torch.nn.Module; forward(input_ids) -> logits [B, T, vocab])
    tokenizer     openseason.tokenizer.Tokenizer
    config        openseason.config.Config
    prompt_style  the name saved in run_card.json ("prompt_style"), or None
    """

    def __init__(self, model: torch.nn.Module, tokenizer, config=None, prompt_style: Optional[str] = None,
                 path: Optional[Path] = None):
        self.model = model
        self.tokenizer = tokenizer
        self.config = config if config is not None else model.config
        self.prompt_style = prompt_style
        self.path = path

    @classmethod
    def load(cls, path: str | Path, device=None, dtype=None) -> "LLM":
        """Load a checkpoint directory (full or adapter checkpoints, via checkpoint.load_model) and its
        tokenizer. device: "cpu", "cuda", ... (default: cuda when available); dtype: e.g. "bfloat16"."""
        from ..checkpoint import load_model, read_run_card
        from ..tokenizer import Tokenizer

        path = Path(path)
        device = str(device or default_device())
        if device.startswith("cuda") and not torch.cuda.is_available():
            raise OpenseasonError(f"device {device!r} asked for, but torch sees no CUDA GPU",
                                  hint="use device='cpu' (CLI: --device cpu)")
        model = load_model(path, device=device, dtype=parse_dtype(dtype))
        model.eval()
        prepare_for_decoding(model)
        config = model.config
        tokenizer = Tokenizer.from_dir(path, config)
        style = read_run_card(path).get("prompt_style")
        if isinstance(style, dict):  # a saved PromptStyle.to_dict()
            style = style.get("name")
        return cls(model, tokenizer, config, prompt_style=style, path=path)

    # -- prompts ------------------------------------------------------------------------------------
    def encode(self, prompt: Prompt) -> list[int]:
        """Token ids for a text prompt (BOS per the family's policy); token-id prompts pass through."""
        if isinstance(prompt, str):
            return self.tokenizer.encode(prompt)
        if isinstance(prompt, torch.Tensor):
            return [int(t) for t in prompt.reshape(-1).tolist()]
        ids = list(prompt)
        if not all(isinstance(t, int) for t in ids):
            raise OpenseasonError("a prompt is a string or a list of token ids (ints)",
                                  hint=f"got a list starting with {ids[:3]!r}")
        return ids

    # -- generation ---------------------------------------------------------------------------------
    def complete(self, prompt, params: Optional[SamplingParams] = None, **kwargs) -> Union[Completion, list[Completion]]:
        """Like generate(), but returns Completion objects: token_ids, text, finish_reason ("stop" /
        "length"), prompt_tokens, completion_tokens."""
        params = as_params(params, **kwargs)
        if _is_batch(prompt):
            return generate_ids(self.model, [self.encode(p) for p in prompt], params, tokenizer=self.tokenizer)
        return generate_ids(self.model, [self.encode(prompt)], params, tokenizer=self.tokenizer)[0]

    def generate(self, prompt, max_new_tokens: int = 64, temperature: float = 0.0, top_k: Optional[int] = None,
                 top_p: float = 1.0, repetition_penalty: float = 1.0, stop: Union[str, Sequence[str], None] = None,
                 stop_token_ids: Optional[Sequence[int]] = None, seed: Optional[int] = None,
                 ignore_eos: bool = False) -> Union[str, list[str]]:
        """Generated text for `prompt` (a string or token ids); a list of prompts gives a list of texts,
        generated as one left-padded batch.

        temperature 0 is greedy; > 0 samples (top_k, top_p filter first; seed makes it reproducible).
        Generation ends at the tokenizer's EOS (unless ignore_eos), at any of stop_token_ids, at any
        stop string (the text ends just before it), or after max_new_tokens.
        """
        out = self.complete(prompt, max_new_tokens=max_new_tokens, temperature=temperature, top_k=top_k,
                            top_p=top_p, repetition_penalty=repetition_penalty, stop=stop,
                            stop_token_ids=stop_token_ids, seed=seed, ignore_eos=ignore_eos)
        return [c.text for c in out] if isinstance(out, list) else out.text

    def stream(self, prompt: Prompt, max_new_tokens: int = 64, temperature: float = 0.0,
               top_k: Optional[int] = None, top_p: float = 1.0, repetition_penalty: float = 1.0,
               stop: Union[str, Sequence[str], None] = None, stop_token_ids: Optional[Sequence[int]] = None,
               seed: Optional[int] = None, ignore_eos: bool = False) -> Iterator[str]:
        """Yield the generated text piece by piece (same arguments as generate(), one prompt). Pieces
        never split a UTF-8 character and never show a stop string; joined, they equal generate()."""
        params = as_params(None, max_new_tokens=max_new_tokens, temperature=temperature, top_k=top_k,
                           top_p=top_p, repetition_penalty=repetition_penalty, stop=stop,
                           stop_token_ids=stop_token_ids, seed=seed, ignore_eos=ignore_eos)
        decoder = Decoder(self.model, [self.encode(prompt)], params, tokenizer=self.tokenizer)
        for events in decoder:
            for event in events:
                if event.text:
                    yield event.text

    # -- chat ---------------------------------------------------------------------------------------
    def chat_prompt(self, messages, style: Optional[str] = None) -> tuple[list[int], tuple[str, ...]]:
        """(prompt token ids, the style's stop strings) for a conversation, tokenized as in training."""
        from ..prompts import get_style

        name = style or self.prompt_style
        if name is None:
            raise OpenseasonError("this checkpoint records no prompt style, so chat cannot format messages",
                                  where=str(self.path) if self.path else None,
                                  hint="pass style='alpaca' (or dolly, oasst, chatml, ...), or use generate()")
        prompt_style = get_style(name)
        try:
            from ..data.sft import tokenize_prompt
        except ImportError:  # the data stage is optional here: fall back to rendering the text
            ids = self.tokenizer.encode(prompt_style.render(messages, add_generation_prompt=True))
        else:
            ids = tokenize_prompt(messages, self.tokenizer, prompt_style)
        return ids, tuple(prompt_style.stop_strings)

    def chat(self, messages, style: Optional[str] = None, stream: bool = False, **kwargs):
        """Reply to `messages` ([{"role": "user", "content": ...}, ...]) in the checkpoint's prompt style
        (or `style`); the style's stop strings are added to `stop`. stream=True yields pieces."""
        ids, style_stops = self.chat_prompt(messages, style)
        extra = kwargs.pop("stop", None) or ()
        stops = tuple(dict.fromkeys(((extra,) if isinstance(extra, str) else tuple(extra)) + style_stops))
        if stream:
            return self.stream(ids, stop=stops, **kwargs)
        return self.generate(ids, stop=stops, **kwargs)

    def __repr__(self) -> str:
        device = next(self.model.parameters()).device
        return f"LLM({self.config.name!r}, device={device}, prompt_style={self.prompt_style!r})"
