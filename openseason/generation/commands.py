"""`openseason generate CKPT --prompt TEXT`: generate text from a checkpoint (wraps LLM.generate/stream)."""
from __future__ import annotations

import sys


def unescape(text: str) -> str:
    """Shell-friendly escapes in --stop: \\n, \\t and \\\\ (so `--stop "\\n\\n"` stops at a blank line)."""
    out, i = [], 0
    while i < len(text):
        if text[i] == "\\" and i + 1 < len(text) and text[i + 1] in "nt\\":
            out.append({"n": "\n", "t": "\t", "\\": "\\"}[text[i + 1]])
            i += 2
        else:
            out.append(text[i])
            i += 1
    return "".join(out)


def positive(text: str) -> int:
    """argparse type: an integer >= 1."""
    import argparse

    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def add_speed_args(p) -> None:
    """--quantize and --compile, for every verb that decodes from a checkpoint (generate, serve, chat)."""
    from .quantize import QUANTIZE_MODES

    p.add_argument("--quantize", default=None, choices=QUANTIZE_MODES,
                   help="int8 or bf16 weight-only linears, or int8-dynamic (int8 weights and activations, CPU "
                        "only): fewer bytes per decoded token, a small perplexity change (BENCHMARKS.md)")
    p.add_argument("--compile", action="store_true",
                   help="capture the decode step as one compiled graph (torch.compile; compiles at start, "
                        "seconds to a minute; needs a C++ compiler on the CPU)")


def refuse_sampling_flags_when_greedy(temperature: float, flags: dict) -> None:
    """Sampling flags ({"--top-k": value or None, ...}) shape sampling only; with greedy decoding
    (--temperature 0) they would be silently ignored, so a given one is an error instead."""
    from ..errors import ConfigError

    given = [flag for flag, value in flags.items() if value is not None]
    if temperature == 0 and given:
        raise ConfigError(f"{', '.join(given)} only apply when sampling, and --temperature is 0 (greedy)",
                          hint="add --temperature 0.8 (for example) to sample, or drop " + ", ".join(given))


def _generate(args) -> int:
    from .llm import LLM

    refuse_sampling_flags_when_greedy(args.temperature, {"--top-k": args.top_k, "--top-p": args.top_p,
                                                         "--min-p": args.min_p, "--seed": args.seed})
    chat = args.chat or args.prompt_style is not None
    if args.prompt_style is not None:
        _check_style(args.prompt_style)
    llm = LLM.load(args.checkpoint, device=args.device, dtype=args.dtype, max_context=args.max_context,
                   prompt_style=args.prompt_style, quantize=args.quantize, compile=args.compile)
    if chat:  # say which format wraps the prompt: a wrong one is the usual reason for odd replies
        print(f"openseason: chat format {llm.prompt_style!r} ({llm.chat_format_reason})", file=sys.stderr)
    options = dict(max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_k=args.top_k,
                   top_p=1.0 if args.top_p is None else args.top_p, min_p=args.min_p or 0.0,
                   repetition_penalty=args.repetition_penalty,
                   stop=[unescape(s) for s in args.stop] or None,
                   seed=args.seed, ignore_eos=args.ignore_eos)
    if args.best_of is not None or args.reward is not None:
        if chat:
            from ..errors import ConfigError
            raise ConfigError("--chat / --prompt-style do not apply with --best-of (it scores raw completions)")
        return _best_of(args, llm, options)
    if args.json:
        from ..errors import ConfigError
        raise ConfigError("--json applies only with --best-of N --reward R")
    if chat:
        messages = [{"role": "user", "content": args.prompt}]
        if args.stream:
            for piece in llm.chat(messages, stream=True, **options):
                sys.stdout.write(piece)
                sys.stdout.flush()
            sys.stdout.write("\n")
        else:
            print(llm.chat(messages, **options))
        return 0
    if args.stream:
        for piece in llm.stream(args.prompt, **options):
            sys.stdout.write(piece)
            sys.stdout.flush()
        sys.stdout.write("\n")
    else:
        print(llm.generate(args.prompt, **options))
    return 0


def _check_style(name: str) -> None:
    """An unknown --prompt-style is an error before the model is loaded, naming every known one."""
    from ..errors import ConfigError
    from ..prompts import CHAT_TEMPLATE_NAME, STYLES

    if name not in STYLES and name != CHAT_TEMPLATE_NAME:
        raise ConfigError(f"unknown --prompt-style {name!r}",
                          hint=f"choose one of: {', '.join([*STYLES, CHAT_TEMPLATE_NAME])} ({CHAT_TEMPLATE_NAME}: the "
                               "checkpoint's own Hugging Face chat template)")


def _best_of(args, llm, options) -> int:
    """--best-of N --reward R: sample N, print the completion the reward scores highest."""
    import json

    from ..errors import ConfigError
    from ..evaluate.reward import best_of_n, load_best_of_n_reward

    if args.best_of is None or args.reward is None:
        raise ConfigError("--best-of N and --reward R go together",
                          hint="e.g. --best-of 8 --reward RM_CKPT --temperature 0.8")
    if args.stream:
        raise ConfigError("--stream does not apply with --best-of (the best is known only after all N finish)")
    reward = load_best_of_n_reward(args.reward, llm, device=str(next(llm.model.parameters()).device))
    options = dict(options)
    temperature = options.pop("temperature")
    stop = options.pop("stop")
    result = best_of_n(llm, args.prompt, args.best_of, reward, temperature=temperature, stop=stop, **options)
    print(json.dumps(result, ensure_ascii=False) if args.json else result["text"])
    return 0


def register(subparsers) -> None:
    p = subparsers.add_parser("generate", help="generate text from a checkpoint",
                              description="Generate a continuation of --prompt with the model in CKPT "
                                          "(greedy by default; --temperature > 0 samples).")
    p.add_argument("checkpoint", metavar="CKPT", help="an openseason checkpoint directory")
    p.add_argument("--prompt", required=True, help="the text to continue (with --chat: the user's message)")
    p.add_argument("--chat", action="store_true",
                   help="treat --prompt as a user message in the checkpoint's chat format (the prompt style its "
                        "run_card.json stores, else its tokenizer's chat template, else plain) and stop at the "
                        "format's end of turn")
    p.add_argument("--prompt-style", default=None, metavar="STYLE",
                   help="the chat format to use instead of the checkpoint's (implies --chat): alpaca, dolly, oasst, "
                        "chatml, llama-2-chat, vicuna, plain, or chat-template (the tokenizer's own)")
    p.add_argument("--max-new-tokens", "--max-tokens", dest="max_new_tokens", type=positive, default=64,
                   metavar="N", help="most tokens to generate (default 64). --max-tokens is an alias, as in `chat`")
    p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default)")
    p.add_argument("--top-k", type=int, default=None, help="sample from the K most likely tokens (with --temperature)")
    p.add_argument("--top-p", type=float, default=None, help="nucleus sampling (with --temperature; default 1.0)")
    p.add_argument("--min-p", type=float, default=None,
                   help="keep tokens at least this fraction as likely as the most likely one (with --temperature)")
    p.add_argument("--repetition-penalty", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=None, help="makes sampling reproducible")
    p.add_argument("--stop", action="append", default=[], metavar="STR",
                   help="stop before this string (repeatable; \\n and \\t are understood)")
    p.add_argument("--ignore-eos", action="store_true", help="keep generating past the EOS token")
    p.add_argument("--max-context", type=int, default=None, metavar="N",
                   help="let an ALiBi model (MPT) read up to N positions, past its training length (warns; "
                        "rotary models refuse)")
    p.add_argument("--stream", action="store_true", help="print pieces as they are generated")
    p.add_argument("--best-of", type=positive, default=None, metavar="N",
                   help="sample N completions (needs --temperature > 0 when N > 1; choice i uses seed + i) and "
                        "print the one --reward scores highest")
    p.add_argument("--reward", default=None, metavar="R",
                   help="with --best-of: a reward-model checkpoint (same tokenizer as CKPT) or module:function")
    p.add_argument("--json", action="store_true", help="with --best-of: print all N choices with their scores as JSON")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1, ... (default: cuda when available)")
    p.add_argument("--dtype", default=None, help="float32, bfloat16 or float16 (default: as saved)")
    add_speed_args(p)
    p.set_defaults(func=_generate)
