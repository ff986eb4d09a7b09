"""lm-evaluation-harness through our own forward pass.

`OpenseasonLM` implements the harness's three request types on an openseason model (full or adapter
checkpoint, no conversion to transformers): loglikelihood, loglikelihood_rolling and generate_until.
Tokenization of (context, continuation) pairs follows the harness's HF model class (trailing spaces
of the context move to the continuation; the continuation is the whole encoding minus the context's;
an empty context is the prefix token), so the same model scores the same on either.

Importing this module registers "openseason" in lm-eval's model registry next to lm-eval's own models
(it loads lm-eval's lazy model table first: lm-eval only fills an empty registry, so registering into
an empty one would hide "hf" and the rest). lm-eval versions with plugin discovery find the class
through the `lm_eval.models` entry point in pyproject.toml; `openseason-lm-eval` (harness_cli.py) is
lm-eval's own command line with the model registered, for versions without it.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import torch

from ..errors import OpenseasonError
from .scoring import pad_right, score_targets

try:
    import lm_eval.models  # noqa: F401  (lm-eval's own models, registered lazily: see the docstring)
    from lm_eval.api.model import LM as _HarnessLM
    from lm_eval.api.registry import register_model as _register_model
except ImportError:  # the harness is optional: only `evaluate harness` needs it
    _HarnessLM = object

    def _register_model(*_names):
        return lambda cls: cls


@_register_model("openseason")
class OpenseasonLM(_HarnessLM):
    """An openseason checkpoint as an lm-eval LM (`lm_eval --model openseason --model_args pretrained=CKPT`;
    `path=CKPT` is the same)."""

    def __init__(self, llm=None, path: Optional[str] = None, batch_size: int | str = 8,
                 max_length: Optional[int] = None, max_gen_toks: int = 256, device: Optional[str] = None,
                 pretrained: Optional[str] = None, max_batch_size: Optional[int] = None):
        super().__init__()
        if pretrained is not None and path is not None and str(pretrained) != str(path):
            raise OpenseasonError(f"pretrained={pretrained} and path={path} name two checkpoints; give one")
        path = path if path is not None else pretrained
        if max_batch_size is not None:  # lm-eval's auto batch search, which we do not implement
            raise OpenseasonError("max_batch_size does not apply to the openseason model",
                                  hint="give a fixed --batch_size N")
        if not str(batch_size).isdigit() or int(batch_size) < 1:
            raise OpenseasonError(f"batch_size must be a whole number >= 1, not {batch_size!r}",
                                  hint="lm-eval's batch_size=auto is not supported by the openseason model")
        if llm is None:
            if path is None:
                raise OpenseasonError("OpenseasonLM needs a loaded LLM or pretrained=CKPT")
            from ..generation.llm import LLM

            llm = LLM.load(path, device=device)
        self.llm = llm
        self.model = llm.model
        self.tok = llm.tokenizer
        self._batch_size = int(batch_size)
        self._max_length = int(max_length or llm.config.block_size)
        self.max_gen_toks = int(max_gen_toks)

    @classmethod
    def create_from_arg_string(cls, arg_string: str, additional_config: Optional[dict] = None):
        args = dict(kv.split("=", 1) for kv in arg_string.split(",") if kv)
        return cls.create_from_arg_obj(args, additional_config)

    @classmethod
    def create_from_arg_obj(cls, arg_dict: dict, additional_config: Optional[dict] = None):
        import inspect

        args = {**arg_dict, **{k: v for k, v in (additional_config or {}).items() if v is not None}}
        known = set(inspect.signature(cls.__init__).parameters) - {"self", "llm"}
        unknown = sorted(set(args) - known)
        if unknown:  # lm-eval passes model_args straight through: a typo must not be ignored
            raise OpenseasonError(f"unknown model_args for the openseason model: {', '.join(unknown)}",
                                  hint=f"known: {', '.join(sorted(known))}")
        return cls(**args)

    # -- tokenization as the harness's HF model does it -------------------------------------------
    @property
    def prefix_token_id(self) -> int:
        if self.tok.bos_id is not None:
            return self.tok.bos_id
        return self.tok.eos_id

    @property
    def eot_token_id(self) -> int:
        return self.tok.eos_id

    @property
    def max_length(self) -> int:
        return self._max_length

    def tok_encode(self, text: str) -> list[int]:
        return self.tok.encode(text, bos=False)

    def encode_pair(self, context: str, continuation: str) -> tuple[list[int], list[int]]:
        n_spaces = len(context) - len(context.rstrip())
        if n_spaces:
            continuation = context[-n_spaces:] + continuation
            context = context[:-n_spaces]
        whole = self.tok_encode(context + continuation)
        context_enc = self.tok_encode(context)
        return context_enc, whole[len(context_enc):]

    # -- requests -------------------------------------------------------------------------------------
    def loglikelihood(self, requests, disable_tqdm: bool = False) -> list[tuple[float, bool]]:
        pairs = []
        for request in requests:
            context, continuation = request.args
            if context == "":
                pairs.append(([self.prefix_token_id], self.tok_encode(continuation)))
            else:
                pairs.append(self.encode_pair(context, continuation))
        return self.loglikelihood_tokens(pairs)

    def loglikelihood_tokens(self, pairs: list[tuple[list[int], list[int]]]) -> list[tuple[float, bool]]:
        """(sum log p(continuation | context), continuation is the greedy decode) for each pair."""
        device = next(self.model.parameters()).device
        sequences, n_targets = [], []
        for context, continuation in pairs:
            if not continuation:
                raise OpenseasonError("empty continuation in a loglikelihood request")
            whole = (context + continuation)[-(self.max_length + 1):]
            sequences.append(whole)
            n_targets.append(min(len(continuation), len(whole) - 1))
        order = sorted(range(len(pairs)), key=lambda i: -len(sequences[i]))
        results: list[tuple[float, bool]] = [(0.0, False)] * len(pairs)
        pad = self.tok.pad_id if self.tok.pad_id is not None else 0
        for start in range(0, len(order), self._batch_size):
            idx = order[start:start + self._batch_size]
            ids = pad_right([sequences[i] for i in idx], pad).to(device)
            mask = torch.zeros_like(ids, dtype=torch.bool)
            for row, i in enumerate(idx):
                end = len(sequences[i])
                mask[row, end - n_targets[i]:end] = True
            scored = score_targets(self.model, ids, mask)
            sums = torch.zeros(len(idx), dtype=torch.float64).index_add_(0, scored.rows.cpu(), scored.logprobs.cpu())
            greedy = torch.ones(len(idx), dtype=torch.bool)
            greedy[scored.rows.cpu()[~scored.is_greedy.cpu()]] = False
            for row, i in enumerate(idx):
                results[i] = (float(sums[row]), bool(greedy[row]))
        return results

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
        from lm_eval import utils

        out = []
        for request in requests:
            (text,) = request.args
            windows = [utils.make_disjoint_window(w) for w in utils.get_rolling_token_windows(
                token_list=self.tok_encode(text), prefix_token=self.prefix_token_id,
                max_seq_len=self.max_length, context_len=1)]
            scores = self.loglikelihood_tokens([(list(c), list(t)) for c, t in windows])
            out.append(sum(s for s, _ in scores))
        return out

    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        out = []
        for request in requests:
            context, gen_kwargs = request.args
            kwargs = dict(gen_kwargs or {})
            until = kwargs.pop("until", None) or []
            until = [until] if isinstance(until, str) else list(until)
            eos_text = self.tok.decode([self.eot_token_id], skip_special_tokens=False)
            if eos_text and eos_text not in until:
                until.append(eos_text)
            max_new = int(kwargs.pop("max_gen_toks", self.max_gen_toks))
            temperature = float(kwargs.pop("temperature", 0.0)) if kwargs.pop("do_sample", False) else 0.0
            ids = self.tok.encode(context)[-(self.max_length - max_new):]
            text = self.llm.generate(ids, max_new_tokens=max_new, temperature=temperature, stop=until)
            for stop in until:  # the harness expects the text cut before the first stop sequence
                text = text.split(stop)[0]
            out.append(text)
        return out


def run_harness(path: str | Path, tasks: list[str], *, include_path: Optional[str] = None,
                num_fewshot: Optional[int] = None, limit: Optional[float] = None, batch_size: int = 8,
                device: Optional[str] = None, llm=None) -> dict:
    """Run lm-eval tasks on a checkpoint through OpenseasonLM; returns the harness's results dict."""
    try:
        import lm_eval
        from lm_eval.tasks import TaskManager
    except ImportError:
        raise OpenseasonError("lm-evaluation-harness is not installed",
                              hint="pip install lm_eval (it is part of openseason's test extra)") from None
    from .harness_env import harness_environment, hub_error, refuse_builtin_tasks_offline

    # Indexing the harness's ~15k built-in task files takes tens of seconds: with local tasks, look
    # there first and only index the built-ins when a task is not found locally.
    manager = TaskManager(include_path=include_path, include_defaults=False) if include_path else None
    if manager is None or any(t not in manager.all_tasks for t in tasks):
        refuse_builtin_tasks_offline([t for t in tasks if manager is None or t not in manager.all_tasks])
        manager = TaskManager(include_path=include_path)
    unknown = [t for t in tasks if t not in manager.all_tasks]
    if unknown:
        raise OpenseasonError(f"unknown harness task(s) {unknown}",
                              hint="pass --include-path DIR for local task YAML files")
    # the model last: a wrong task name or an unreachable dataset is reported before a large model loads
    lm = OpenseasonLM(llm=llm, path=None if llm else str(path), batch_size=batch_size, device=device)
    with harness_environment(hub_needed=_needs_hub(manager, tasks)) as offline:
        try:
            results = lm_eval.simple_evaluate(model=lm, tasks=tasks, num_fewshot=num_fewshot, limit=limit,
                                              task_manager=manager, log_samples=False, bootstrap_iters=0)
        except ConnectionError as exc:  # datasets' "Couldn't reach 'X' on the Hub" (and offline mode's)
            raise hub_error(exc, tasks, offline) from None
    return {"results": results["results"], "versions": results.get("versions", {}),
            "n-shot": results.get("n-shot", {}), "config": {"tasks": tasks, "limit": limit}}


# dataset_path values that `datasets` builds from local files, never from the Hub
_LOCAL_BUILDERS = {"json", "csv", "parquet", "text", "arrow"}


def _needs_hub(manager, tasks: list[str]) -> bool:
    """Whether any task (or group: assumed so) reads a dataset from the Hub rather than local files."""
    for name in tasks:
        entry = manager.task_index.get(name)
        cfg = getattr(entry, "cfg", None) or {}
        path = cfg.get("dataset_path")
        if not isinstance(path, str) or not (path in _LOCAL_BUILDERS or Path(path).exists()):
            return True
    return False
