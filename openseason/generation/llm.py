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

from ..device import check_device
from ..errors import OpenseasonError
from .engine import Completion, Decoder, generate_ids
from .sampling import SamplingParams, as_params
from .speed import compile_decoding, prepare_for_decoding

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
    chat_format   how chat() turns messages into ids: a prompts.PromptStyle or a Hugging Face
                  ChatTemplate, chosen by prompts.resolve_chat_format (requested > run_card.json's
                  style > the tokenizer's chat template > "plain"); `chat_format_reason` says why
    prompt_style  the chat format's name
    """

    def __init__(self, model: torch.nn.Module, tokenizer, config=None, prompt_style=None,
                 path: Optional[Path] = None):
        from ..prompts import resolve_chat_format

        self.model = model
        self.tokenizer = tokenizer
        self.config = config if config is not None else model.config
        self.path = path
        self.chat_format, self.chat_format_reason = resolve_chat_format(path, prompt_style)

    @property
    def prompt_style(self) -> str:
        return self.chat_format.name

    @classmethod
    def load(cls, path: str | Path, device=None, dtype=None, prompt_style=None, quantize=None,
             max_context: Optional[int] = None, compile: bool = False) -> "LLM":
        """Load a checkpoint directory (full or adapter checkpoints, via checkpoint.load_model) and its
        tokenizer. device: "cpu", "cuda", ... (default: cuda when available); dtype: e.g. "bfloat16";
        prompt_style: the chat format to use instead of the checkpoint's (a style name, or
        "chat-template" for the tokenizer's Hugging Face template); quantize: "int8" or "bf16" weight-only
        quantization of every linear layer for faster CPU decoding, or "int8-dynamic" (int8 weights and
        activations, CPU only; see generation.quantize);
        max_context: let an ALiBi model (MPT) read past its training length, with a warning (rotary
        models refuse); compile: capture the decode step as one compiled graph (torch.compile; compiles
        here, in seconds to a minute; see generation.speed.compile_decoding)."""
        from ..checkpoint import load_model
        from ..tokenizer import Tokenizer

        path = Path(path)
        device = str(check_device(device or default_device()))
        model = load_model(path, device=device, dtype=parse_dtype(dtype))
        model.eval()
        if max_context is not None:
            model.extend_context(max_context)
        if quantize is not None:
            from .quantize import quantize as quantize_model
            quantize_model(model, quantize)
        prepare_for_decoding(model)
        if compile:
            compile_decoding(model)
        config = model.config
        tokenizer = Tokenizer.from_dir(path, config)
        return cls(model, tokenizer, config, prompt_style=prompt_style, path=path)

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
    def complete(self, prompt, params: Optional[SamplingParams] = None, media=None,
                 **kwargs) -> Union[Completion, list[Completion]]:
        """Like generate(), but returns Completion objects: token_ids, text, finish_reason ("stop" /
        "length"), prompt_tokens, completion_tokens. One prompt with n = 1 gives one Completion; a
        list of prompts, or n > 1, gives a list (prompt-major: each prompt's n choices together).
        `media`: the prompt's images for a multimodal model, as `chat_prompt` makes them (a list of
        such lists for a batch of prompts)."""
        params = as_params(params, **kwargs)
        prompts = [self.encode(p) for p in prompt] if _is_batch(prompt) else [self.encode(prompt)]
        if media is not None and not _is_batch(prompt):
            media = [media]
        out = generate_ids(self.model, prompts, params, tokenizer=self.tokenizer, media=media)
        return out if _is_batch(prompt) or params.n > 1 else out[0]

    def generate(self, prompt, max_new_tokens: int = 64, temperature: float = 0.0, top_k: Optional[int] = None,
                 top_p: float = 1.0, repetition_penalty: float = 1.0, stop: Union[str, Sequence[str], None] = None,
                 stop_token_ids: Optional[Sequence[int]] = None, seed: Optional[int] = None,
                 ignore_eos: bool = False, media=None, min_p: float = 0.0) -> Union[str, list[str]]:
        """Generated text for `prompt` (a string or token ids); a list of prompts gives a list of texts,
        decoded as one batch (on the CPU, up to cpu_kernels.BATCH_INVARIANT_ROWS sequences, each
        prompt's text is the one it gets alone).

        temperature 0 is greedy; > 0 samples (top_k, top_p, min_p filter first; seed makes it reproducible).
        Generation ends at the tokenizer's EOS (unless ignore_eos), at any of stop_token_ids, at any
        stop string (the text ends just before it), or after max_new_tokens.
        """
        out = self.complete(prompt, max_new_tokens=max_new_tokens, temperature=temperature, top_k=top_k,
                            top_p=top_p, min_p=min_p, repetition_penalty=repetition_penalty, stop=stop,
                            stop_token_ids=stop_token_ids, seed=seed, ignore_eos=ignore_eos, media=media)
        return [c.text for c in out] if isinstance(out, list) else out.text

    def stream(self, prompt: Prompt, max_new_tokens: int = 64, temperature: float = 0.0,
               top_k: Optional[int] = None, top_p: float = 1.0, repetition_penalty: float = 1.0,
               stop: Union[str, Sequence[str], None] = None, stop_token_ids: Optional[Sequence[int]] = None,
               seed: Optional[int] = None, ignore_eos: bool = False, media=None, min_p: float = 0.0) -> Iterator[str]:
        """Yield the generated text piece by piece (same arguments as generate(), one prompt). Pieces
        never split a UTF-8 character and never show a stop string; joined, they equal generate()."""
        params = as_params(None, max_new_tokens=max_new_tokens, temperature=temperature, top_k=top_k,
                           top_p=top_p, min_p=min_p, repetition_penalty=repetition_penalty, stop=stop,
                           stop_token_ids=stop_token_ids, seed=seed, ignore_eos=ignore_eos)
        decoder = Decoder(self.model, [self.encode(prompt)], params, tokenizer=self.tokenizer,
                          media=[media] if media is not None else None)
        for events in decoder:
            for event in events:
                if event.text:
                    yield event.text

    # -- chat ---------------------------------------------------------------------------------------
    def chat_prompt(self, messages, style=None) -> tuple[list[int], tuple[str, ...], tuple[int, ...]]:
        """(prompt token ids, stop strings, stop token ids) for a text conversation in the checkpoint's
        chat format (or `style`), tokenized by prompts.encode_chat exactly as training tokenized it.
        Conversations with images: `chat_inputs`."""
        from ..prompts import chat_stops, encode_chat

        fmt = self._format(style)
        from .media import check_images

        if check_images(self.model, messages):
            raise OpenseasonError("this conversation has images: use chat_inputs() (or chat())")
        ids = encode_chat(messages, self.tokenizer, fmt)
        strings, token_ids = chat_stops(fmt, self.tokenizer)
        return ids, strings, token_ids

    def chat_inputs(self, messages, style=None, base_dir=None) -> tuple[list[int], list, tuple, tuple]:
        """(prompt ids, media, stop strings, stop token ids) for a conversation that may hold image parts
        ({"type": "image", "path": ... | "image": PIL image or bytes}); see generation.media."""
        from ..prompts import chat_stops, message_images
        from .media import encode_chat_media

        fmt = self._format(style)
        if not message_images(messages):
            ids, strings, token_ids = self.chat_prompt(messages, fmt)
            return ids, [], strings, token_ids
        ids, media = encode_chat_media(messages, self.tokenizer, fmt, self.model, base_dir)
        strings, token_ids = chat_stops(fmt, self.tokenizer)
        return ids, media, strings, token_ids

    def _format(self, style):
        from ..prompts import as_chat_format

        return as_chat_format(style) if style is not None else self.chat_format

    def chat(self, messages, style=None, stream: bool = False, **kwargs):
        """Reply to `messages` ([{"role": "user", "content": ...}, ...]) in the checkpoint's chat format
        (or `style`); the format's stop strings and stop tokens are added to `stop` / `stop_token_ids`.
        A user message's content may be a list of text and image parts (a multimodal checkpoint:
        MiniGPT-4, LLaMA-Adapter V2 multimodal). stream=True yields pieces."""
        ids, media, strings, token_ids = self.chat_inputs(messages, style)
        extra = kwargs.pop("stop", None) or ()
        stops = tuple(dict.fromkeys(((extra,) if isinstance(extra, str) else tuple(extra)) + strings))
        stop_ids = tuple(dict.fromkeys(tuple(kwargs.pop("stop_token_ids", None) or ()) + token_ids))
        media = media or None
        if stream:
            return self.stream(ids, stop=stops, stop_token_ids=stop_ids, media=media, **kwargs)
        return self.generate(ids, stop=stops, stop_token_ids=stop_ids, media=media, **kwargs)

    def __repr__(self) -> str:
        device = next(self.model.parameters()).device
        return f"LLM({self.config.name!r}, device={device}, prompt_style={self.prompt_style!r})"
