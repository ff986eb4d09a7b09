"""Loading a checkpoint for serving and running the HTTP server (the library side of `openseason serve`).

    from openseason.serve.server import serve
    serve("runs/my-model", port=8000)                       # blocks; Ctrl-C stops it

    engine, settings = load_for_serving("runs/my-model")    # or build the pieces yourself
    app = create_app(engine, settings)

Chat prompts use the checkpoint's chat format by the one rule of `prompts.resolve_chat_format`
(--prompt-style, else the style in run_card.json, else the tokenizer's Hugging Face chat template,
else "plain"); the server says which and why when it starts.
"""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Optional, Sequence

from .app import LOOPBACK_HOSTS, Hooks, ServerSettings, check_allowed_host, check_origin, create_app
from ..generation.engine import Engine

def load_for_serving(checkpoint: str | Path, *, model_name: Optional[str] = None, prompt_style: Optional[str] = None,
                     device: Optional[str] = None, dtype: Optional[str] = None, max_batch: int = 16,
                     max_queue: int = 64, api_key: Optional[str] = None, max_tokens_cap: int = 1024,
                     hooks: Optional[Hooks] = None, allowed_hosts: Sequence[str] = LOOPBACK_HOSTS,
                     cors_origins: Sequence[str] = (), max_context: Optional[int] = None,
                     max_images: int = 4, max_image_bytes: int = 4 * 1024 * 1024,
                     allow_image_paths: Optional[str | Path] = None, quantize: Optional[str] = None,
                     compile: bool = False, prefill_together: Optional[bool] = None,
                     log=print) -> tuple[Engine, ServerSettings]:
    """Load `checkpoint` (full or adapter) and start its engine; returns (engine, settings) for create_app.

    model_name     the id in /v1/models (default: the checkpoint directory's name)
    prompt_style   overrides the checkpoint's chat format (a style name, or "chat-template")
    max_batch      most sequences decoded together; max_queue: most requests waiting (then 503)
    prefill_together  prompts that arrive together are prefilled as one padded batch (faster for
                   bursts of short prompts; a prompt's tokens may then depend on its neighbours); None:
                   on a GPU only (see generation.engine.RunningBatch.prefill)
    allowed_hosts  Host header names answered ("*": any); cors_origins: web origins allowed cross-origin
    max_images, max_image_bytes, allow_image_paths   images in chat requests of a multimodal checkpoint
                   (serve/images.py): per request, decoded bytes per image, the directory local files may
                   be read from (default: none, base64 data URLs only)
    """
    allowed_hosts = tuple(check_allowed_host(h) for h in allowed_hosts)   # bad values fail before loading
    if allow_image_paths is not None and not Path(allow_image_paths).is_dir():
        from ..errors import ConfigError

        raise ConfigError("--allow-image-paths must be an existing directory", where=str(allow_image_paths))
    cors_origins = tuple(check_origin(o) for o in cors_origins)
    from ..generation.llm import LLM

    path = Path(checkpoint)
    if compile:
        log("compiling the decode step (torch.compile; seconds to a minute)")
    llm = LLM.load(path, device=device, dtype=dtype, prompt_style=prompt_style, max_context=max_context,
                   quantize=quantize, compile=compile)
    log(f"chat format {llm.chat_format.name!r}: {llm.chat_format_reason}"
        + ("" if prompt_style else " (--prompt-style chooses another)"))
    name = model_name or path.resolve().name
    engine = Engine(llm.model, llm.tokenizer, max_batch=max_batch, max_queue=max_queue,
                    prefill_together=prefill_together, name=name)
    settings = ServerSettings(model_name=name, chat_format=llm.chat_format, api_key=api_key or None,
                              max_tokens_cap=max_tokens_cap, max_n=min(8, max_batch), hooks=hooks,
                              allowed_hosts=allowed_hosts, cors_origins=cors_origins, max_images=max_images,
                              max_image_bytes=max_image_bytes,
                              allow_image_paths=str(allow_image_paths) if allow_image_paths else None)
    if getattr(llm.model, "media", None) is not None:
        # room for the allowed images as base64 (4/3 of their bytes) on top of the text limit
        settings.max_body_bytes += max_images * (max_image_bytes * 4 // 3 + 1024)
        log(f"images: up to {max_images} per request, {max_image_bytes} bytes each; "
            + (f"files under {allow_image_paths}" if allow_image_paths else "base64 data URLs only"))
    return engine, settings


def serve(checkpoint: str | Path, *, host: str = "127.0.0.1", port: int = 8000, api_key: Optional[str] = None,
          rails: Optional[str | Path] = None, model_name: Optional[str] = None,
          prompt_style: Optional[str] = None, device: Optional[str] = None, dtype: Optional[str] = None,
          max_batch: int = 16, max_queue: int = 64, max_tokens_cap: int = 1024,
          allowed_hosts: Optional[Sequence[str]] = None, cors_origins: Sequence[str] = (),
          log_level: str = "info", max_context: Optional[int] = None, trust_actions: bool = False,
          strict_rails: bool = False, max_images: int = 4, max_image_bytes: int = 4 * 1024 * 1024,
          allow_image_paths: Optional[str | Path] = None, quantize: Optional[str] = None,
          compile: bool = False, prefill_together: Optional[bool] = None) -> int:
    """Serve `checkpoint` over HTTP until interrupted. Binds 127.0.0.1 unless `host` says otherwise.

    allowed_hosts  Host header names answered; default: the loopback names when bound to loopback (against
                   DNS rebinding), any host otherwise
    cors_origins   web page origins (scheme://host[:port]) allowed to call the API from a browser
    """
    import uvicorn

    log = lambda msg: print(msg, file=sys.stderr)  # noqa: E731
    loopback = host in ("127.0.0.1", "localhost", "::1")
    if allowed_hosts is None:
        allowed_hosts = LOOPBACK_HOSTS if loopback else ("*",)
    allowed_hosts = tuple(check_allowed_host(h) for h in allowed_hosts)
    cors_origins = tuple(check_origin(o) for o in cors_origins)
    if rails:
        from .rails import resolve_rails_dir

        rails = resolve_rails_dir(rails)   # a folder or a shipped example name; fails before loading
    engine, settings = load_for_serving(checkpoint, model_name=model_name, prompt_style=prompt_style,
                                        device=device, dtype=dtype, max_batch=max_batch, max_queue=max_queue,
                                        api_key=api_key, max_tokens_cap=max_tokens_cap,
                                        allowed_hosts=allowed_hosts, cors_origins=cors_origins,
                                        max_context=max_context, max_images=max_images,
                                        max_image_bytes=max_image_bytes, allow_image_paths=allow_image_paths,
                                        quantize=quantize, compile=compile,
                                        prefill_together=prefill_together, log=log)
    if rails:
        from .rails import rails_hooks

        try:
            settings.hooks = rails_hooks(rails, engine, trust_actions=trust_actions, strict=strict_rails)
        except BaseException:
            engine.close()
            raise
        log(f"guardrails from {rails}")
    app = create_app(engine, settings)
    shown = f"[{host}]" if ":" in host else host
    log(f"serving {settings.model_name!r} (chat format {settings.chat_format.name!r}) at "
        f"http://{shown}:{port}/  (OpenAI API under /v1{', API key required' if api_key else ''})")
    if "*" not in allowed_hosts:
        log(f"answering Host {', '.join(allowed_hosts)} only (--allowed-hosts adds names)")
    if cors_origins:
        log(f"web pages at {', '.join(cors_origins)} may call the API (CORS)")
    if not loopback and not api_key:
        log("warning: listening beyond this machine without --api-key; anyone who can reach it can use it")
    try:
        uvicorn.run(app, host=host, port=port, log_level=log_level, timeout_graceful_shutdown=5)
    finally:
        engine.close()
    return 0
