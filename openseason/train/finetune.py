"""`openseason finetune` and `openseason merge` as library functions.

    from openseason.train import finetune
    result = finetune("checkpoints/pythia-70m", "data/dolly", method="lora", out="runs/dolly-lora",
                      max_steps=200, save_every=50, micro_batch_size=4, grad_accum=4, resume="auto")
    LLM.load(result["final"])          # full or PEFT, loads directly

Arguments resolve as: explicit arguments > the recipe (`config="recipes/lora.yaml"`) > the defaults
of `train.options.FinetuneOptions` (the one list of options, with their documentation).
"""
from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch

from ..errors import ConfigError, OpenseasonError
from .loop import TrainConfig, register_run, resolve_max_steps, train
from .options import METHOD_LR, FinetuneOptions, resolve, resolve_objective
from .outdir import claim_run_dir

TRAIN_DEFAULT_STYLE = "alpaca"  # when neither the options, the data nor the base checkpoint name a style

METHOD_STYLE = {"minigpt4": "minigpt4", "flamingo": "flamingo"}   # the prompt format a method was built with


def method_options(method: str, opts: dict) -> dict:
    """The keyword arguments of `peft.apply` for `method`, from the finetune options."""
    if method == "minigpt4":
        return {"vision": opts["vision"]}
    if method == "adapter-v2-mm":
        return {"vision": opts["vision"], "mode": opts["mm_mode"] or "paper",
                "prompt_length": int(opts["adapter_prompt_length"]), "layers": opts["adapter_layers"],
                "early_layers": opts["early_layers"], "visual_blocks": opts["visual_blocks"]}
    if method == "flamingo":
        return {"vision": opts["vision"], "every": opts["xattn_every"], "perceiver_depth": opts["perceiver_depth"],
                "num_latents": opts["num_latents"]}
    if method == "lora":
        return {"rank": int(opts["lora_rank"]), "alpha": float(opts["lora_alpha"]),
                "dropout": float(opts["lora_dropout"]), "targets": opts["lora_targets"]}
    if method in ("adapter", "adapter-v2"):
        return {"prompt_length": int(opts["adapter_prompt_length"]), "layers": opts["adapter_layers"]}
    return {}


def _data_lineage(data_dir: Path) -> dict:
    lineage: dict[str, Any] = {"data_dir": str(data_dir.resolve())}
    report = data_dir / "report.json" if data_dir.is_dir() else None
    if report is not None and report.exists():
        try:
            lineage["prepare_report"] = json.loads(report.read_text())
        except json.JSONDecodeError:
            lineage["prepare_report"] = "unreadable"
    return lineage


def finetune(checkpoint: str | Path, data: str | Path, method: Optional[str] = None, out: str | Path = "runs/finetune",
             *, config: Optional[str | Path] = None, resume: Optional[str] = None, progress: bool = True,
             register: bool = True, callbacks=(), **options: Any) -> dict[str, Any]:
    """Finetune `checkpoint` on the prepared directory `data` with `method` (see peft.METHODS and
    peft.METHOD_ALIASES); checkpoints go to out/step-XXXXXX and out/final. `options` are the fields
    of `train.options.FinetuneOptions` (max_steps, lr, lora_rank, ...; unknown names are an error);
    `config` is a recipe YAML of the same fields. `resume` is "auto" or a step directory.
    `callbacks` are fn(step, metrics) called after every step. Returns train()'s result plus the
    resolved options.

    The prompt style the DATA is tokenized with (and which run_card.json records for inference) is:
    `prompt_style` if given, else the style stored with the prepared data (prompt_style.json), else the
    base checkpoint's run_card.json style, else TRAIN_DEFAULT_STYLE ("alpaca"). This is a training rule,
    not `openseason.prompts.resolve_chat_format` (the inference rule): a Hugging Face chat template
    cannot be trained on, and the data's own style is the source of truth."""
    from ..peft import canonical_method
    from .recipe import load_recipe

    recipe = load_recipe(config, FinetuneOptions) if config else {}
    if method is not None:
        options = {**options, "method": method}
    opts = dataclasses.asdict(resolve(FinetuneOptions, options, recipe, what="finetune options"))
    method = opts["method"] = canonical_method(opts["method"])
    checkpoint, data, out = Path(checkpoint), Path(data), Path(out)
    if opts["lr"] is None:
        opts["lr"] = METHOD_LR[method]
    resolve_objective(opts)
    _check_multimodal(method, opts)
    if opts["max_steps"] is None and opts["epochs"] is None:
        raise ConfigError("say how long to train: max_steps or epochs", hint="e.g. --max-steps 200 or --epochs 1")
    _preflight(checkpoint, data, out, opts, resume)
    # one writer per run directory, for the whole run; an earlier run is refused unless resumed or overwritten
    with claim_run_dir(out, resume=resume, overwrite=bool(opts["overwrite"])):
        result = _finetune(checkpoint, data, out, opts, config=config, resume=resume, progress=progress,
                           register=register, callbacks=callbacks)
    result["options"] = opts
    return result


def _check_multimodal(method: str, opts: dict) -> None:
    """The multimodal methods need an encoder, and neither packing nor another objective applies to them
    (their options given to other methods are refused by options.check_method_options)."""
    from ..peft import MULTIMODAL_METHODS

    if method not in MULTIMODAL_METHODS:
        return
    if not opts.get("vision"):
        raise ConfigError(f"--method {method} needs --vision ENCODER_CKPT (a vision encoder checkpoint)",
                          hint="make one with `openseason vision convert HF_DIR OUT` or `openseason vision train-clip`")
    if method == "flamingo" and opts.get("train_on", "assistant") != "assistant":
        raise ConfigError("--train-on does not apply to --method flamingo: its labels follow OpenFlamingo's "
                          "training step (every token of a chunk from <image> to <|endofchunk|>)")
    if opts.get("packing"):
        raise ConfigError(f"--packing does not apply to --method {method} (rows with images are padded, not packed)")
    if opts.get("objective", "sft") != "sft":
        raise ConfigError(f"--method {method} trains with --objective sft only")


def _preflight(checkpoint: Path, data: Path, out: Path, opts: dict, resume) -> None:
    """Every check that needs no training: before the run directory is touched (train/preflight.py)."""
    from ..checkpoint.full import load_config
    from ..errors import CheckpointError, DataError
    from .preflight import check_length, check_schedule
    from .settings import check_allow_changes

    check_schedule(opts["lr"], opts["min_lr"])
    check_allow_changes(bool(opts["allow_changes"]), resume)
    opts["device"] = opts["device"] or ("cuda" if torch.cuda.is_available() else "cpu")  # checked by resolve
    if not data.exists():
        raise DataError("no such prepared directory", where=str(data),
                        hint="prepare one with `openseason data prepare SOURCE FILE --out DIR`")
    if not checkpoint.is_dir():
        raise CheckpointError("checkpoint directory not found", where=str(checkpoint))
    model_config = load_config(checkpoint)
    check_length("max_length", opts["max_length"], model_config.block_size, str(checkpoint))


def train_config(opts: dict, progress: bool) -> TrainConfig:
    """The loop's settings from finetune options (every objective)."""
    return TrainConfig(
        max_steps=opts["max_steps"], epochs=opts["epochs"], max_time=opts["max_time"],
        micro_batch_size=int(opts["micro_batch_size"]), grad_accum=int(opts["grad_accum"]), lr=float(opts["lr"]),
        min_lr=opts["min_lr"], warmup_steps=int(opts["warmup_steps"] or 0), weight_decay=float(opts["weight_decay"]),
        grad_clip=opts["grad_clip"], save_every=opts["save_every"], keep_last=opts["keep_last"],
        keep_optimizer=bool(opts["keep_optimizer"]), eval_every=opts["eval_every"], seed=int(opts["seed"]),
        device=opts["device"], precision=opts["precision"],
        gradient_checkpointing=bool(opts["gradient_checkpointing"]), compile=bool(opts["compile"]),
        progress=progress)


def run_settings(opts: dict, tcfg: TrainConfig, max_steps: int, max_length: int, style: str, data: Path) -> dict:
    """What a resume of this run must not change (train/settings.py)."""
    from .options import OBJECTIVE_DEFAULTS
    from .settings import data_fingerprint

    method = opts["method"]
    shape = {"lora": ("lora_rank", "lora_alpha", "lora_dropout", "lora_targets"),
             "adapter": ("adapter_prompt_length", "adapter_layers"),
             "adapter-v2": ("adapter_prompt_length", "adapter_layers"),
             "adapter-v2-mm": ("adapter_prompt_length", "adapter_layers", "mm_mode", "early_layers", "visual_blocks"),
             "flamingo": ("xattn_every", "perceiver_depth", "num_latents")}.get(method, ())
    objective = opts.get("objective") or "sft"
    return {"method": method, "objective": objective, **{k: opts[k] for k in shape},
            "lr": tcfg.lr, "min_lr": tcfg.min_lr if tcfg.min_lr is not None else tcfg.lr / 10,
            "warmup_steps": tcfg.warmup_steps, "max_steps": max_steps, "weight_decay": tcfg.weight_decay,
            "grad_clip": tcfg.grad_clip, "batch": tcfg.micro_batch_size * tcfg.grad_accum,
            "max_length": max_length, "packing": bool(opts["packing"]), "train_on": opts["train_on"],
            "prompt_style": style, "seed": tcfg.seed,
            **{k: opts.get(k) for k in OBJECTIVE_DEFAULTS[objective]}, "data": data_fingerprint(data)}


def run_summary_of(model, opts: dict, tcfg: TrainConfig, max_steps: int, max_length: int, data_report: dict,
                   train_rows: int, val_rows: int, unit: str = "examples", rows_per_item: int = 1) -> dict:
    """The preflight summary of a finetuning run (printed before step 1, OUT/preflight.json).
    `rows_per_item`: sequences one item makes (a preference pair 2, KTO 3, a GRPO prompt its completions)."""
    from .preflight import data_rows, parameter_counts, run_summary

    precision = tcfg.precision or ("bf16" if str(tcfg.device).startswith("cuda") else "fp32")
    return run_summary(
        parameters=parameter_counts(model), model_name=model.config.name, method=opts["method"], objective=opts.get("objective") or "sft",
        device=str(tcfg.device), precision=precision, data=data_rows(data_report, train_rows, val_rows),
        micro_batch_size=tcfg.micro_batch_size, grad_accum=tcfg.grad_accum, world_size=1, max_steps=max_steps,
        max_length=max_length, per_step_unit=unit,
        tokens_per_step=tcfg.micro_batch_size * tcfg.grad_accum * max_length * rows_per_item, tokens_exact=False,
        lr=tcfg.lr,
        warmup_steps=tcfg.warmup_steps, min_lr=tcfg.min_lr if tcfg.min_lr is not None else tcfg.lr / 10,
        epoch_size=train_rows)


def _finetune(checkpoint: Path, data: Path, out: Path, opts: dict, *, config, resume, progress, register,
              callbacks) -> dict:
    from ..checkpoint import is_peft_checkpoint, load_model, read_run_card, root_base
    from ..data.sft import SFTData, load_conversations, prepared_style, style_messages
    from ..generation import SamplingParams, generate_ids
    from ..prompts import encode_chat
    from ..peft import apply, count_trainable, is_peft
    from ..tokenizer import Tokenizer
    from .data import SFTBatches, fixed_batches

    if opts.get("objective", "sft") != "sft":
        from .objective_run import finetune_objective

        return finetune_objective(checkpoint, data, out, opts, config=config, resume=resume, progress=progress,
                                  register=register, callbacks=callbacks)
    method = opts["method"]
    device = opts["device"] or ("cuda" if torch.cuda.is_available() else "cpu")
    dtype = torch.bfloat16 if (device.startswith("cuda") and method != "full") else None
    torch.manual_seed(int(opts["seed"]))
    model = load_model(checkpoint, device=device, dtype=dtype)
    tokenizer = Tokenizer.from_dir(checkpoint, model.config)
    base_ref = root_base(checkpoint) if is_peft_checkpoint(checkpoint) else checkpoint
    tokens = {}
    if method == "flamingo":   # <image> and <|endofchunk|> join the vocabulary; only their rows train
        from ..data.interleaved import add_media_tokens

        known = {t for t in ("<image>", "<|endofchunk|>") if tokenizer.token_to_id(t) is not None}
        media_id, eoc_id = add_media_tokens(tokenizer)
        new = [i for t, i in (("<image>", media_id), ("<|endofchunk|>", eoc_id)) if t not in known]
        tokens = {"media_token_id": media_id, "token_ids": [media_id, eoc_id], "new_token_ids": new,
                  "vocab_size": tokenizer.vocab_size}
    apply(model, method, **method_options(method, opts), **tokens)
    if dtype is not None:  # frozen base in bf16, trained parameters and optimizer state in fp32
        for p in model.parameters():
            if p.requires_grad:
                p.data = p.data.float()
    base_card = read_run_card(checkpoint)
    media = getattr(model, "media", None)

    style = (opts["prompt_style"] or METHOD_STYLE.get(method) or prepared_style(data)
             or base_card.get("prompt_style") or TRAIN_DEFAULT_STYLE)
    max_length = int(opts["max_length"] or min(model.config.block_size, 2048))
    records = load_conversations(data)  # checked against its report.json when it has one
    sft = SFTData(records, tokenizer, style, max_length, train_on=opts["train_on"],
                  image_tokens=media.image_tokens if media is not None else None,
                  image_token_id=getattr(model, "media_token_id", 0))
    if len(sft) == 0:
        raise OpenseasonError("no usable training examples", where=str(data), hint=f"tokenization report: {sft.report}")
    order = np.random.default_rng(int(opts["seed"])).permutation(len(sft))
    val_size = opts["val_size"]
    if val_size is None:
        val_size = min(64, len(sft) // 20)
    val_idx, train_idx = order[:val_size], order[val_size:]
    if len(train_idx) == 0:
        raise ConfigError(f"val_size={val_size} leaves no training examples (only {len(sft)})")
    train_ex = [sft[int(i)] for i in train_idx]
    val_ex = [sft[int(i)] for i in val_idx]
    if method == "flamingo":   # labels as OpenFlamingo's training step masks them
        from ..data.interleaved import with_flamingo_labels

        train_ex = [with_flamingo_labels(ex, media_id, eoc_id) for ex in train_ex]
        val_ex = [with_flamingo_labels(ex, media_id, eoc_id) for ex in val_ex]
    pad_id = tokenizer.pad_id if tokenizer.pad_id is not None else 0
    objective = None
    if media is not None:
        from .data import MultimodalBatches
        from .objectives.multimodal import MultimodalObjective

        mbs = int(opts["micro_batch_size"])
        batches = MultimodalBatches(train_ex, mbs, pad_id, max_length, media.preprocess, data, seed=int(opts["seed"]))
        val_batches = (MultimodalBatches(val_ex, mbs, pad_id, max_length, media.preprocess, data)
                       .fixed(list(range(len(val_ex)))) if val_ex else None)
        objective = MultimodalObjective()
    else:
        batches = SFTBatches(train_ex, int(opts["micro_batch_size"]), pad_id, max_length, seed=int(opts["seed"]),
                             packing=bool(opts["packing"]))
        val_batches = fixed_batches(val_ex, int(opts["micro_batch_size"]), pad_id, max_length) if val_ex else None

    sample_record = records[int(val_idx[0])] if len(val_idx) else records[0]
    sample_messages = [m for m in style_messages(sample_record)]
    while sample_messages and sample_messages[-1].get("role") == "assistant":
        sample_messages = sample_messages[:-1]
    from ..prompts import message_images

    text_only = not message_images(sample_messages)   # the training sample is a text-only generation
    sample_prompt = encode_chat(sample_messages, tokenizer, style) if sample_messages and text_only else None

    def sample_fn(m) -> str:
        if not sample_prompt:
            return ""
        prompt = sample_prompt[-(m.config.block_size // 2):]
        new_tokens = min(48, m.config.block_size - len(prompt))
        out = generate_ids(m, [prompt], SamplingParams(max_new_tokens=new_tokens), tokenizer=tokenizer)[0]
        return f"{sample_messages[-1]['content'][:200]}\n>>> {out.text}"

    tcfg = train_config(opts, progress)
    max_steps = resolve_max_steps(tcfg, batches)
    from ..prompts import get_style
    run_card = {
        "title": f"{method} finetune of {checkpoint.name}", "method": method,
        "method_options": method_options(method, opts), "base_checkpoint": str(base_ref.resolve()),
        "base_model": model.config.name, "prompt_style": get_style(style).to_dict(),
        "options": {k: v for k, v in opts.items()}, "recipe": str(config) if config else None,
        "data": {**_data_lineage(data), "tokenization": sft.report, "train_examples": len(train_ex),
                 "val_examples": len(val_ex)},
        "lineage": {"base": base_card.get("lineage"), "base_data": base_card.get("data")},
        "trainable_parameters": count_trainable(model), "peft": is_peft(model),
    }
    if media is not None:   # (the base's fingerprint is in peft.json, checked when the checkpoint loads)
        from ..peft.media import tower_options

        run_card["multimodal"] = {**tower_options(media.tower), "image_tokens": media.image_tokens}
    result = train(model, batches, tcfg, out, val_batches=val_batches, resume=resume,
                   base_checkpoint=base_ref, tokenizer=tokenizer, run_card=run_card,
                   sample_fn=sample_fn if opts["eval_every"] and sample_prompt else None, callbacks=callbacks,
                   objective=objective, settings=run_settings(opts, tcfg, max_steps, max_length, style, data),
                   allow_changes=bool(opts["allow_changes"]),
                   summary=run_summary_of(model, opts, tcfg, max_steps, max_length, sft.report, len(train_ex),
                                          len(val_ex)))
    if register and result["stopped"] != "already_done":
        register_run(result["final"], base_model=str(base_ref), datasets=[str(data)], method=method,
                     seconds=result["seconds"], tokens=result["tokens"], device=device)
    return result


def merge_checkpoint(checkpoint: str | Path, out: str | Path) -> Path:
    """Load a LoRA (or full) checkpoint, fold LoRA into the weights and write a full checkpoint."""
    from ..checkpoint import load_model, read_run_card, save_checkpoint
    from ..peft import merge
    from ..tokenizer import Tokenizer

    checkpoint = Path(checkpoint)
    model = load_model(checkpoint)
    methods = list(getattr(model, "peft_methods", []))
    merge(model)
    tokenizer = Tokenizer.from_dir(checkpoint, model.config)
    card = read_run_card(checkpoint)
    card.pop("created", None)
    card.pop("kind", None)
    return save_checkpoint(out, model, tokenizer=tokenizer,
                           run_card={**card, "merged_from": str(checkpoint.resolve()), "merged_methods": methods,
                                     "merged_at": time.strftime("%Y-%m-%dT%H:%M:%S")})

