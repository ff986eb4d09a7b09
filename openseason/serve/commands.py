"""CLI verbs `openseason serve` and `openseason chat` (thin wrappers over server.serve and chat.chat)."""
from __future__ import annotations

from ..generation.commands import add_speed_args, positive as _positive


def _port(text: str) -> int:
    """argparse type: a TCP port, 0..65535."""
    import argparse

    try:
        value = int(text)
    except ValueError:
        value = -1
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"expected a port number 0..65535, got {text!r}")
    return value


def _model_args(p) -> None:
    p.add_argument("checkpoint", metavar="CKPT", help="openseason checkpoint directory (full or adapter)")
    p.add_argument("--prompt-style", default=None,
                   help="chat format: a prompt style name, or 'chat-template' for the tokenizer's Hugging Face "
                        "template (default: run_card.json's style, else the chat template, else 'plain')")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1, ... (default: cuda when available)")
    p.add_argument("--dtype", default=None, help="float32, bfloat16 or float16 (default: as stored)")
    p.add_argument("--max-context", type=int, default=None, metavar="N",
                   help="let an ALiBi model (MPT) read up to N positions, past its training length (warns; "
                        "rotary models refuse)")
    add_speed_args(p)


def register(subparsers) -> None:
    p = subparsers.add_parser("serve", help="serve a checkpoint: OpenAI-compatible API and a web chat page",
                              description="Serve CKPT over HTTP: /v1/chat/completions, /v1/completions, "
                                          "/v1/models (OpenAI-compatible, SSE streaming), /health, /metrics, "
                                          "and a web chat page at /.")
    _model_args(p)
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=_port, default=8000, help="TCP port (default 8000; 0 picks a free one)")
    p.add_argument("--api-key", default=None, help="require 'Authorization: Bearer KEY' on the API")
    p.add_argument("--rails", default=None, metavar="DIR",
                   help="guardrails config folder (config.yml + *.co), or a shipped example name such as "
                        "'support' (as in `guard check`)")
    p.add_argument("--trust-actions", action="store_true",
                   help="load the rails folder's actions.py / actions/ (runs its code)")
    p.add_argument("--strict-rails", action="store_true", help="unknown config.yml keys are errors, not warnings")
    p.add_argument("--model-name", default=None, help="model id in /v1/models (default: CKPT's directory name)")
    p.add_argument("--max-batch", type=_positive, default=16, help="sequences decoded together (default 16)")
    p.add_argument("--max-queue", type=_positive, default=64,
                   help="requests waiting for a slot before new ones get 503 (default 64)")
    p.add_argument("--prefill-together", action="store_true", default=None,
                   help="prefill prompts that arrive together as one padded batch: faster for bursts of short "
                        "prompts, but a prompt's reply may then depend on what arrived with it (default on the "
                        "CPU: each prompt alone, so a greedy reply is the same under any load; on a GPU, whose "
                        "products are not batch-invariant anyway, together)")
    p.add_argument("--max-tokens-cap", type=_positive, default=1024,
                   help="largest max_tokens a request may ask for (default 1024)")
    p.add_argument("--allowed-hosts", default=None, metavar="HOSTS",
                   help="comma-separated Host header names to answer, optionally with :port ('*': any); "
                        "default: 127.0.0.1,localhost,[::1] when bound to loopback (against DNS rebinding), "
                        "any host otherwise")
    p.add_argument("--cors-origin", action="append", default=[], metavar="ORIGIN",
                   help="web page origin (scheme://host[:port]) allowed to call the API from a browser; "
                        "repeatable (default: only the server's own page)")
    p.add_argument("--max-images", type=_positive, default=4,
                   help="multimodal checkpoints: images per chat request (default 4)")
    p.add_argument("--max-image-bytes", type=_positive, default=4 * 1024 * 1024,
                   help="multimodal checkpoints: bytes per image (default 4 MiB)")
    p.add_argument("--allow-image-paths", default=None, metavar="DIR",
                   help="multimodal checkpoints: image_url parts may name local files inside DIR (default: base64 "
                        "data URLs only; remote URLs are never fetched)")
    p.add_argument("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"])
    p.set_defaults(func=_serve)

    c = subparsers.add_parser("chat", help="chat with a checkpoint in the terminal (streaming)",
                              description="Interactive chat with CKPT. Commands: /reset, /system TEXT, "
                                          "/history, /help, /exit.")
    _model_args(c)
    c.add_argument("--system", default=None, help="system prompt")
    c.add_argument("--max-new-tokens", "--max-tokens", dest="max_new_tokens", type=_positive, default=256,
                   metavar="N", help="longest answer in tokens (default 256; fewer when the context window is "
                                     "nearly full). --max-tokens is an alias")
    c.add_argument("--temperature", type=float, default=0.7)
    c.add_argument("--top-p", type=float, default=None, help="nucleus sampling (default 0.95; needs --temperature > 0)")
    c.add_argument("--seed", type=int, default=None)
    c.set_defaults(func=_chat)


def _rails_path(rails):
    """A rails folder, or the folder of a shipped example named like `guard check` takes it ('support')."""
    if rails is None:
        return None
    from .rails import resolve_rails_dir

    return resolve_rails_dir(rails)


def _serve(args) -> int:
    from .server import serve

    rails = _rails_path(args.rails)   # before the checkpoint loads: a bad name fails fast
    return serve(args.checkpoint, host=args.host, port=args.port, api_key=args.api_key, rails=rails,
                 model_name=args.model_name, prompt_style=args.prompt_style, device=args.device, dtype=args.dtype,
                 max_batch=args.max_batch, max_queue=args.max_queue, max_tokens_cap=args.max_tokens_cap,
                 allowed_hosts=None if args.allowed_hosts is None else
                 [h for h in args.allowed_hosts.split(",") if h.strip()] or [""],
                 cors_origins=args.cors_origin, log_level=args.log_level, max_context=args.max_context,
                 trust_actions=args.trust_actions, strict_rails=args.strict_rails, max_images=args.max_images,
                 max_image_bytes=args.max_image_bytes, allow_image_paths=args.allow_image_paths,
                 quantize=args.quantize, compile=args.compile, prefill_together=args.prefill_together)


def _chat(args) -> int:
    from ..generation.commands import refuse_sampling_flags_when_greedy
    from .chat import chat

    refuse_sampling_flags_when_greedy(args.temperature, {"--top-p": args.top_p, "--seed": args.seed})
    args.top_p = 0.95 if args.top_p is None else args.top_p
    return chat(args.checkpoint, system=args.system, max_new_tokens=args.max_new_tokens, temperature=args.temperature,
                top_p=args.top_p, seed=args.seed, prompt_style=args.prompt_style, device=args.device,
                dtype=args.dtype, max_context=args.max_context, quantize=args.quantize, compile=args.compile)
