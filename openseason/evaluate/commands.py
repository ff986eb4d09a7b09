"""`openseason evaluate ...` verbs: thin wrappers over the evaluate package's functions."""
from __future__ import annotations

import json
from pathlib import Path

from ..generation.commands import positive


def register(subparsers) -> None:
    parser = subparsers.add_parser("evaluate", help="perplexity, memorization, LLM-as-judge, task metrics, harness")
    sub = parser.add_subparsers(dest="evaluate_command", metavar="WHAT")
    sub.required = True

    p = sub.add_parser("reward", help="a reward model's accuracy on preference pairs (chosen scored above rejected)")
    p.add_argument("checkpoint", help="a reward-model checkpoint (`finetune --objective reward`)")
    p.add_argument("--data", required=True, help="a prepared preferences directory or preferences .jsonl")
    p.add_argument("--style", help="prompt style (default: the checkpoint's)")
    p.add_argument("--batch-size", type=positive, default=16)
    p.add_argument("--limit", type=positive, help="only the first N pairs")
    p.add_argument("--device", default="cpu")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(func=_reward)

    p = sub.add_parser("perplexity", help="token-level perplexity with a sliding window")
    p.add_argument("checkpoint")
    p.add_argument("--data", required=True, help="documents/conversations .jsonl, a text file, or a prepared dir")
    p.add_argument("--window", type=positive, help="tokens per window (default: the context length)")
    p.add_argument("--stride", type=positive, help="start a window every STRIDE tokens (default: window)")
    p.add_argument("--batch-size", type=positive, default=8)
    p.add_argument("--style", help="prompt style for conversations (default: stored with the data/checkpoint)")
    p.add_argument("--device")
    p.add_argument("--out", help="write report.json/report.md here and attach results to the run card")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(func=_perplexity)

    p = sub.add_parser("memorization", help="Pythia-style memorization scores of training sequences")
    p.add_argument("checkpoint")
    p.add_argument("--data", required=True,
                   help="a token directory (`data tokenize` output: each training sequence's first tokens, as "
                        "Pythia scored) or documents (.jsonl / prepared dir / text file: each document's first tokens)")
    p.add_argument("--prompt-len", type=positive, default=32, help="tokens of each sequence given as the prompt (32)")
    p.add_argument("--gen-len", type=positive, default=32, help="tokens decoded greedily and compared (32)")
    p.add_argument("--seq-len", type=positive, default=None,
                   help="token directory only: the training sequence length that cut the stream (default: the "
                        "run card's recipe.seq_len, else the context window)")
    p.add_argument("--limit", type=positive, default=None, help="only the first N sequences / documents")
    p.add_argument("--batch-size", type=positive, default=64)
    p.add_argument("--device")
    p.add_argument("--out", required=True)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_memorization)

    p = sub.add_parser("judge", help="pairwise LLM-as-judge, both orders, win/tie/loss and relative score")
    p.add_argument("--instructions", required=True, help="instruction set .jsonl (e.g. Self-Instruct user-oriented)")
    p.add_argument("--a", required=True, help="model A: a checkpoint dir or an answers .jsonl")
    p.add_argument("--b", required=True, help="model B: a checkpoint dir or an answers .jsonl")
    p.add_argument("--judge", required=True, help="judge: an OpenAI-compatible URL or a checkpoint dir")
    p.add_argument("--judge-model", default=None, help="model name to ask the endpoint for")
    p.add_argument("--judge-mode", choices=["chat", "completions"], default="chat",
                   help="endpoint API for a URL judge (default chat)")
    p.add_argument("--limit", type=positive)
    p.add_argument("--max-new-tokens", type=positive, default=256)
    p.add_argument("--out", required=True)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_judge)

    p = sub.add_parser("tasks", help="exact match, ROUGE-L and BLEU of generated answers against references")
    p.add_argument("checkpoint")
    p.add_argument("--data", required=True, help=".jsonl with instruction/input/output, prompt/reference or messages "
                                                 "rows, or a prepared directory (its conversations.jsonl)")
    p.add_argument("--limit", type=positive)
    p.add_argument("--max-new-tokens", type=positive, default=128)
    p.add_argument("--device", help="cpu, cuda, ... (default: cuda when available)")
    p.add_argument("--label-prefix", help="distilled checkpoints: ask with this prefix and report label accuracy "
                                          "on {input, label} rows (default for a checkpoint trained with "
                                          "--objective distill: its own label prefix, e.g. 'predict: ')")
    p.add_argument("--explain", action="store_true",
                   help="distilled checkpoints: also generate each item's rationale with the rationale prefix "
                        "(shown only; the label never depends on it)")
    p.add_argument("--out", help="write report.json/report.md and predictions.jsonl (id, prompt, reference, output, "
                                 "score per item) here")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_tasks)

    p = sub.add_parser("images", help="multimodal checkpoints: VQA accuracy and caption EM/BLEU/ROUGE-L/CIDEr-D on "
                                      "held-out image records")
    p.add_argument("checkpoint", help="a checkpoint finetuned with --method minigpt4 or adapter-v2-mm")
    p.add_argument("--data", required=True, help="a prepared directory with image records (e.g. the eval split of "
                                                 "`openseason data images`)")
    p.add_argument("--limit", type=int, help="only the first N records")
    p.add_argument("--max-new-tokens", type=int, default=16)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--device")
    p.add_argument("--out", help="write report.json (with every item's answer) and report.md here")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_images)

    p = sub.add_parser("harness", help="lm-evaluation-harness tasks through openseason's own forward pass")
    p.add_argument("checkpoint")
    p.add_argument("--tasks", required=True, help="comma-separated task names")
    p.add_argument("--include-path", help="directory of local task YAML files")
    p.add_argument("--num-fewshot", type=int)
    p.add_argument("--limit", type=float)
    p.add_argument("--batch-size", type=positive, default=8)
    p.add_argument("--device")
    p.add_argument("--out")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_harness)


def _print(result: dict, as_json: bool) -> None:
    if as_json:
        print(json.dumps(result, indent=2, default=str))
        return
    for key, value in result.items():
        if not isinstance(value, (dict, list)):
            print(f"{key:>20}: {value:.4f}" if isinstance(value, float) else f"{key:>20}: {value}")


def _load(path, device=None):
    from ..generation.llm import LLM

    return LLM.load(path, device=device)


def _perplexity(args) -> int:
    from .perplexity import perplexity
    from .report import write_report

    result = perplexity(_load(args.checkpoint, args.device), args.data, window=args.window, stride=args.stride,
                        batch_size=args.batch_size, style=args.style)
    result["data"] = str(args.data)
    if args.out:
        write_report(args.out, "perplexity", result, checkpoint=args.checkpoint)
    _print(result, args.json)
    return 0


def _memorization(args) -> int:
    import sys

    from .memorization import memorization, plot_histogram
    from .report import write_report
    from ..fileio import write_jsonl_atomic

    llm = _load(args.checkpoint, args.device)
    run = memorization(llm, args.data, prompt_len=args.prompt_len, gen_len=args.gen_len, batch_size=args.batch_size,
                       seq_len=args.seq_len, limit=args.limit, progress=True)
    result, sequences, origins, summary = run["result"], run["sequences"], run["origins"], run["summary"]
    if summary.get("tokenizer_matches") is False:
        print(f"openseason: warning: {args.data} was tokenized with another tokenizer file than the checkpoint's; "
              "the scores mean something only if both map text to the same ids", file=sys.stderr)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    plot = plot_histogram(result.scores, out / "memorization_hist.png")
    decode = llm.tokenizer.decode
    write_jsonl_atomic(out / "memorized.jsonl", (
        {**origins[i], "prompt": decode(sequences[i, :args.prompt_len].tolist()),
         "continuation": decode(sequences[i, args.prompt_len:].tolist())}
        for i in result.memorized.tolist()))
    write_jsonl_atomic(out / "scores.jsonl", ({**origins[i], "score": float(s)}
                                              for i, s in enumerate(result.scores.tolist())))
    write_report(out, "memorization", summary, plots=(str(plot),), checkpoint=args.checkpoint)
    _print(summary, args.json)
    return 0


def _answers_from(source: str, questions: list[dict], max_new_tokens: int) -> dict:
    from .judge import load_answers

    path = Path(source)
    if path.is_file():
        return load_answers(path)
    llm = _load(source)
    return {q["id"]: _chat(llm, q["prompt"], max_new_tokens) for q in questions}


def _chat(llm, prompt: str, max_new_tokens: int) -> str:
    """A checkpoint's answer to one instruction: a user message in its chat format, greedy."""
    return llm.chat([{"role": "user", "content": prompt}], max_new_tokens=max_new_tokens, temperature=0.0)


def _judge_backend(spec: str, model_name, max_new_tokens: int, mode: str = "chat"):
    """The judge: an LLMClient for an OpenAI-compatible endpoint (with its retries and timeouts) or a
    checkpoint, called with the judge prompt as one user message ("chat") or raw ("completions")."""
    from ..generation.client import make_client

    client = make_client(spec, model=model_name, mode=mode)
    return lambda prompt: client(prompt, max_tokens=max_new_tokens, temperature=0.0)


def _judge(args) -> int:
    from .judge import compare, load_instructions
    from .report import write_report
    from ..fileio import write_jsonl_atomic

    questions = load_instructions(args.instructions)[: args.limit]
    answers_a = _answers_from(args.a, questions, args.max_new_tokens)
    answers_b = _answers_from(args.b, questions, args.max_new_tokens)
    judge = _judge_backend(args.judge, args.judge_model, args.max_new_tokens, args.judge_mode)
    result = compare(judge, questions, answers_a, answers_b, name_a=Path(args.a).name, name_b=Path(args.b).name)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    # every pair with both answers, both orders (the judge's reply, scores and verdict in each) and the
    # combined outcome; written before the report, so a report always has its judgements
    write_jsonl_atomic(out / "judgements.jsonl", result["judgements"])
    a_is_checkpoint = Path(args.a).is_dir()
    write_report(out, "judge", {**result["summary"], "judgements": str(out / "judgements.jsonl")},
                 checkpoint=args.a if a_is_checkpoint else None)
    _print(result["summary"], args.json)
    return 0


def _distilled_tasks(args) -> int:
    from .distill import evaluate_distilled
    from .report import write_report

    max_new = args.max_new_tokens if args.max_new_tokens != 128 else 16  # labels are short
    result = evaluate_distilled(args.checkpoint, args.data, label_prefix=args.label_prefix, explain=args.explain,
                                limit=args.limit, max_new_tokens=max_new, device=args.device)
    if args.out:
        summary = {k: v for k, v in result.items() if k != "items"}
        _write_predictions(args.out, ({"id": it["id"], "prompt": result["label_prefix"] + it["input"],
                                       "reference": it["label"], "output": it["answer"],
                                       "score": {"correct": it["correct"]},
                                       **({"rationale": it["rationale"]} if "rationale" in it else {})}
                                      for it in result["items"]))
        write_report(args.out, "tasks", summary, details={"items": result["items"]}, checkpoint=args.checkpoint)
    if not args.json and args.explain:
        for item in result["items"][:10]:
            mark = "ok" if item["correct"] else "wrong"
            print(f"{item['input']}\n  label {item['answer']!r} ({mark}; gold {item['label']!r})"
                  f"\n  rationale: {item.get('rationale')}")
    _print(result, args.json)
    return 0


def _write_predictions(out, rows) -> Path:
    """OUT/predictions.jsonl (atomic), written before report.json so a report always has its items."""
    from ..fileio import write_jsonl_atomic

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    write_jsonl_atomic(out / "predictions.jsonl", rows)
    return out / "predictions.jsonl"


def _tasks(args) -> int:
    from ..checkpoint import read_run_card
    from .report import write_report
    from .tasks import load_task_items, run_tasks

    if args.label_prefix is not None or args.explain or read_run_card(args.checkpoint).get("objective") == "distill":
        return _distilled_tasks(args)
    items = load_task_items(args.data)[: args.limit]
    result = run_tasks(_load(args.checkpoint, args.device), items, max_new_tokens=args.max_new_tokens)
    summary = {**result["summary"], "data": str(args.data)}
    if args.out:
        predictions = _write_predictions(args.out, result["items"])
        write_report(args.out, "tasks", {**summary, "predictions": str(predictions)}, checkpoint=args.checkpoint)
    _print(summary, args.json)
    return 0


def _images(args) -> int:
    from .images import evaluate_images
    from .report import write_report

    result = evaluate_images(_load(args.checkpoint, args.device), args.data, limit=args.limit,
                             max_new_tokens=args.max_new_tokens, batch_size=args.batch_size)
    items = result.pop("items")
    summary = {"n": result["n"]}
    for task in ("vqa", "caption"):
        for key, value in result.get(task, {}).items():
            if not isinstance(value, dict):
                summary[f"{task}_{key}"] = value
    if args.out:
        write_report(args.out, "images", summary, details={**result, "items": items}, checkpoint=args.checkpoint)
    _print(result if args.json else summary, args.json)
    return 0


def _harness(args) -> int:
    from .harness import run_harness
    from .report import write_report

    tasks = [t.strip() for t in args.tasks.split(",") if t.strip()]
    result = run_harness(args.checkpoint, tasks, include_path=args.include_path, num_fewshot=args.num_fewshot,
                         limit=args.limit, batch_size=args.batch_size, device=args.device)
    flat = {f"{task}/{metric}": value for task, metrics in result["results"].items()
            for metric, value in metrics.items() if isinstance(value, (int, float))}
    if args.out:
        write_report(args.out, "harness", flat, details=result, checkpoint=args.checkpoint)
    _print(result if args.json else flat, args.json)
    return 0


def _reward(args) -> int:
    from .reward import evaluate_reward

    result = evaluate_reward(args.checkpoint, args.data, style=args.style, batch_size=args.batch_size,
                             device=args.device, limit=args.limit)
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        lo, hi = result["ci95"]
        print(f"reward accuracy {result['accuracy']:.1%} on {result['pairs']} pairs (95% CI {lo:.1%}-{hi:.1%}); "
              f"mean margin {result['mean_margin']:.3f}")
    return 0
