"""Pretraining the Pythia way, through the one training loop.

    openseason pretrain --config pythia-70m --data TOKENS --out RUN
    torchrun --nproc-per-node 8 -m openseason pretrain --config pythia-1b --data TOKENS --out RUN

Defaults follow the Pythia recipe (arXiv 2304.01373, the GPT-NeoX configs it released): Adam with
betas 0.9/0.95 and eps 1e-8, weight decay 0.1, gradient clipping at 1.0, linear warmup over 1% of
the steps, cosine decay to 10% of the peak learning rate, and Pythia's checkpoint schedule on request
(step 0, 1, 2, 4, ..., 512, then every 1000). The data is a token directory from `data tokenize`,
read in a fixed order that does not depend on the number of processes (data/shards.py).
"""
from __future__ import annotations

import hashlib
import math
import time
from pathlib import Path
from typing import Any, Optional

import torch

from ..config import Config
from ..data.shards import PretrainLoader
from ..errors import DataError
from .loop import TrainConfig, register_run, train
from .options import PretrainOptions, resolve
from .preflight import parameter_counts
from .outdir import claim_run_dir

# Peak learning rates of the released Pythia models (their GPT-NeoX configs).
PYTHIA_LR = {"14m": 1e-3, "31m": 1e-3, "70m": 1e-3, "160m": 6e-4, "410m": 3e-4, "1b": 3e-4, "1.4b": 2e-4,
             "2.8b": 1.6e-4, "6.9b": 1.2e-4, "12b": 1.2e-4}
PYTHIA_RECIPE = {"betas": (0.9, 0.95), "weight_decay": 0.1, "grad_clip": 1.0, "warmup_fraction": 0.01,
                 "min_lr_ratio": 0.1}
# Dense bf16 peak FLOP/s by GPU name fragment (vendor data sheets), for MFU.
PEAK_BF16_FLOPS = {"H200": 989e12, "H100": 989e12, "A100": 312e12, "L40S": 362e12, "A10G": 125e12,
                   "RTX 4090": 165e12, "RTX 3090": 71e12}


def pythia_checkpoint_steps(max_steps: int, every: int = 1000) -> list[int]:
    """Step 0, then 1, 2, 4, ..., 512 (log-spaced), then every `every` steps, up to max_steps."""
    steps = [0] + [2 ** i for i in range(10)] + list(range(every, max_steps + 1, every))
    return sorted({s for s in steps if s <= max_steps})


def flops_per_token(config: Config, seq_len: int) -> float:
    """Training FLOPs per token: 6N for the weight matmuls (N without the input embedding, a lookup)
    plus 12 L H Q T for attention scores and values (PaLM's appendix B)."""
    from ..model import count_parameters

    n = count_parameters(config) - config.padded_vocab_size * config.n_embd
    return 6 * n + 12 * config.n_layer * config.n_head * config.head_size * seq_len


def peak_flops(device: torch.device) -> Optional[float]:
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((v for k, v in PEAK_BF16_FLOPS.items() if k in name), None)


class PretrainBatches:
    """The loop's data protocol over PretrainLoader: micro-batches of this rank's share of each step."""

    def __init__(self, loader: PretrainLoader, micro_batch_size: int, grad_accum: int):
        self.loader, self.micro_batch_size, self.grad_accum = loader, micro_batch_size, grad_accum
        self.step, self.micro = 0, 0
        self._cached: tuple[int, dict] | None = None

    @property
    def epoch(self) -> float:
        return round(self.step * self.loader.global_batch / self.loader.num_samples, 4)

    def next_batch(self) -> dict:
        if self._cached is None or self._cached[0] != self.step:
            self._cached = (self.step, self.loader.batch(self.step))
        rows = slice(self.micro * self.micro_batch_size, (self.micro + 1) * self.micro_batch_size)
        batch = {k: v[rows] for k, v in self._cached[1].items()}
        self.micro += 1
        if self.micro == self.grad_accum:
            self.step, self.micro = self.step + 1, 0
        return batch

    def state_dict(self) -> dict:
        return {"step": self.step, "micro": self.micro}

    def load_state_dict(self, state: dict) -> None:
        self.step, self.micro = int(state["step"]), int(state["micro"])


def _resolve_config(config: str | Path) -> tuple[Config, Optional[Path]]:
    """A named config, a config.json, or a checkpoint directory (continue pretraining its weights)."""
    path = Path(config)
    if path.is_dir():
        return Config.from_file(path / "config.json"), path
    if path.suffix == ".json" and path.exists():
        return Config.from_file(path), None
    return Config.from_name(str(config)), None


def pretrain(config: str | Path, data: str | Path, out: str | Path, *, resume: Optional[str] = None,
             progress: bool = True, register: bool = True, overrides: Optional[dict] = None,
             **options: Any) -> dict[str, Any]:
    """Pretrain a model from a named config (or continue a checkpoint) on a token directory.

    `options` are the fields of `train.options.PretrainOptions` (seq_len, micro_batch_size,
    grad_accum, max_steps, lr, ...; unknown names are an error). `overrides` change fields of the
    model Config. The global batch is micro_batch_size x grad_accum x processes samples of
    seq_len + 1 tokens; step i reads samples [B*i, B*(i+1)) of the stream. Checkpoints:
    OUT/step-XXXXXX and OUT/final, each a full safetensors checkpoint plus DCP state resumable on
    any number of processes.
    """
    from .distributed import DistributedRun
    from .preflight import check_length, check_schedule
    from .settings import check_allow_changes

    o = resolve(PretrainOptions, options, what="pretrain options")  # ranges and the device
    check_schedule(o.lr, o.min_lr)
    check_allow_changes(o.allow_changes, resume)
    seq_len, micro_batch_size, grad_accum, max_steps = o.seq_len, o.micro_batch_size, o.grad_accum, o.max_steps
    lr, min_lr, warmup_steps, weight_decay, grad_clip = o.lr, o.min_lr, o.warmup_steps, o.weight_decay, o.grad_clip
    seed, precision = o.seed, o.precision
    model_config, init_from = _resolve_config(config)
    if overrides:
        model_config = Config.from_dict({**model_config.to_dict(), **overrides})
    check_length("seq_len", seq_len, model_config.block_size, f"config {model_config.name!r}")
    seq_len = seq_len or model_config.block_size
    run = DistributedRun.from_environment(o.device)
    try:
        # the data is checked before the run directory is touched
        global_batch = micro_batch_size * grad_accum * run.world_size
        loader = PretrainLoader(data, seq_len, global_batch, rank=run.rank, world_size=run.world_size)
        manifest = loader.stream.manifest
        if manifest["vocab_size"] > model_config.padded_vocab_size:
            raise DataError(f"the tokenizer has {manifest['vocab_size']} tokens but the model's embedding has "
                            f"{model_config.padded_vocab_size} rows", where=str(data),
                            hint="tokenize with the model's own tokenizer, or pick a config with a larger vocabulary")
        # one writer per run directory (rank 0 holds the lock for the job); an earlier run is refused
        # unless resumed or overwritten
        with claim_run_dir(out, resume=resume, overwrite=o.overwrite, distributed=run):
            size = model_config.name.split("pythia-")[-1].replace("-deduped", "")
            peak_lr = lr or PYTHIA_LR.get(size, 3e-4)
            on_cuda = run.device.type == "cuda"
            precision = precision or ("bf16" if on_cuda else "fp32")
            torch.manual_seed(seed)
            model = _build_model(model_config, init_from)
            summary_counts = parameter_counts(model)  # before sharding: whole tensors
            model = run.shard(model, bf16_params=(precision == "bf16" and run.active))
            tokenizer_dir = _tokenizer_dir(manifest)
            save_at = tuple(pythia_checkpoint_steps(max_steps)) if o.checkpoint_schedule == "pythia" else ()
            train_config = TrainConfig(
                max_steps=max_steps, micro_batch_size=micro_batch_size, grad_accum=grad_accum, lr=peak_lr,
                min_lr=min_lr if min_lr is not None else peak_lr * PYTHIA_RECIPE["min_lr_ratio"],
                warmup_steps=(warmup_steps if warmup_steps is not None
                              else math.ceil(PYTHIA_RECIPE["warmup_fraction"] * max_steps)),
                weight_decay=PYTHIA_RECIPE["weight_decay"] if weight_decay is None else weight_decay,
                betas=PYTHIA_RECIPE["betas"], grad_clip=PYTHIA_RECIPE["grad_clip"] if grad_clip is None else grad_clip,
                save_every=o.save_every, save_at=save_at, keep_last=o.keep_last, keep_optimizer=o.keep_optimizer,
                seed=seed, device=str(run.device), precision=precision,
                gradient_checkpointing=o.gradient_checkpointing, compile=o.compile, max_time=o.max_time,
                progress=progress,
                flops_per_token=flops_per_token(model_config, seq_len), peak_flops=peak_flops(run.device))
            card = {"title": f"pretrain {model_config.name}", "method": "pretraining", "prompt_style": None,
                    "recipe": {"name": "pythia", **PYTHIA_RECIPE, "lr": peak_lr, "seq_len": seq_len,
                               "global_batch": global_batch, "world_size": run.world_size},
                    "lineage": {"base_model": str(init_from) if init_from else None,
                                "datasets": [s["path"] for s in manifest["sources"]],
                                "tokens_dir": str(Path(data).resolve()), "tokens_manifest": {
                                    "total_tokens": manifest["total_tokens"], "documents": manifest["documents"],
                                    "shards_sha256": [s["sha256"] for s in manifest["shards"]]}}}
            settings = {"lr": train_config.lr, "min_lr": train_config.min_lr, "warmup_steps": train_config.warmup_steps,
                        "max_steps": max_steps, "weight_decay": train_config.weight_decay,
                        "grad_clip": train_config.grad_clip, "batch": global_batch, "seq_len": seq_len,
                        "method": "pretraining", "objective": "next-token", "seed": seed,
                        "data": _stream_fingerprint(manifest)}
            summary = _summary(model_config, summary_counts, train_config, loader, manifest, run, global_batch)
            batches = PretrainBatches(loader, micro_batch_size, grad_accum)
            t0 = time.time()
            result = train(model, batches, train_config, out, resume=resume, tokenizer_dir=tokenizer_dir,
                           run_card=card, distributed=run, settings=settings, allow_changes=o.allow_changes,
                           summary=summary)
            if register and run.is_main and result["stopped"] != "already_done":
                register_run(result["final"], base_model=card["lineage"]["base_model"],
                             datasets=card["lineage"]["datasets"], method="pretraining", seconds=time.time() - t0,
                             tokens=result["tokens"], device=run.device, world_size=run.world_size)
            return {**result, "main_process": run.is_main, "world_size": run.world_size}
    finally:
        run.close()


def _stream_fingerprint(manifest: dict) -> str:
    """sha256 of the token stream: its shards' own sha256 in order (from the manifest)."""
    digest = hashlib.sha256()
    for shard in manifest["shards"]:
        digest.update(str(shard["sha256"]).encode() + b"\0")
    return digest.hexdigest()


def _summary(model_config: Config, counts: dict, tcfg: TrainConfig, loader: PretrainLoader, manifest: dict, run,
             global_batch: int) -> dict:
    """The preflight summary of a pretraining run: samples, epochs, and whether the stream wraps."""
    from .preflight import run_summary

    seq_len = loader.seq_len
    samples_needed = tcfg.max_steps * global_batch
    wraps = samples_needed > loader.num_samples
    return run_summary(
        parameters=counts, model_name=model_config.name, method="pretraining", objective="next-token",
        device=str(run.device), precision=tcfg.precision, micro_batch_size=tcfg.micro_batch_size,
        grad_accum=tcfg.grad_accum, world_size=run.world_size, max_steps=tcfg.max_steps, max_length=seq_len,
        data={"tokens": int(manifest["total_tokens"]), "documents": int(manifest["documents"]),
              "samples": loader.num_samples},
        per_step_unit="samples", tokens_per_step=global_batch * seq_len, tokens_exact=True, lr=tcfg.lr,
        warmup_steps=tcfg.warmup_steps, min_lr=tcfg.min_lr, epoch_size=loader.num_samples,
        extra={"wraps": wraps,
               "wraps_at_step": (loader.num_samples // global_batch + 1) if wraps else None})


def _build_model(config: Config, init_from: Optional[Path]):
    from ..model import GPT

    if init_from is not None:
        from ..checkpoint import load_model

        return load_model(init_from).train()
    # Built whole on the CPU with the run's seed, then sharded: every process count starts from the
    # same weights (meta-device init with per-shard random streams would not).
    model = GPT(config)
    model.init_weights()
    return model


def _tokenizer_dir(manifest: dict) -> Optional[Path]:
    path = Path(manifest["tokenizer"]["path"])
    path = path if path.is_dir() else path.parent
    return path if (path / "tokenizer.json").exists() else None
