"""SFT tokenization: conversations -> token ids with loss masks, shuffling, batching and packing.

Label convention: `labels` are aligned with `input_ids` (NOT shifted). A label is the token id where
the model is trained to produce that token and -100 elsewhere; the training loop computes
cross-entropy of `logits[:, :-1]` against `labels[:, 1:]`.

Tokenization goes segment by segment (see `openseason.prompts.chat_pieces`) so the boundary between
prompt and reply is exact; `openseason.prompts.encode_chat` tokenizes an inference prompt from the
same pieces, so a model sees at inference exactly the ids it was trained on. BOS follows
`tokenizer.add_bos`.

Packing puts several conversations in one row. `segment_ids` (1, 2, ... per conversation, 0 for
padding) keep attention inside a conversation, `position_ids` restart at 0 for each, and the label of
each conversation's first token is -100 so nothing is predicted across a boundary.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Iterable, Iterator, Optional

import numpy as np
import torch

from ..errors import DataError, OpenseasonError, where
from ..fileio import iter_jsonl
from ..prompts import PromptStyle, chat_pieces, get_style, message_images

IGNORE = -100
TRAIN_ON = ("assistant", "all")
TRUNCATION = ("right", "left", "drop")
STYLE_FILE = "prompt_style.json"


def _check(train_on: str, truncation: str) -> None:
    if train_on not in TRAIN_ON:
        raise OpenseasonError(f"train_on must be one of {TRAIN_ON}, not {train_on!r}")
    if truncation not in TRUNCATION:
        raise OpenseasonError(f"truncation must be one of {TRUNCATION}, not {truncation!r}")


def tokenize_conversation(messages, tokenizer, style, max_length: int, train_on: str = "assistant",
                          truncation: str = "right", *, image_tokens: int = 0, image_token_id: int = 0) -> Optional[dict]:
    """{"input_ids": [...], "labels": [...]} for one conversation (plus "images": [{"part", "start"}]
    when its messages hold image parts: each image part and the first position of its slot, -1 when
    `image_tokens` is 0; see prompts.chat_pieces).

    The ids come from `openseason.prompts.chat_pieces`, the same pieces `encode_chat` joins for
    inference. train_on="assistant" puts loss on every assistant reply (with its end-of-turn marker /
    EOS); "all" on every token but BOS. truncation: "right" keeps the first max_length tokens, "left" the
    last ones (keeping BOS first), "drop" returns None for a conversation that does not fit. Truncation
    that would cut into an image's slot returns None too: an image is never half there.
    """
    _check(train_on, truncation)
    ids: list[int] = []
    labels: list[int] = []
    bos = False
    parts = iter(message_images(messages))
    images = []
    for piece, kind in chat_pieces(messages, tokenizer, style, image_tokens=image_tokens,
                                   image_token_id=image_token_id):
        bos = bos or kind == "bos"
        if kind == "image":
            images.append({"part": next(parts), "start": len(ids) if image_tokens else -1})
        ids.extend(piece)
        labels.extend(piece if kind == "reply" or (train_on == "all" and kind not in ("bos", "image"))
                      else [IGNORE] * len(piece))
    truncated = len(ids) > max_length
    if truncated:
        if truncation == "drop":
            return None
        cut = len(ids) - max_length
        if truncation == "right":
            ids, labels = ids[:max_length], labels[:max_length]
            if any(im["start"] + image_tokens > max_length for im in images if im["start"] >= 0):
                return None
        else:
            keep = max_length - int(bos)
            ids = ids[:int(bos)] + ids[len(ids) - keep:]
            labels = labels[:int(bos)] + labels[len(labels) - keep:]
            if any(im["start"] < int(bos) + cut for im in images if im["start"] >= 0):
                return None
            images = [{**im, "start": im["start"] - cut if im["start"] >= 0 else -1} for im in images]
    out = {"input_ids": ids, "labels": labels, **({"truncated": True} if truncated else {})}
    if images:
        out["images"] = images
    return out


# -- prepared directories ---------------------------------------------------------------------------
def prepared_style(prepared_dir) -> Optional[str]:
    """The prompt style name stored in a prepared directory (None when it holds none); a malformed
    prompt_style.json is a DataError at file:line:col."""
    file = Path(prepared_dir) / STYLE_FILE
    if not file.exists():
        return None
    hint = 'it must be a JSON object with a "name", e.g. {"name": "alpaca"}; prepare the directory again'
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise DataError(f"malformed JSON: {exc.msg}", where=where(file, exc.lineno, exc.colno), hint=hint) from None
    except UnicodeDecodeError as exc:
        raise DataError(f"not UTF-8 text ({exc.reason} at byte {exc.start})", where=str(file), hint=hint) from None
    if not isinstance(data, dict) or not isinstance(data.get("name"), str) or not data["name"]:
        raise DataError("the stored prompt style has no \"name\" string", where=where(file, 1, 1), hint=hint)
    return data["name"]


def load_conversations(prepared_dir, on_error: str = "fail") -> list[dict]:
    """The records of `prepared_dir`/conversations.jsonl (or a .jsonl file given directly).

    A directory with the report.json of `data prepare`, `dedup` or `mix` is checked against it first
    (`data.prepare.check_if_prepared`): a damaged or half-written directory is a DataError naming the
    file, never silently trained on."""
    path = Path(prepared_dir)
    if path.is_dir():
        from .prepare import check_if_prepared  # prepare imports this module

        check_if_prepared(path)
    file = path / "conversations.jsonl" if path.is_dir() else path
    if not file.exists():
        raise DataError("no conversations.jsonl here", where=str(path),
                        hint="run `openseason data prepare SOURCE FILE --out DIR` first")
    out = []
    for lineno, row in iter_jsonl(file, on_error=on_error):
        if not isinstance(row, dict) or not isinstance(row.get("messages"), list):
            raise DataError("a conversation record needs a 'messages' list", where=where(file, lineno))
        row.setdefault("_where", where(file, lineno))
        out.append(row)
    return out


def style_messages(record: dict) -> list[dict]:
    """The messages a prompt style should see: a single-turn record whose meta keeps Alpaca/Dolly's
    separate instruction and input gets them back as {"content": instruction, "input": input}, so the
    styles with an Input section render it faithfully."""
    messages = record["messages"]
    meta = record.get("meta") or {}
    if meta.get("input") and "instruction" in meta:
        users = [i for i, m in enumerate(messages) if m.get("role") == "user"]
        if len(users) == 1:
            messages = [dict(m) for m in messages]
            messages[users[0]] = {"role": "user", "content": meta["instruction"], "input": meta["input"]}
    return messages


class SFTData:
    """Conversations tokenized once: `examples[i] = {"input_ids", "labels", "id"}`.

    `report` counts what was kept and what was dropped and why (too long with truncation="drop",
    no trained token left after truncation).
    """

    def __init__(self, records: Iterable[dict], tokenizer, style, max_length: int, train_on: str = "assistant",
                 truncation: str = "right", *, image_tokens: Optional[int] = None, image_token_id: int = 0):
        """image_tokens: None for a text-only model (a record with images is a DataError naming it);
        else the positions each image takes (0: none; see tokenize_conversation)."""
        _check(train_on, truncation)
        self.style: PromptStyle = get_style(style)
        self.max_length = max_length
        self.train_on = train_on
        self.examples: list[dict] = []
        self.report = {"read": 0, "kept": 0, "dropped": {}, "truncated": 0, "tokens": 0, "target_tokens": 0}
        for record in records:
            self.report["read"] += 1
            if isinstance(record, list):
                record = {"messages": record}
            if image_tokens is None and message_images(record["messages"]):
                raise DataError("this record has images but the model takes none", where=record.get("_where"),
                                hint="finetune with a multimodal method: --method minigpt4 or adapter-v2-mm "
                                     "with --vision ENCODER_CKPT")
            ex = tokenize_conversation(style_messages(record), tokenizer, self.style, max_length,
                                       train_on=train_on, truncation=truncation, image_tokens=image_tokens or 0,
                                       image_token_id=image_token_id)
            reason = None
            if ex is None:
                reason = "too_long"
            elif all(label == IGNORE for label in ex["labels"]):
                reason = "no_target_tokens"
            if reason:
                self.report["dropped"][reason] = self.report["dropped"].get(reason, 0) + 1
                continue
            ex["id"] = record.get("id")
            if "images" in ex:
                ex["where"] = record.get("_where")
            self.examples.append(ex)
            self.report["kept"] += 1
            self.report["truncated"] += int(ex.pop("truncated", False))
            self.report["tokens"] += len(ex["input_ids"])
            self.report["target_tokens"] += sum(label != IGNORE for label in ex["labels"])

    @classmethod
    def from_prepared(cls, prepared_dir, tokenizer, style=None, max_length: int = 2048, train_on: str = "assistant",
                      truncation: str = "right") -> "SFTData":
        """Tokenize a prepared directory; the style defaults to the one stored with the data."""
        stored = prepared_style(prepared_dir)
        if style is None:
            style = stored or "plain"
        return cls(load_conversations(prepared_dir), tokenizer, style, max_length, train_on, truncation)

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, index: int) -> dict:
        return self.examples[index]


class ShuffledSampler:
    """Endless deterministic stream of example indices: a fresh permutation of range(n) per epoch,
    seeded by (seed, epoch). `state_dict()` / `load_state_dict()` save and restore (epoch, position)
    so a resumed run continues at exactly the same example."""

    def __init__(self, n: int, seed: int = 0, shuffle: bool = True):
        if n <= 0:
            raise OpenseasonError("cannot sample from an empty dataset",
                                  hint="check the prepared data (report.json) and max_length")
        self.n, self.seed, self.shuffle = n, seed, shuffle
        self.epoch = 0
        self.position = 0
        self._order = None

    def order(self, epoch: Optional[int] = None) -> np.ndarray:
        epoch = self.epoch if epoch is None else epoch
        if not self.shuffle:
            return np.arange(self.n)
        return np.random.default_rng([self.seed, epoch]).permutation(self.n)

    def _current(self) -> np.ndarray:
        if self._order is None:
            self._order = self.order()
        return self._order

    def peek(self) -> int:
        """The next index without consuming it."""
        return int(self._current()[self.position])

    def __next__(self) -> int:
        index = self.peek()
        self.position += 1
        if self.position == self.n:
            self.epoch += 1
            self.position = 0
            self._order = None
        return index

    def __iter__(self) -> Iterator[int]:
        return self

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "position": self.position, "seed": self.seed, "n": self.n}

    def load_state_dict(self, state: dict) -> None:
        if state.get("n", self.n) != self.n or state.get("seed", self.seed) != self.seed:
            raise OpenseasonError(f"sampler state is for n={state.get('n')} seed={state.get('seed')}, "
                                  f"this run has n={self.n} seed={self.seed}",
                                  hint="resume with the same data, max_length and seed")
        self.epoch, self.position = int(state["epoch"]), int(state["position"])
        self._order = None


def _pack(examples: list[dict], max_length: int) -> list[list[dict]]:
    """Greedy first-fit in order: start a new row when the next example does not fit."""
    rows: list[list[dict]] = []
    used = 0
    for ex in examples:
        n = min(len(ex["input_ids"]), max_length)
        if not rows or used + n > max_length:
            rows.append([])
            used = 0
        rows[-1].append(ex)
        used += n
    return rows


def collate(examples: list[dict], pad_id: int, max_length: int, packing: bool = False) -> dict:
    """Pad (or pack) examples into LongTensors input_ids, labels, attention_mask [B, T]; with packing
    also segment_ids and position_ids. T is the longest row, at most max_length; longer examples
    are cut on the right. Padding has label -100, attention_mask 0 and segment id 0."""
    if not examples:
        raise ValueError("collate needs at least one example")
    rows = _pack(examples, max_length) if packing else [[ex] for ex in examples]
    T = max(min(sum(min(len(e["input_ids"]), max_length) for e in row), max_length) for row in rows)
    B = len(rows)
    input_ids = torch.full((B, T), pad_id, dtype=torch.long)
    labels = torch.full((B, T), IGNORE, dtype=torch.long)
    attention = torch.zeros((B, T), dtype=torch.long)
    segment_ids = torch.zeros((B, T), dtype=torch.long)
    position_ids = torch.zeros((B, T), dtype=torch.long)
    for b, row in enumerate(rows):
        start = 0
        for s, ex in enumerate(row, start=1):
            n = min(len(ex["input_ids"]), max_length - start)
            input_ids[b, start:start + n] = torch.tensor(ex["input_ids"][:n])
            lab = torch.tensor(ex["labels"][:n])
            if packing:
                lab[0] = IGNORE  # would be predicted from the previous conversation's last token
            labels[b, start:start + n] = lab
            attention[b, start:start + n] = 1
            segment_ids[b, start:start + n] = s
            position_ids[b, start:start + n] = torch.arange(n)
            start += n
    batch = {"input_ids": input_ids, "labels": labels, "attention_mask": attention}
    if packing:
        batch["segment_ids"] = segment_ids
        batch["position_ids"] = position_ids
    return batch


def batches(data, sampler: ShuffledSampler, batch_size: int, pad_id: int, max_length: int,
            packing: bool = False, max_batches: Optional[int] = None) -> Iterator[dict]:
    """Micro-batches in sampler order, endlessly (or `max_batches` of them).

    Without packing a micro-batch holds `batch_size` examples; with packing it holds `batch_size` rows
    of up to `max_length` tokens, filled greedily in sampler order. The sampler only advances past
    examples that went into a yielded batch, so `sampler.state_dict()` taken after a batch resumes
    at the next unseen example. Each batch also carries "num_examples" (int) and "ids" (list).
    """
    made = 0
    while max_batches is None or made < max_batches:
        chosen: list[dict] = []
        if not packing:
            for _ in range(batch_size):
                chosen.append(data[next(sampler)])
        else:
            rows, used = 1, 0
            while True:
                ex = data[sampler.peek()]
                n = min(len(ex["input_ids"]), max_length)
                if used + n > max_length:
                    if rows == batch_size:
                        break
                    rows, used = rows + 1, 0
                chosen.append(ex)
                used += n
                next(sampler)
        batch = collate(chosen, pad_id, max_length, packing=packing)
        batch["num_examples"] = len(chosen)
        batch["ids"] = [ex.get("id") for ex in chosen]
        made += 1
        yield batch
