"""`openseason synth ...`: self-instruct, reverse-instructions, rationales, self-improve.

Thin wrappers: each verb builds a backend from --backend and calls the library function of the same
name with the same arguments. Each prints one JSON status line and exits 0 only when the run is
complete: 1 when calls failed (rerun to retry), it stopped early, or nothing was kept.
"""
from __future__ import annotations

import argparse
import json
import sys

from ..generation.commands import positive  # argparse type: an integer >= 1


def _backend_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("backend")
    g.add_argument("--backend", required=True,
                   help="an OpenAI-compatible URL (http://127.0.0.1:8000/v1), a checkpoint directory, "
                        "or scripted:FILE.jsonl (replay a recording)")
    g.add_argument("--model", default=None,
                   help="model name sent to the HTTP endpoint (default: the one model the server lists in /v1/models)")
    g.add_argument("--mode", choices=["completions", "chat"], default="completions",
                   help="HTTP endpoint: /v1/completions or /v1/chat/completions")
    g.add_argument("--concurrency", type=positive, default=8, help="HTTP requests in flight at most")
    g.add_argument("--timeout", type=float, default=120.0, help="seconds per HTTP request")
    g.add_argument("--max-retries", type=int, default=5, help="retries on 429, 5xx, timeouts, connection errors")
    g.add_argument("--api-key", default=None,
                   help="key sent to the HTTP backend (default: OPENSEASON_BACKEND_API_KEY; OPENAI_API_KEY "
                        "is sent only to https:// URLs)")


def _backend(args):
    from ..generation.client import make_client

    return make_client(args.backend, model=args.model, mode=args.mode, max_concurrency=args.concurrency,
                        timeout=args.timeout, max_retries=args.max_retries, api_key=args.api_key)


def _print_summary(report: dict, out) -> int:
    print(json.dumps({"status": report["status"], **report["counts"], "out": str(out)}, ensure_ascii=False))
    if not report.get("ok", True):
        print(f"openseason synth: {report['status']} (see {out}/report.md)", file=sys.stderr)
        return 1
    return 0


def _max_tokens(p: argparse.ArgumentParser, default: str) -> None:
    p.add_argument("--max-tokens", type=int, default=None, metavar="N",
                   help=f"completion tokens per call (default {default}); lowered, and the prompt shortened, "
                        "when the backend's context cannot hold it")


def _self_instruct(args) -> int:
    from .self_instruct import self_instruct

    report = self_instruct(args.seeds, _backend(args), args.num, args.out, recipe=args.recipe,
                           threshold=args.threshold, blacklist=args.blacklist, batch_size=args.batch_size,
                           seed=args.seed, max_calls=args.max_calls, tokenizer=args.rouge_tokenizer,
                           template_dir=args.templates, progress=not args.no_progress,
                           max_tokens=args.max_tokens, instance_max_tokens=args.instance_max_tokens)
    return _print_summary(report, args.out)


def _reverse(args) -> int:
    from .reverse_instructions import reverse_instructions

    report = reverse_instructions(args.corpus, _backend(args), args.out, styles=args.styles.split(","),
                                  mode=args.style_mode, length_hint_prob=args.length_hint, max_words=args.max_words,
                                  seed=args.seed, text_field=args.text_field, template_dir=args.templates,
                                  max_tokens=args.max_tokens)
    return _print_summary(report, args.out)


def _rationales(args) -> int:
    from .rationales import rationales

    report = rationales(args.data, _backend(args), args.out, exemplars=args.exemplars, input_field=args.input_field,
                        label_field=args.label_field, drop_mismatched=args.drop_mismatched,
                        template_dir=args.templates, max_tokens=args.max_tokens)
    return _print_summary(report, args.out)


def _self_improve(args) -> int:
    from .self_improve import self_improve

    report = self_improve(args.data, args.checkpoint, args.out, num_beams=args.num_beams,
                          max_new_tokens=args.max_tokens, metric=args.metric, prompt_style=args.prompt_style,
                          length_penalty=args.length_penalty, device=args.device, limit=args.limit)
    return _print_summary(report, args.out)


def register(subparsers) -> None:
    synth = subparsers.add_parser("synth", help="grow synthetic instruction data (Self-Instruct, LongForm, "
                                                "rationales, self-improvement)")
    sub = synth.add_subparsers(dest="synth_command", metavar="VERB")
    sub.required = True

    p = sub.add_parser("self-instruct", help="Self-Instruct / Alpaca: generate, classify, instances, filter, export")
    p.add_argument("--seeds", required=True, help="seed tasks JSONL (Self-Instruct's seed_tasks.jsonl schema)")
    p.add_argument("--num", type=int, required=True, help="machine instructions to keep")
    p.add_argument("--out", required=True, help="output directory (rerun the same command to resume)")
    p.add_argument("--recipe", choices=["self-instruct", "alpaca"], default="self-instruct")
    p.add_argument("--threshold", type=float, default=None, help="ROUGE-L novelty threshold (default 0.7)")
    p.add_argument("--blacklist", default=None, help="paper | alpaca | none | FILE (one keyword per line)")
    p.add_argument("--batch-size", type=int, default=None, help="generation prompts per step (default 5)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max-calls", type=int, default=None, help="stop after this many generation calls")
    p.add_argument("--rouge-tokenizer", choices=["default", "unicode"], default="default")
    p.add_argument("--templates", default=None, help="directory with your own prompt templates")
    p.add_argument("--no-progress", action="store_true")
    _max_tokens(p, "1024; alpaca 3072: the generation calls")
    p.add_argument("--instance-max-tokens", type=int, default=None, metavar="N",
                   help="completion tokens per instance call (default 350)")
    _backend_args(p)
    p.set_defaults(func=_self_instruct)

    p = sub.add_parser("reverse-instructions", help="LongForm: infer the instruction each document answers")
    p.add_argument("--corpus", required=True, help='JSONL documents ("text" or "output")')
    p.add_argument("--out", required=True)
    p.add_argument("--styles", default="instruction,chatbot,query")
    p.add_argument("--style-mode", choices=["random", "all"], default="random",
                   help="one random style per document (the paper) or every style")
    p.add_argument("--length-hint", type=float, default=0.0, metavar="P",
                   help="append a length hint to this share of instructions (0..1)")
    p.add_argument("--max-words", type=int, default=600, help="shorten documents to this many words in prompts")
    p.add_argument("--text-field", default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--templates", default=None)
    _max_tokens(p, "128")
    _backend_args(p)
    p.set_defaults(func=_reverse)

    p = sub.add_parser("rationales", help="distilling step by step: teacher rationales, predict:/explain: rows")
    p.add_argument("--data", required=True, help='JSONL with an input and (optionally) a gold label')
    p.add_argument("--out", required=True)
    p.add_argument("--exemplars", default=None, help="few-shot exemplars (JSON list or JSONL of input, rationale, label)")
    p.add_argument("--input-field", default="input")
    p.add_argument("--label-field", default="label")
    p.add_argument("--drop-mismatched", action="store_true", help="drop examples where the teacher's label is wrong")
    p.add_argument("--templates", default=None)
    _max_tokens(p, "256")
    _backend_args(p)
    p.set_defaults(func=_rationales)

    p = sub.add_parser("self-improve", help="beam search over the training inputs; add the best beam per example")
    p.add_argument("--data", required=True, help="Alpaca JSON/JSONL training set")
    p.add_argument("--checkpoint", required=True, help="openseason checkpoint directory (the finetuned model)")
    p.add_argument("--out", required=True)
    p.add_argument("--num-beams", type=int, default=4)
    p.add_argument("--max-tokens", "--max-new-tokens", dest="max_tokens", type=int, default=128,
                   help="new tokens per beam (default 128)")
    p.add_argument("--metric", choices=["bleu", "rouge-l"], default="bleu")
    p.add_argument("--prompt-style", default=None,
                   help="chat format of the prompts (default: the checkpoint's own: run_card.json's style, else its "
                        "chat template, else plain)")
    p.add_argument("--length-penalty", type=float, default=1.0)
    p.add_argument("--device", default="cpu")
    p.add_argument("--limit", type=int, default=None, help="only the first N examples")
    p.set_defaults(func=_self_improve)
