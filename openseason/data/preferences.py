"""Preference pairs -> token ids: one shared prompt, a chosen and a rejected completion.

A pair is tokenized ONCE through `openseason.prompts.chat_pieces`, exactly as SFT tokenizes the same
conversation: the prompt ids are every piece before the final assistant reply (they equal
`encode_chat(prompt, tokenizer, style)`, the inference prompt), the completion ids are the reply
piece with its end-of-turn marker or EOS (what SFT puts loss on). BOS appears once, at the start of
the prompt (per `tokenizer.add_bos`), and each completion ends with exactly one end marker.

    PreferenceData(records, tokenizer, style, max_length).examples[i] =
        {"id", "prompt_ids", "chosen_ids", "rejected_ids"}

`collate_pairs` makes one micro-batch of 2B rows: the B chosen sequences, then the B rejected ones,
right-padded; `labels` are -100 on the prompt and padding, so a sequence log-probability is the sum
over completion tokens only. Pairs too long for max_length lose prompt tokens from the left (BOS
kept) and are dropped when the completions alone do not fit; the report counts both.
"""
from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Iterable, Optional

import torch

from ..errors import DataError
from ..fileio import iter_jsonl
from ..prompts import chat_pieces, get_style
from .sft import IGNORE

PREFERENCES_FILE = "preferences.jsonl"


def load_preferences(prepared_dir) -> list[dict]:
    """The records of DIR/preferences.jsonl (or a .jsonl file given directly), checked like SFT data."""
    path = Path(prepared_dir)
    if path.is_dir():
        from .prepare import check_if_prepared

        check_if_prepared(path)
    file = path / PREFERENCES_FILE if path.is_dir() else path
    if not file.exists():
        raise DataError(f"no {PREFERENCES_FILE} here", where=str(path),
                        hint="prepare pairs with `openseason data prepare hh-rlhf FILE --mode preferences --out DIR`")
    out = []
    for lineno, row in iter_jsonl(file):
        if not isinstance(row, dict) or not isinstance(row.get("prompt"), list) or not isinstance(
                row.get("chosen"), str) or not isinstance(row.get("rejected"), str):
            raise DataError("a preference record needs 'prompt' (a list of messages), 'chosen' and 'rejected' "
                            "(strings)", where=f"{file}:{lineno}")
        row.setdefault("_where", f"{file}:{lineno}")
        out.append(row)
    return out


def data_fingerprint(prepared_dir) -> str:
    """sha256 of the pairs file (what the reference log-probabilities were computed on)."""
    path = Path(prepared_dir)
    file = path / PREFERENCES_FILE if path.is_dir() else path
    digest = hashlib.sha256()
    with open(file, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def split_reply(messages, tokenizer, style) -> tuple[list[int], list[int]]:
    """(prompt ids, reply ids) of a conversation ending with an assistant reply, from `chat_pieces`."""
    pieces = chat_pieces(messages, tokenizer, style)
    last = max(i for i, (_, kind) in enumerate(pieces) if kind == "reply")
    prompt = [t for ids, _ in pieces[:last] for t in ids]
    return prompt, list(pieces[last][0])


def tokenize_pair(prompt_messages, chosen: str, rejected: str, tokenizer, style) -> dict:
    """{"prompt_ids", "chosen_ids", "rejected_ids"}: the shared prompt once, each completion with its end."""
    style = get_style(style)
    prompt_c, chosen_ids = split_reply(list(prompt_messages) + [{"role": "assistant", "content": chosen}],
                                       tokenizer, style)
    prompt_r, rejected_ids = split_reply(list(prompt_messages) + [{"role": "assistant", "content": rejected}],
                                         tokenizer, style)
    if prompt_c != prompt_r:  # segments are tokenized independently, so this cannot differ; guard anyway
        raise DataError("chosen and rejected tokenize to different prompts")
    return {"prompt_ids": prompt_c, "chosen_ids": chosen_ids, "rejected_ids": rejected_ids}


class PreferenceData:
    """Pairs tokenized once; `report` counts kept / truncated / dropped (with reasons)."""

    def __init__(self, records: Iterable[dict], tokenizer, style, max_length: int):
        self.style = get_style(style)
        self.max_length = max_length
        self.examples: list[dict] = []
        self.report = {"read": 0, "kept": 0, "prompt_truncated": 0, "dropped": {}}
        bos = tokenizer.bos_id if (tokenizer.add_bos and tokenizer.bos_id is not None) else None
        for record in records:
            self.report["read"] += 1
            ex = tokenize_pair(record["prompt"], record["chosen"], record["rejected"], tokenizer, self.style)
            reason = None
            longest = max(len(ex["chosen_ids"]), len(ex["rejected_ids"]))
            if not ex["chosen_ids"] or not ex["rejected_ids"]:
                reason = "empty_completion"
            elif ex["chosen_ids"] == ex["rejected_ids"]:
                reason = "identical_completions"
            elif longest + 1 + int(bos is not None) > max_length:
                reason = "completion_too_long"
            if reason:
                self.report["dropped"][reason] = self.report["dropped"].get(reason, 0) + 1
                continue
            room = max_length - longest
            if len(ex["prompt_ids"]) > room:  # keep the end of the prompt (the latest turn), BOS first
                head = [bos] if bos is not None and ex["prompt_ids"][:1] == [bos] else []
                ex["prompt_ids"] = head + ex["prompt_ids"][len(ex["prompt_ids"]) - (room - len(head)):]
                self.report["prompt_truncated"] += 1
            ex["id"] = record.get("id")
            self.examples.append(ex)
            self.report["kept"] += 1

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, index: int) -> dict:
        return self.examples[index]


def collate_pairs(examples: list[dict], pad_id: int, kl_examples: Optional[list[dict]] = None) -> dict:
    """2B (or 3B with KTO's mismatched rows) right-padded rows: chosen..., rejected... [, mismatched...].

    input_ids / labels [R, T] (labels aligned with input_ids, -100 off the completion), "pairs" = B and
    "index" = the examples' positions (for the reference log-probabilities)."""
    rows = [(e["prompt_ids"], e["chosen_ids"]) for e in examples]
    rows += [(e["prompt_ids"], e["rejected_ids"]) for e in examples]
    if kl_examples is not None:
        rows += [(e["prompt_ids"], k["chosen_ids"]) for e, k in zip(examples, kl_examples)]
    T = max(len(p) + len(c) for p, c in rows)
    input_ids = torch.full((len(rows), T), pad_id, dtype=torch.long)
    labels = torch.full((len(rows), T), IGNORE, dtype=torch.long)
    for r, (p, c) in enumerate(rows):
        input_ids[r, :len(p) + len(c)] = torch.tensor(p + c)
        labels[r, len(p):len(p) + len(c)] = torch.tensor(c)
    return {"input_ids": input_ids, "labels": labels, "pairs": len(examples)}


def write_pairs(directory, records: list[dict], style: str = "plain") -> Path:
    """A prepared preferences directory (preferences.jsonl, prompt_style.json, report.json) from dicts."""
    from ..fileio import write_json_atomic, write_jsonl_atomic
    from .prepare import write_style

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    write_jsonl_atomic(directory / PREFERENCES_FILE, records)
    write_style(directory, style)
    write_json_atomic(directory / "report.json", {"source": "openseason", "written": len(records),
                                                  "written_by_kind": {"preference": len(records)}})
    return directory

