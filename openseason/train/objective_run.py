"""`finetune(..., objective=...)` for every objective but SFT: reward models, the DPO family, GRPO/RLOO, distill.

Same checkpoint loading, methods, options, run directory and loop as SFT finetuning (finetune.py);
what differs is the data source and the objective handed to `train()`:

    reward, dpo, cdpo, ipo, kto, orpo, simpo   DIR/preferences.jsonl -> PairBatches (+ reference
                                               log-probabilities computed once, before the method is
                                               applied, cached in OUT with fingerprints)
    grpo, rloo                                  DIR/conversations.jsonl prompts -> RolloutBatches
    distill                                     DIR/rationales.jsonl -> DistillBatches (label and
                                               rationale rows of each example, objectives/distill.py)

Held-out pairs (val_size) give val_loss and val_reward_acc in metrics.csv at every eval_every, and a
final held-out reward accuracy with a 95% Wilson interval in OUT/report.json.
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch

from ..errors import ConfigError, OpenseasonError
from ..fileio import write_json_atomic
from .loop import register_run, resolve_max_steps, train


def wilson(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """95% Wilson score interval of a proportion k/n."""
    if n == 0:
        return (0.0, 1.0)
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return (max(0.0, centre - half), min(1.0, centre + half))


def build_objective(opts: dict):
    from .objectives.grpo import GRPOObjective
    from .objectives.preference import PREFERENCE_OBJECTIVES, PreferenceObjective
    from .objectives.reward import RewardObjective

    name = opts["objective"]
    if name == "reward":
        return RewardObjective(opts["margin"])
    if name in PREFERENCE_OBJECTIVES:
        return PreferenceObjective(name, opts["beta"], label_smoothing=opts.get("label_smoothing") or 0.0,
                                   gamma=opts.get("simpo_gamma") or 0.0,
                                   desirable_weight=opts.get("desirable_weight") or 1.0,
                                   undesirable_weight=opts.get("undesirable_weight") or 1.0,
                                   sft_weight=opts.get("sft_weight") or 0.0)
    if name == "distill":
        from .objectives.distill import DistillObjective

        return DistillObjective(float(opts["alpha"]))
    if name in ("grpo", "rloo"):
        return GRPOObjective(name, opts["beta"], opts["clip_epsilon"], int(opts["num_generations"]))
    raise ConfigError(f"unknown objective {name!r}")


def finetune_objective(checkpoint: Path, data: Path, out: Path, opts: dict, *, config, resume, progress, register,
                       callbacks) -> dict:
    from ..checkpoint import is_peft_checkpoint, load_model, read_run_card, root_base
    from ..peft import apply, count_trainable, is_peft
    from ..prompts import get_style
    from ..tokenizer import Tokenizer
    from .finetune import TRAIN_DEFAULT_STYLE, _data_lineage, method_options, run_settings, run_summary_of, train_config

    method, name = opts["method"], opts["objective"]
    device = opts["device"] or ("cuda" if torch.cuda.is_available() else "cpu")
    dtype = torch.bfloat16 if (device.startswith("cuda") and method != "full") else None
    seed = int(opts["seed"])
    torch.manual_seed(seed)
    model = load_model(checkpoint, device=device, dtype=dtype)
    tokenizer = Tokenizer.from_dir(checkpoint, model.config)
    base_ref = root_base(checkpoint) if is_peft_checkpoint(checkpoint) else checkpoint
    base_card = read_run_card(checkpoint)
    pad_id = tokenizer.pad_id if tokenizer.pad_id is not None else 0
    from ..data.sft import prepared_style

    style = opts["prompt_style"] or prepared_style(data) or base_card.get("prompt_style") or TRAIN_DEFAULT_STYLE
    if isinstance(style, dict):
        style = style.get("name")
    max_length = int(opts["max_length"] or min(model.config.block_size, 2048))
    if opts.get("packing"):
        raise ConfigError(f"--packing does not apply to --objective {name} (pairs and rollouts are not packed)")
    objective = build_objective(opts)
    mb = int(opts["micro_batch_size"])
    val_batches, data_card, reference_status = None, {}, None

    if name in ("grpo", "rloo"):
        from ..data.sft import load_conversations, style_messages
        from ..prompts import chat_stops, encode_chat
        from .objectives.grpo import RolloutBatches, load_reward_function
        from .objectives.kl_reference import reference_policy

        records = load_conversations(data)
        prompts = []
        for r in records:
            messages = style_messages(r)
            if messages[-1]["role"] == "assistant":
                messages = messages[:-1]
            prompts.append(encode_chat(messages, tokenizer, style))
        reward = load_reward_function(opts["reward"], device=device)
        apply(model, method, **method_options(method, opts))
        _to_fp32_trainable(model, dtype)
        reference = reference_policy(model, method, checkpoint, float(opts["beta"]))
        _, stop_ids = chat_stops(style, tokenizer)
        batches = RolloutBatches(model, records, prompts, tokenizer, reward, group_size=int(opts["num_generations"]),
                                 prompts_per_batch=mb, max_new_tokens=int(opts["max_new_tokens"]),
                                 temperature=float(opts["temperature"]), seed=seed,
                                 baseline="rloo" if name == "rloo" else "grpo", reference=reference,
                                 stop_ids=stop_ids)
        data_card = {"prompts": len(records), "reward": opts["reward"]}
        rows = ({"read": len(records), "kept": len(records), "dropped": {}}, len(records), 0, "prompts",
                int(opts["num_generations"]))
    elif name == "distill":
        batches, val_batches, data_card = _distill_data(model, data, tokenizer, style, max_length, opts, mb, pad_id)
        rows = (data_card["tokenization"], data_card["train_examples"], data_card["val_examples"], "examples",
                1 if data_card["label_only_batches"] else 2)
        apply(model, method, **method_options(method, opts))
        _to_fp32_trainable(model, dtype)
    else:
        from ..data.preferences import PreferenceData, data_fingerprint, load_preferences
        from .data import PairBatches

        pairs = PreferenceData(load_preferences(data), tokenizer, style, max_length)
        if len(pairs) < 2:
            raise OpenseasonError("fewer than 2 usable preference pairs", where=str(data),
                                  hint=f"tokenization report: {pairs.report}")
        order = np.random.default_rng(seed).permutation(len(pairs))
        val_size = opts["val_size"]
        if val_size is None:
            val_size = min(64, len(pairs) // 10)
        val_idx, train_idx = [int(i) for i in order[:val_size]], [int(i) for i in order[val_size:]]
        if not train_idx:
            raise ConfigError(f"val_size={val_size} leaves no training pairs (only {len(pairs)})")
        reference = None
        if getattr(objective, "needs_reference", False):
            from .reference import cached_reference_logps, fingerprint

            out.mkdir(parents=True, exist_ok=True)
            expected = fingerprint(data_file_hash=data_fingerprint(data), checkpoint=checkpoint, style=style,
                                   max_length=max_length, kto=True)
            # the model as loaded IS the reference: the method is applied only after this
            reference, reference_status = cached_reference_logps(out, model, pairs.examples, pad_id, expected,
                                                                 batch_size=mb, device=device)
        apply(model, method, **method_options(method, opts))
        if name == "reward":
            from .objectives.reward import add_reward_head

            add_reward_head(model)
        _to_fp32_trainable(model, dtype)
        train_ex = [pairs[i] for i in train_idx]
        kto = name == "kto"
        batches = PairBatches(train_ex, mb, pad_id, seed=seed,
                              reference=reference[train_idx] if reference is not None else None, kto=kto)
        if val_idx:
            holder = PairBatches([pairs[i] for i in val_idx], mb, pad_id, seed=seed,
                                 reference=reference[val_idx] if reference is not None else None, kto=kto)
            val_batches = holder.fixed(list(range(len(val_idx))))
        data_card = {"tokenization": pairs.report, "train_pairs": len(train_idx), "val_pairs": len(val_idx),
                     "reference_logps": reference_status}
        rows = (pairs.report, len(train_idx), len(val_idx), "pairs", 3 if kto else 2)

    tcfg = train_config(opts, progress)
    max_steps = resolve_max_steps(tcfg, batches)
    run_card = {
        "title": f"{method} {name} finetune of {checkpoint.name}", "method": method, "objective": name,
        "method_options": method_options(method, opts), "base_checkpoint": str(base_ref.resolve()),
        "base_model": model.config.name, "prompt_style": get_style(style).to_dict(),
        "options": dict(opts), "recipe": str(config) if config else None,
        "data": {**_data_lineage(data), **data_card},
        "lineage": {"base": base_card.get("lineage"), "base_data": base_card.get("data"),
                    "reference_checkpoint": str(Path(checkpoint).resolve())},
        "trainable_parameters": count_trainable(model), "peft": is_peft(model), "reward_head": name == "reward",
    }
    report_rows, n_train, n_val, unit, per_item = rows
    result = train(model, batches, tcfg, out, val_batches=val_batches, resume=resume, base_checkpoint=base_ref,
                   tokenizer=tokenizer, run_card=run_card, callbacks=callbacks, objective=objective,
                   settings=run_settings(opts, tcfg, max_steps, max_length, style, data),
                   allow_changes=bool(opts["allow_changes"]),
                   summary=run_summary_of(model, opts, tcfg, max_steps, max_length, report_rows, n_train, n_val,
                                          unit, per_item))
    if result["stopped"] == "already_done":  # nothing was trained: the report of the finished run stands
        return result
    report = {"objective": name, "method": method, "steps": result["steps"], "final_loss": result["final_loss"],
              "reference_logps": reference_status}
    if val_batches and name == "distill":
        from .loop import evaluate_objective
        import contextlib

        held = evaluate_objective(model, objective, val_batches, torch.device(device), contextlib.nullcontext)
        report.update({"heldout_examples": data_card["val_examples"], "heldout_loss": held.get("val_loss"),
                       "heldout_label_loss": held.get("val_label_loss"),
                       "heldout_rationale_loss": held.get("val_rationale_loss"), "alpha": objective.alpha,
                       "label_prefix": opts["label_prefix"], "rationale_prefix": opts["rationale_prefix"]})
    elif val_batches:
        from .loop import evaluate_objective
        import contextlib

        held = evaluate_objective(model, objective, val_batches, torch.device(device), contextlib.nullcontext)
        n_val = sum(int(b["pairs"]) for b in val_batches)
        k = round(held.get("val_reward_acc", 0.0) * n_val)
        report.update({"heldout_pairs": n_val, "heldout_loss": held.get("val_loss"),
                       "heldout_reward_acc": held.get("val_reward_acc"), "heldout_reward_acc_ci95": wilson(k, n_val),
                       "heldout_reward_margin": held.get("val_reward_margin")})
    write_json_atomic(out / "report.json", report)
    result["report"] = report
    if register:
        register_run(result["final"], base_model=str(base_ref), datasets=[str(data)], method=f"{method}+{name}",
                     seconds=result["seconds"], tokens=result["tokens"], device=device)
    return result


def _distill_data(model, data: Path, tokenizer, style, max_length: int, opts: dict, mb: int, pad_id: int):
    """(train batches, held-out batches, data card) of distilling step by step. The held-out batches
    always carry both tasks, so label-only and step-by-step runs report the same held-out losses."""
    from .objectives.distill import DistillBatches, DistillData, load_rationale_rows

    seed = int(opts["seed"])
    distill = DistillData(load_rationale_rows(data), tokenizer, style, max_length, opts["label_prefix"],
                          opts["rationale_prefix"])
    if len(distill) < 2:
        raise OpenseasonError("fewer than 2 usable rationale rows", where=str(data),
                              hint=f"tokenization report: {distill.report}")
    order = np.random.default_rng(seed).permutation(len(distill))
    val_size = opts["val_size"]
    if val_size is None:
        val_size = min(64, len(distill) // 20)
    val_idx, train_idx = [int(i) for i in order[:val_size]], [int(i) for i in order[val_size:]]
    if not train_idx:
        raise ConfigError(f"val_size={val_size} leaves no training examples (only {len(distill)})")
    label_only = float(opts["alpha"]) == 1.0
    batches = DistillBatches([distill.examples[i] for i in train_idx], mb, pad_id, max_length, seed=seed,
                             label_only=label_only)
    val_batches = None
    if val_idx:
        holder = DistillBatches([distill.examples[i] for i in val_idx], mb, pad_id, max_length, seed=seed)
        val_batches = holder.fixed(list(range(len(val_idx))))
    card = {"tokenization": distill.report, "train_examples": len(train_idx), "val_examples": len(val_idx),
            "label_only_batches": label_only}
    return batches, val_batches, card


def _to_fp32_trainable(model, dtype) -> None:
    if dtype is not None:  # frozen base in bf16, trained parameters and optimizer state in fp32
        for p in model.parameters():
            if p.requires_grad:
                p.data = p.data.float()
