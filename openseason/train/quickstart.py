"""`openseason quickstart`: the whole finetuning story in a few minutes on a laptop CPU, offline.

1. Generate the built-in task suite (openseason.data.tasks) and a byte-level tokenizer.
2. Pretrain a tiny model from scratch on the copy-heavy families (repeat, times, add, upper).
3. Measure greedy exact match on held-out `convert` items (before).
4. Finetune with LLaMA-Adapter v2 on `convert` training items through the public `finetune()`.
5. Measure again (after) and write OUT/report.md, OUT/report.json and OUT/loss_curves.png.

With `model=` (a converted Pythia/LLaMA checkpoint) and `data=` (a prepared directory) steps 1-2
are skipped: the model is finetuned with adapter-v2 on the data and exact match is measured on
held-out conversations of that data.
"""
from __future__ import annotations

import os
import random
import shutil
import sys
import time
from pathlib import Path
from typing import Any, Optional

import torch

from ..errors import OpenseasonError
from ..fileio import write_json_atomic, write_jsonl_atomic, write_text_atomic
from .options import QuickstartOptions, resolve

# The embedded tiny model (not a released config): 4 layers, 128 wide, byte-level vocabulary.
QUICKSTART_MODEL = dict(name="quickstart-tiny", family="llama", block_size=64, n_layer=4, n_embd=128, n_head=4,
                        n_query_groups=4, intermediate_size=352, rotary_percentage=1.0, parallel_residual=False,
                        bias=False, norm_class="RMSNorm", norm_eps=1e-5, mlp_class="LLaMAMLP",
                        tie_embeddings=False, add_bos_token=False)
# The copy-heavy families: a 4-layer model learns to copy digits and letters within a few hundred
# steps, which is what the held-back family needs; reverse/sort/count take far longer to learn.
PRETRAIN_FAMILIES = ("repeat", "times", "add", "upper")
HELDOUT_FAMILY = "convert"
STYLE = "plain"
# vocab 257 = the 256 byte symbols + <|endoftext|>, padded to a multiple of 8
BYTE_VOCAB, PADDED_VOCAB = 257, 264


def _write_prepared(directory: Path, records: list[dict], style: str = STYLE) -> Path:
    from ..data.prepare import write_style

    directory.mkdir(parents=True, exist_ok=True)
    write_jsonl_atomic(directory / "conversations.jsonl", records)
    write_style(directory, style)
    write_json_atomic(directory / "report.json", {"source": "openseason.data.tasks", "written": len(records),
                                                  "written_by_kind": {"conversation": len(records)}})
    return directory


def exact_match(model, tokenizer, records: list[dict], style: str, max_new_tokens: int = 16) -> dict[str, Any]:
    """Greedy answers to each record's user turn; exact match (whitespace-stripped) with the reference."""
    from ..data.sft import style_messages
    from ..prompts import encode_chat
    from ..generation import SamplingParams, generate_ids

    prompts, refs = [], []
    for record in records:
        messages = style_messages(record)
        refs.append(messages[-1]["content"].strip())
        prompts.append(encode_chat(messages[:-1], tokenizer, style))
    model.eval()
    outs = generate_ids(model, prompts, SamplingParams(max_new_tokens=max_new_tokens), tokenizer=tokenizer)
    answers = [o.text.strip() for o in outs]
    hits = [a == r for a, r in zip(answers, refs)]
    examples = [{"prompt": style_messages(rec)[-2]["content"], "reference": r, "answer": a}
                for rec, r, a in zip(records[:8], refs[:8], answers[:8])]
    return {"exact_match": sum(hits) / max(1, len(hits)), "n": len(hits), "examples": examples}


def _plot(curves: dict[str, Path], path: Path) -> Path:
    import csv

    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .loop import draw_loss

    fig, axes = plt.subplots(1, len(curves), figsize=(5.5 * len(curves), 3.8))
    axes = [axes] if len(curves) == 1 else axes
    for ax, (title, metrics) in zip(axes, curves.items()):
        with open(metrics, newline="") as handle:
            draw_loss(ax, list(csv.DictReader(handle)), title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def quickstart(out: str | Path, *, progress: bool = True, **options: Any) -> dict[str, Any]:
    """Run the quickstart into `out`; returns the report (also OUT/report.json and OUT/report.md).

    `options` are the fields of `train.options.QuickstartOptions` (model, data, pretrain_steps,
    finetune_steps, eval_items, seed, overwrite, ...; unknown names are an error). The run holds
    `out`'s lock and refuses a non-empty `out` unless `overwrite`."""
    from .outdir import claim_run_dir

    o = resolve(QuickstartOptions, options, what="quickstart options")
    out = Path(out)
    with claim_run_dir(out, overwrite=o.overwrite,
                       hint="pass --overwrite to delete the earlier quickstart and start over, or choose a new --out"):
        threads = torch.get_num_threads()
        try:
            if o.multimodal:
                return _multimodal(out, o, progress)
            if o.scenes is not None or o.clip_steps is not None or o.flamingo_steps is not None:
                raise OpenseasonError("--scenes, --clip-steps and --flamingo-steps apply to quickstart --multimodal "
                                      "only")
            return _quickstart(out, o.model, o.data, o.pretrain_steps, o.finetune_steps, o.seed, o.eval_items,
                               o.pretrain_items or 4000, progress)
        finally:
            torch.set_num_threads(threads)  # leave the caller's process as we found it


def _quickstart(out, model, data, pretrain_steps, finetune_steps, seed, eval_items, pretrain_items, progress):
    from ..checkpoint import load_model
    from ..data.tasks import generate as generate_tasks
    from ..tokenizer import Tokenizer
    from .finetune import finetune

    torch.manual_seed(seed)
    t0 = time.time()
    timings: dict[str, float] = {}
    curves: dict[str, Path] = {}
    if (model is None) != (data is None):
        raise OpenseasonError("--model and --data go together (a checkpoint and a prepared directory to finetune it on)")

    if model is None:
        eval_items = eval_items or 100
        # ~3 minutes on 2 idle CPU cores: enough pretraining that adapter-v2 can learn the held-back family
        pretrain_steps = 2000 if pretrain_steps is None else pretrain_steps
        finetune_steps = 600 if finetune_steps is None else finetune_steps
        clock = Clock(pretrain_steps, finetune_steps, verbose=progress)
        from ..config import Config
        from ..model import count_parameters

        tiny = Config(**QUICKSTART_MODEL, vocab_size=BYTE_VOCAB, padded_vocab_size=PADDED_VOCAB)
        governor = _start(clock, count_parameters(tiny), progress)
        base, tokenizer, style, heldout_name = _pretrain(out, pretrain_steps, seed, progress, timings, curves,
                                                         pretrain_items, [c for c in (governor, clock) if c])
        ft_train, evaluation = _heldout_data(eval_items, seed)
        ft_dir = _write_prepared(out / "data" / "finetune", ft_train)
        control = generate_tasks(["times"], 50, seed=seed + 7)
        ft_opts = dict(adapter_prompt_length=10, adapter_layers=QUICKSTART_MODEL["n_layer"], lr=1e-2,
                       micro_batch_size=32, max_length=QUICKSTART_MODEL["block_size"], warmup_steps=10,
                       eval_every=max(1, finetune_steps // 5), val_size=64)
    else:
        from ..data.sft import load_conversations, prepared_style

        base = Path(model)
        eval_items = eval_items or 50
        finetune_steps = 200 if finetune_steps is None else finetune_steps
        style = prepared_style(data) or "alpaca"
        records = [r for r in load_conversations(data) if r["messages"] and r["messages"][-1]["role"] == "assistant"]
        random.Random(seed).shuffle(records)
        if len(records) <= eval_items:
            raise OpenseasonError(f"{data} has only {len(records)} usable conversations; need more than "
                                  f"--eval-items {eval_items}")
        evaluation, rest = records[:eval_items], records[eval_items:]
        for r in rest + evaluation:
            r.pop("_where", None)
        ft_dir = out / "data" / "finetune"
        ft_dir.mkdir(parents=True, exist_ok=True)
        write_jsonl_atomic(ft_dir / "conversations.jsonl", rest)
        if (Path(data) / "prompt_style.json").exists():
            shutil.copyfile(Path(data) / "prompt_style.json", ft_dir / "prompt_style.json")
        tokenizer = None  # loaded below with the model
        heldout_name = Path(data).name
        from ..checkpoint.full import load_config
        from ..model import count_parameters

        clock = Clock(0, finetune_steps, verbose=progress)
        governor = _start(clock, count_parameters(load_config(base)), progress)
        control = []
        ft_opts = dict(micro_batch_size=4, grad_accum=4, warmup_steps=10, eval_every=max(1, finetune_steps // 5))

    t = time.time()
    base_model = load_model(base)
    tokenizer = tokenizer or Tokenizer.from_dir(base, base_model.config)
    before = exact_match(base_model, tokenizer, evaluation, style)
    control_before = exact_match(base_model, tokenizer, control, style) if control else None
    del base_model
    timings["evaluate_before_s"] = time.time() - t

    t = time.time()
    clock.say(f"finetuning with adapter-v2 for {finetune_steps} steps")
    result = finetune(base, ft_dir, "adapter-v2", out / "finetune", max_steps=finetune_steps, seed=seed,
                      prompt_style=style, progress=progress, register=False,
                      callbacks=[governor] if governor else [], **ft_opts)
    timings["finetune_s"] = time.time() - t
    curves["adapter-v2 finetune"] = result["metrics"]

    t = time.time()
    tuned = load_model(result["final"])
    after = exact_match(tuned, tokenizer, evaluation, style)
    control_after = exact_match(tuned, tokenizer, control, style) if control else None
    timings["evaluate_after_s"] = time.time() - t
    plot = _plot(curves, out / "loss_curves.png")
    timings["total_s"] = time.time() - t0
    if clock.expected_s is not None:
        timings["expected_s"] = clock.expected_s
    clock.say("done" + (f" (expected {_clock(clock.expected_s)})" if clock.expected_s is not None else ""))

    report = {
        "heldout_family": heldout_name, "before": before, "after": after,
        "improvement": after["exact_match"] - before["exact_match"],
        "control": {"family": "times", "before": control_before, "after": control_after} if control else None,
        "base_checkpoint": str(Path(base).resolve()), "finetuned_checkpoint": str(Path(result["final"]).resolve()),
        "finetune": {"method": "adapter-v2", "steps": result["steps"], "final_loss": result["final_loss"],
                     "val_loss": result["val_loss"], "trainable_parameters": None},
        "loss_curves": str(plot), "timings": timings, "prompt_style": style, "seed": seed,
        "threads": {"governed": governor is not None, "final": torch.get_num_threads(),
                    "changes": governor.history if governor else []},
        "report_md": str(out / "report.md"),
    }
    tuned_count = sum(p.numel() for p in tuned.parameters() if p.requires_grad)
    report["finetune"]["trainable_parameters"] = tuned_count
    report["finetune"]["total_parameters"] = sum(p.numel() for p in tuned.parameters())
    write_json_atomic(out / "report.json", report)
    write_text_atomic(out / "report.md", _markdown(report))
    return report


class Clock:
    """Elapsed and expected time of the quickstart, printed as it goes (stderr) and kept in the report.

    The expectation is measured, not assumed: the seconds per step of pretraining steps
    CALIBRATE_FROM to CALIBRATE_FROM + CALIBRATE_STEPS (after the thread governor's first try, whose
    slow step would count 10-30 ordinary ones) give the rest of pretraining, and finetuning and evaluation in the ratios this
    machine class showed (FINETUNE_STEP_RATIO, EVALUATION_STEPS; see BENCHMARKS.md)."""

    CALIBRATE_FROM, CALIBRATE_STEPS = 10, 40
    FINETUNE_STEP_RATIO = 0.8   # an adapter-v2 step of the tiny model vs a pretraining step (0.68 / 0.83 s measured)
    EVALUATION_STEPS = 10       # the exact-match passes, model loads and plot, in pretraining steps

    def __init__(self, pretrain_steps: int, finetune_steps: int, verbose: bool = True):
        self.t0 = time.time()
        self.pretrain_steps, self.finetune_steps, self.verbose = pretrain_steps, finetune_steps, verbose
        self.expected_s: Optional[float] = None
        self._start: Optional[float] = None

    def say(self, text: str) -> None:
        if self.verbose:
            print(f"openseason quickstart [{_clock(time.time() - self.t0)}]: {text}", file=sys.stderr, flush=True)

    def __call__(self, step: int, row: dict) -> None:
        """A pretraining callback: the expectation once CALIBRATE_STEPS steps are timed."""
        if step == self.CALIBRATE_FROM:
            self._start = time.time()
        elif step == self.CALIBRATE_FROM + self.CALIBRATE_STEPS and self._start is not None:
            per_step = (time.time() - self._start) / self.CALIBRATE_STEPS
            rest = (self.pretrain_steps - step + self.finetune_steps * self.FINETUNE_STEP_RATIO
                    + self.EVALUATION_STEPS) * per_step
            self.expected_s = time.time() - self.t0 + rest
            self.say(f"{1000 * per_step:.0f} ms per pretraining step: expect about {_clock(self.expected_s)} "
                     "in all")

    def elapsed(self) -> float:
        return time.time() - self.t0


def _clock(seconds: float) -> str:
    return f"{int(seconds // 60)}m{int(seconds % 60):02d}s"


def _multimodal(out: Path, o: QuickstartOptions, progress: bool) -> dict[str, Any]:
    from .quickstart_multimodal import quickstart_multimodal

    stray = [name for name in ("model", "data", "pretrain_items") if getattr(o, name) is not None]
    if stray:
        raise OpenseasonError(f"{', '.join('--' + n.replace('_', '-') for n in stray)} do not apply to quickstart "
                              "--multimodal", hint="it builds its own data (the synthetic image suite) and model")
    return quickstart_multimodal(out, seed=o.seed, scenes=o.scenes or 2000, eval_items=o.eval_items or 150,
                                 clip_steps=1000 if o.clip_steps is None else o.clip_steps,
                                 pretrain_steps=1500 if o.pretrain_steps is None else o.pretrain_steps,
                                 finetune_steps=1500 if o.finetune_steps is None else o.finetune_steps,
                                 flamingo_steps=o.flamingo_steps or 0, progress=progress)


def _heldout_data(eval_items: int, seed: int):
    from ..data.tasks import split_heldout

    return split_heldout(HELDOUT_FAMILY, 600, eval_items, seed=seed)


def _start(clock: Clock, n_parameters: int, verbose: bool):
    """Say what the quickstart is about to do and on how many threads; the ThreadGovernor (or None)."""
    from .threads import default_threads, governor_for

    governor = governor_for(n_parameters, verbose=verbose)
    try:
        load = f", load average {os.getloadavg()[0]:.1f}"
    except OSError:
        load = ""
    threads = (f"1 thread first, then the faster of 1 and {governor.many} (measured as it runs)" if governor
               else f"{default_threads()} thread(s)")
    clock.say(f"{n_parameters:,}-parameter model on {default_threads()} core(s){load}; {threads}. "
              "About 3 minutes on 2 idle cores (BENCHMARKS.md)")
    return governor


def _pretrain(out: Path, steps: int, seed: int, progress: bool, timings: dict, curves: dict, n_items: int,
              callbacks=()):
    from ..data.tasks import generate

    t = time.time()
    records = generate(PRETRAIN_FAMILIES, n_items, seed=seed)
    final, tokenizer, metrics = pretrain_tiny(out, records, QUICKSTART_MODEL, STYLE, steps, seed, progress,
                                              {"families": list(PRETRAIN_FAMILIES)}, callbacks=callbacks)
    timings["pretrain_s"] = time.time() - t
    curves["pretraining (from scratch)"] = metrics
    return final, tokenizer, STYLE, HELDOUT_FAMILY


def pretrain_tiny(out: Path, records: list[dict], spec: dict, style: str, steps: int, seed: int, progress: bool,
                  lineage: dict, vocab_size: int = BYTE_VOCAB, callbacks=()) -> tuple[Path, Any, Path]:
    """Pretrain a tiny model of shape `spec` from scratch on conversation `records` (all tokens trained,
    through the one loop) with a tokenizer trained on them (BYTE_VOCAB: byte-level, no merges); returns
    (OUT/pretrain/final, tokenizer, metrics.csv). `callbacks` go to the loop (the quickstart's thread
    governor and clock). Also used by the multimodal quickstart."""
    from ..checkpoint import save_checkpoint
    from ..config import Config
    from ..data.sft import SFTData
    from ..model import GPT
    from ..peft import apply
    from ..tokenizer import train_bpe
    from .data import SFTBatches, fixed_batches
    from .loop import TrainConfig, train

    pre_dir = _write_prepared(out / "data" / "pretrain", records, style)
    # vocab 257 = the 256 byte symbols + <|endoftext|>: a byte-level tokenizer with no merges, so
    # digits and letters are single tokens and copying / appending zeros is easy to learn.
    texts = [m["content"] for r in records[:2000 if vocab_size > BYTE_VOCAB else 100] for m in r["messages"]]
    tokenizer = train_bpe(texts, vocab_size=vocab_size)
    config = Config(**spec, vocab_size=tokenizer.vocab_size, padded_vocab_size=-(-tokenizer.vocab_size // 8) * 8,
                    eos_token_id=tokenizer.eos_id, extra={"made_by": "openseason quickstart"})
    model = GPT(config)
    model.init_weights()
    init_dir = save_checkpoint(out / "init", model, tokenizer=tokenizer,
                               run_card={"note": "randomly initialized quickstart model"})
    apply(model, "full")
    sft = SFTData(records, tokenizer, style, config.block_size)
    n_val = min(256, len(sft) // 10)
    val = [sft[i] for i in range(n_val)]
    batches = SFTBatches([sft[i] for i in range(n_val, len(sft))], 32, tokenizer.pad_id, config.block_size, seed=seed)
    tcfg = TrainConfig(max_steps=steps, micro_batch_size=32, lr=3e-3, warmup_steps=30, weight_decay=0.01,
                       eval_every=max(1, steps // 5), seed=seed, progress=progress)
    result = train(model, batches, tcfg, out / "pretrain",
                   val_batches=fixed_batches(val, 64, tokenizer.pad_id, config.block_size),
                   tokenizer=tokenizer, base_checkpoint=init_dir, callbacks=callbacks,
                   run_card={"title": "quickstart pretraining", "method": "full", "prompt_style": {"name": style},
                             "data": {"data_dir": str(pre_dir), **lineage}})
    return result["final"], tokenizer, result["metrics"]


def _markdown(report: dict) -> str:
    b, a = report["before"]["exact_match"], report["after"]["exact_match"]
    lines = [
        "# openseason quickstart",
        "",
        f"Held-out task: **{report['heldout_family']}**, {report['after']['n']} held-out items, greedy decoding, "
        "exact match of the whole answer.",
        "",
        "| | exact match |",
        "|---|---|",
        f"| before (base model) | {b:.1%} |",
        f"| after (LLaMA-Adapter v2, {report['finetune']['steps']} steps) | {a:.1%} |",
        "",
    ]
    if report.get("control"):
        c = report["control"]
        lines += [f"Control (a pretraining family, `{c['family']}`): {c['before']['exact_match']:.1%} before, "
                  f"{c['after']['exact_match']:.1%} after.", ""]
    lines += [f"Trainable parameters: {report['finetune']['trainable_parameters']:,} of "
              f"{report['finetune']['total_parameters']:,}.", "",
              "![loss curves](loss_curves.png)", "", "## Examples", "",
              "| prompt | reference | before | after |", "|---|---|---|---|"]
    for eb, ea in zip(report["before"]["examples"], report["after"]["examples"]):
        cell = lambda s: s.replace("|", "\\|").replace("\n", " ")  # noqa: E731
        lines.append(f"| {cell(eb['prompt'])} | {cell(eb['reference'])} | {cell(eb['answer'])} | {cell(ea['answer'])} |")
    t = report["timings"]
    lines += ["", "Timings: " + ", ".join(f"{k} {v:.0f}s" for k, v in t.items()), "",
              f"Finetuned checkpoint: `{report['finetuned_checkpoint']}` (load it with "
              "`openseason.LLM.load(...)` or `openseason generate`).", ""]
    return "\n".join(lines)
