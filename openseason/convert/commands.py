"""CLI verbs: `openseason convert from-hf`, `openseason convert to-hf`, `openseason convert to-gguf`,
`openseason download`."""
from __future__ import annotations

import argparse

from ..checkpoint import DEFAULT_SHARD_BYTES
from ..errors import ConfigError


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
    p.add_argument("--max-shard-size", type=_shard_bytes, default=None, dest="max_shard_bytes",
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


def _shards(args) -> int:
    return DEFAULT_SHARD_BYTES if args.max_shard_bytes is None else args.max_shard_bytes


def _from_hf(args) -> int:
    from . import convert_from_hf

    out = _warned(convert_from_hf, args.hf_dir, args.out_dir, dtype=args.dtype, name=args.name,
                  max_shard_bytes=_shards(args))
    print(f"wrote {out}")
    return 0


def _to_hf(args) -> int:
    from . import convert_to_hf

    if args.peft:
        stray = [flag for flag, value in (("--dtype", args.dtype), ("--max-shard-size", args.max_shard_bytes))
                 if value is not None]
        if stray:
            raise ConfigError(f"{', '.join(stray)} does not apply with --peft (the adapter is written in float32, "
                              "in one file, as peft writes it)")
        return _export_peft(argparse.Namespace(ckpt_dir=args.ckpt_dir, out_dir=args.hf_dir, base_model=args.base_model))
    if args.base_model is not None:
        raise ConfigError("--base-model applies only with --peft (it is recorded in adapter_config.json)")
    out = convert_to_hf(args.ckpt_dir, args.hf_dir, dtype=args.dtype, max_shard_bytes=_shards(args))
    print(f"wrote {out}")
    return 0


def _export_peft(args) -> int:
    from .peft_out import export_peft_checkpoint

    out = export_peft_checkpoint(args.ckpt_dir, args.out_dir, base_model=args.base_model)
    print(f"wrote {out} (adapter_config.json, adapter_model.safetensors)")
    if args.base_model is None:
        print("load it with peft.PeftModel.from_pretrained(base, DIR) over the base converted with "
              "`openseason convert to-hf BASE_CKPT HF_DIR` (--base-model HF_DIR records that folder)")
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
                  max_shard_bytes=_shards(args))
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

    p = verbs.add_parser("to-hf", help="checkpoint -> directory transformers' from_pretrained loads",
                         description="Write CKPT as a Hugging Face model directory. A LoRA checkpoint is folded "
                                     "into its base's weights; with --peft it is written as a PEFT adapter folder "
                                     "instead (as `openseason export-peft`).")
    p.add_argument("ckpt_dir", help="openseason checkpoint directory (full or LoRA)")
    p.add_argument("hf_dir", help="Hugging Face directory to write")
    p.add_argument("--peft", action="store_true",
                   help="LoRA checkpoint: write adapter_config.json + adapter_model.safetensors for peft, not merged "
                        "weights")
    p.add_argument("--base-model", default=None, metavar="NAME_OR_PATH",
                   help="with --peft: base_model_name_or_path to record (the converted base's folder or Hub id)")
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

    p = subparsers.add_parser("export-peft", help="LoRA checkpoint -> PEFT adapter folder for peft.PeftModel",
                              description="Write a LoRA checkpoint as adapter_config.json + "
                                          "adapter_model.safetensors, which peft.PeftModel.from_pretrained loads over "
                                          "the base converted with `openseason convert to-hf`.")
    p.add_argument("ckpt_dir", metavar="CKPT", help="a LoRA checkpoint directory (e.g. runs/my-lora/final)")
    p.add_argument("out_dir", metavar="OUT", help="PEFT adapter folder to write")
    p.add_argument("--base-model", default=None, metavar="NAME_OR_PATH",
                   help="base_model_name_or_path to record (the converted base's folder or Hub id)")
    p.set_defaults(func=_export_peft)

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
