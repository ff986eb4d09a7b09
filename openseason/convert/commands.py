"""CLI verbs: `openseason convert from-hf`, `openseason convert to-hf`, `openseason convert to-gguf`,
`openseason download`."""
from __future__ import annotations

import argparse

from ..checkpoint import DEFAULT_SHARD_BYTES


def _shard_bytes(text: str) -> int:
    units = {"K": 1024, "M": 1024**2, "G": 1024**3}
    text = text.strip().upper().rstrip("B")
    try:
        return int(float(text[:-1]) * units[text[-1]]) if text and text[-1] in units else int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (e.g. 2G, 500M, 1000000)") from None


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], default=None,
                   help="cast the weights (default: keep the source dtype)")
    p.add_argument("--max-shard-size", type=_shard_bytes, default=DEFAULT_SHARD_BYTES, dest="max_shard_bytes",
                   help="split the weights into safetensors shards above this size (default 2G)")


def _warned(fn, *args, **kwargs):
    """Call fn; print the warnings it raised as `openseason: warning: ...` lines on stderr."""
    import sys
    import warnings

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", UserWarning)
        result = fn(*args, **kwargs)
    for warning in caught:
        print(f"openseason: warning: {warning.message}", file=sys.stderr)
    return result


def _from_hf(args) -> int:
    from . import convert_from_hf

    out = _warned(convert_from_hf, args.hf_dir, args.out_dir, dtype=args.dtype, name=args.name,
                  max_shard_bytes=args.max_shard_bytes)
    print(f"wrote {out}")
    return 0


def _to_hf(args) -> int:
    from . import convert_to_hf

    out = convert_to_hf(args.ckpt_dir, args.hf_dir, dtype=args.dtype, max_shard_bytes=args.max_shard_bytes)
    print(f"wrote {out}")
    return 0


def _to_gguf(args) -> int:
    from .gguf import convert_to_gguf

    result = convert_to_gguf(args.ckpt_dir, args.out_file, type=args.type, name=args.name)
    print(f"wrote {result.path}: {result.summary()}")
    return 0


def _download(args) -> int:
    from . import download

    out = _warned(download, args.repo_id, args.out, revision=args.revision, hf_dir=args.hf_dir, token=args.token,
                  endpoint=args.endpoint, timeout=args.timeout, dtype=args.dtype,
                  max_shard_bytes=args.max_shard_bytes)
    print(f"wrote {out}")
    return 0


def register(subparsers) -> None:
    convert = subparsers.add_parser("convert", help="convert checkpoints to and from Hugging Face format")
    verbs = convert.add_subparsers(dest="convert_command", metavar="VERB")
    verbs.required = True

    p = verbs.add_parser("from-hf", help="Hugging Face GPTNeoXForCausalLM / LlamaForCausalLM / MptForCausalLM directory -> checkpoint")
    p.add_argument("hf_dir", help="directory with config.json, weights and tokenizer files")
    p.add_argument("out_dir", help="checkpoint directory to write")
    p.add_argument("--name", default=None, help="model name recorded in config.json (default: the folder name)")
    _common(p)
    p.set_defaults(func=_from_hf)

    p = verbs.add_parser("to-hf", help="checkpoint -> directory transformers' from_pretrained loads")
    p.add_argument("ckpt_dir", help="openseason checkpoint directory")
    p.add_argument("hf_dir", help="Hugging Face directory to write")
    _common(p)
    p.set_defaults(func=_to_hf)

    p = verbs.add_parser("to-gguf", help="checkpoint -> one GGUF file for llama.cpp / Ollama",
                         description="Write a GPT-NeoX, LLaMA or MPT checkpoint (full, or LoRA folded in memory) and its "
                                     "tokenizer as one GGUF file that llama.cpp loads.")
    p.add_argument("ckpt_dir", help="openseason checkpoint directory (full or LoRA)")
    p.add_argument("out_file", help="GGUF file to write, e.g. model.gguf")
    p.add_argument("--type", choices=["f32", "f16", "q8_0"], default="f16",
                   help="f32; f16 (2-D weights F16, norms and biases F32; default); q8_0 (2-D weights 8-bit blocks)")
    p.add_argument("--name", default=None, help="general.name in the file (default: the config name)")
    p.set_defaults(func=_to_gguf)

    p = subparsers.add_parser("download", help="fetch a model from the Hugging Face Hub and convert it")
    p.add_argument("repo_id", help="OWNER/NAME on the Hub, e.g. EleutherAI/pythia-70m")
    p.add_argument("--out", required=True, help="checkpoint directory to write")
    p.add_argument("--revision", default=None, help="branch, tag or commit (Pythia: step143000, ...)")
    p.add_argument("--hf-dir", default=None, help="keep the raw Hugging Face files here (default: the HF cache)")
    p.add_argument("--token", default=None, help="Hub token for gated or private models (default: HF_TOKEN)")
    p.add_argument("--endpoint", default=None, help="Hub URL (default: HF_ENDPOINT or https://huggingface.co)")
    p.add_argument("--timeout", type=float, default=10.0, help="seconds to wait for each Hub request")
    _common(p)
    p.set_defaults(func=_download)
