"""Distilling step by step (Hsieh et al. 2023, arXiv 2305.02301), training side.

Every example (input, label, rationale) becomes two rows of the same micro-batch:

    "predict: <input>"  ->  label        task 0, the label task (the only one used at inference)
    "explain: <input>"  ->  rationale    task 1, the rationale task

and the step's loss is the paper's

    loss = alpha * (label token loss sum / label target tokens)
         + (1 - alpha) * (rationale token loss sum / rationale target tokens)

each task's loss a mean over ITS OWN target tokens of the whole optimizer step (the released code
computes `alpha * pred_outputs.loss + (1 - alpha) * expl_outputs.loss`, two T5 losses each a mean
over its own tokens). Through the one loop this is two terms with two normalizers, so gradient
accumulation stays exact. With alpha = 1 the rationale rows are left out of the batches entirely
(label-only finetuning on the same examples, same prefix, same order).

Data: DIR/rationales.jsonl as written by `openseason synth rationales` ({"input", "label",
"rationale"} per row), or any JSONL file of such rows. The prefixes are options (`--label-prefix`,
`--rationale-prefix`; the paper's "predict: " / "explain: " by default).
"""
from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F

from ...data.sft import IGNORE, collate, tokenize_conversation
from ...errors import DataError, OpenseasonError
from ...errors import where
from ...fileio import iter_jsonl
from ..data import SampledBatches

LABEL, RATIONALE = 0, 1
DEFAULT_LABEL_PREFIX, DEFAULT_RATIONALE_PREFIX = "predict: ", "explain: "


def rationales_file(data: Path) -> Path:
    data = Path(data)
    file = data / "rationales.jsonl" if data.is_dir() else data
    if not file.exists():
        raise DataError("no rationales.jsonl here", where=str(data),
                        hint="write one with `openseason synth rationales DATA --out DIR` (or rows "
                             '{"input", "label", "rationale"} in a .jsonl file)')
    return file


def load_rationale_rows(data: Path) -> list[dict]:
    """{"id", "input", "label", "rationale"} rows; a row missing one of the three strings is a DataError
    at file:line."""
    file = rationales_file(data)
    rows = []
    for lineno, row in iter_jsonl(file):
        bad = [k for k in ("input", "label", "rationale") if not isinstance(row, dict) or not isinstance(row.get(k), str)]
        if bad:
            raise DataError(f"a rationale row needs {', '.join(repr(k) for k in bad)} string(s)",
                            where=where(file, lineno), hint="rows look like "
                            '{"input": "...", "label": "...", "rationale": "..."}')
        rows.append({"id": str(row.get("id", f"row-{lineno}")), "input": row["input"], "label": row["label"],
                     "rationale": row["rationale"]})
    return rows


def task_messages(row: dict, task: int, label_prefix: str = DEFAULT_LABEL_PREFIX,
                  rationale_prefix: str = DEFAULT_RATIONALE_PREFIX) -> list[dict]:
    prefix, target = (label_prefix, row["label"]) if task == LABEL else (rationale_prefix, row["rationale"])
    return [{"role": "user", "content": prefix + row["input"]}, {"role": "assistant", "content": target}]


class DistillData:
    """Each row tokenized as its two tasks: `examples[i] = (label example, rationale example)`."""

    def __init__(self, rows: list[dict], tokenizer, style, max_length: int, label_prefix: str = DEFAULT_LABEL_PREFIX,
                 rationale_prefix: str = DEFAULT_RATIONALE_PREFIX):
        self.examples: list[tuple[dict, dict]] = []
        self.report = {"read": len(rows), "kept": 0, "dropped": {}, "label_target_tokens": 0,
                       "rationale_target_tokens": 0}
        for row in rows:
            pair = [tokenize_conversation(task_messages(row, t, label_prefix, rationale_prefix), tokenizer, style,
                                          max_length) for t in (LABEL, RATIONALE)]
            if any(all(x == IGNORE for x in ex["labels"]) for ex in pair):
                reason = "no_target_tokens (prompt fills max_length)"
                self.report["dropped"][reason] = self.report["dropped"].get(reason, 0) + 1
                continue
            for ex, task in zip(pair, (LABEL, RATIONALE)):
                ex["id"], ex["task"] = row["id"], task
            self.examples.append((pair[0], pair[1]))
            self.report["kept"] += 1
            self.report["label_target_tokens"] += sum(x != IGNORE for x in pair[0]["labels"])
            self.report["rationale_target_tokens"] += sum(x != IGNORE for x in pair[1]["labels"])

    def __len__(self) -> int:
        return len(self.examples)


def collate_tasks(examples: list[dict], pad_id: int, max_length: int) -> dict:
    """`data.sft.collate` plus "task" [B] (0 label, 1 rationale)."""
    batch = collate(examples, pad_id, max_length)
    batch["task"] = torch.tensor([ex["task"] for ex in examples], dtype=torch.long)
    return batch


class DistillBatches(SampledBatches):
    """Endless shuffled micro-batches of `micro_batch_size` examples, each as its label row and (unless
    label_only) its rationale row; the sampler position is saved with checkpoints."""

    def __init__(self, pairs: list[tuple[dict, dict]], micro_batch_size: int, pad_id: int, max_length: int,
                 seed: int = 0, label_only: bool = False):
        super().__init__(len(pairs), micro_batch_size, seed)
        self.pairs, self.pad_id, self.max_length, self.label_only = pairs, pad_id, max_length, label_only

    def make(self, indices: list[int]) -> dict:
        rows = [self.pairs[i][0] for i in indices]
        if not self.label_only:
            rows += [self.pairs[i][1] for i in indices]
        return collate_tasks(rows, self.pad_id, self.max_length)


def _targets(batch: dict) -> torch.Tensor:
    return batch["labels"][:, 1:]


def task_token_counts(batch: dict) -> tuple[int, int]:
    keep = _targets(batch) != IGNORE
    label_rows = (batch["task"] == LABEL).to(keep.device)
    return int(keep[label_rows].sum()), int(keep[~label_rows].sum())


class DistillObjective:
    """alpha x label-task token mean + (1 - alpha) x rationale-task token mean (see the module doc)."""

    name = "distill"
    metric_fields = {"label_loss": "label_tokens", "rationale_loss": "rationale_tokens"}

    def __init__(self, alpha: float = 0.5):
        if not 0.0 <= float(alpha) <= 1.0:
            raise OpenseasonError(f"distill alpha must be in [0, 1], not {alpha}")
        self.alpha = float(alpha)
        self.weights = {"label_tokens": self.alpha, "rationale_tokens": 1.0 - self.alpha}

    def counts(self, batch: dict) -> dict[str, int]:
        n_label, n_rationale = task_token_counts(batch)
        return {"label_tokens": n_label, "rationale_tokens": n_rationale}

    def loss(self, model, batch: dict):
        hidden = model.hidden_states(batch["input_ids"])
        targets = _targets(batch)
        logits = model.lm_head(hidden[:, :-1]).float()
        token_loss = F.cross_entropy(logits.reshape(-1, logits.size(-1)), targets.reshape(-1),
                                     ignore_index=IGNORE, reduction="none").view_as(targets)
        is_label = (batch["task"] == LABEL).to(token_loss.device)[:, None]
        label_sum = (token_loss * is_label).sum()
        rationale_sum = (token_loss * ~is_label).sum()
        return ({"label_tokens": label_sum, "rationale_tokens": rationale_sum},
                {"label_loss": float(label_sum.detach()), "rationale_loss": float(rationale_sum.detach())})
