"""OpenAssistant oasst1/oasst2: flat message rows (the Hugging Face release) or the nested trees export.

Flat rows carry message_id, parent_id, message_tree_id, role (prompter | assistant), text, lang, rank,
deleted, review_result, synthetic; the trees export nests the same messages under "prompt" and
"replies". Both are rebuilt into trees, then flattened by mode:

- `all-threads` (default): every root-to-leaf thread (a thread ending in a prompter message is cut
  back to its last assistant reply; identical threads are written once);
- `top-k`: the same, keeping only the `top_k` best-ranked children at every branch;
- `top1`: the single path of best-ranked children: one conversation per tree;
- `preferences`: pairs from ranked sibling replies (lower rank = preferred), each with the thread
  leading to them as prompt.

Deleted messages and messages whose review rejected them (review_result false, i.e. spam) are
dropped with everything below them, and so are messages outside `langs`; each is recorded. Every
record carries meta.tree_id and meta.split: whole trees go to "train" or "validation" (by a hash of
the tree id, `val_fraction`), so no tree is in both.
"""
from __future__ import annotations

import hashlib
from collections import defaultdict

from ...errors import OpenseasonError
from ..records import Conversation, PreferencePair

NAME = "oasst1"
DEFAULT_STYLE = "oasst"
MODES = ("all-threads", "top-k", "top1", "preferences")
MODE_OPTIONS = {"top_k": ("top-k",)}  # options that only one mode reads (checked by data.prepare)
ROLE = {"prompter": "user", "assistant": "assistant"}
FIELDS = ("message_id", "parent_id", "message_tree_id", "role", "text", "lang", "rank", "deleted",
          "review_result", "synthetic")


def split_of(tree_id: str, val_fraction: float, seed: int = 0) -> str:
    """"train" or "validation" for a whole tree, stable across runs and machines."""
    if val_fraction <= 0:
        return "train"
    h = int.from_bytes(hashlib.sha1(f"{seed}:{tree_id}".encode()).digest()[:8], "big") / 2**64
    return "validation" if h < val_fraction else "train"


def _flatten_tree(node: dict, tree_id: str, out: list, parent_id=None):
    # Iterative (a hostile or just deep tree must not hit the recursion limit); a node that is not an
    # object becomes an empty message, which the reader reports as malformed.
    stack = [(node, parent_id)]
    while stack:
        node, parent_id = stack.pop()
        node = node if isinstance(node, dict) else {}
        msg = {k: node.get(k) for k in FIELDS}
        msg["message_tree_id"] = msg["message_tree_id"] or tree_id
        msg["parent_id"] = msg["parent_id"] if msg["parent_id"] is not None else parent_id
        out.append(msg)
        replies = node.get("replies")
        replies = replies if isinstance(replies, list) else []
        stack.extend((child, node.get("message_id")) for child in reversed(replies))


def _well_formed(msg: dict) -> bool:
    def opt(key, *types):
        value = msg.get(key)
        return value is None or (isinstance(value, types) and not isinstance(value, bool))

    return (isinstance(msg.get("message_id"), str) and isinstance(msg.get("role"), str) and msg["role"] in ROLE
            and isinstance(msg.get("text"), str)
            and opt("parent_id", str) and opt("lang", str) and opt("rank", int, float))


def _rank_key(msg: dict):
    rank = msg.get("rank")
    return (rank is None, rank if rank is not None else 0)


def read(paths, ctx, mode="all-threads", langs=None, top_k: int = 2, val_fraction: float = 0.05, seed: int = 0, **_):
    if int(top_k) < 1 or not 0.0 <= float(val_fraction) < 1.0:
        raise OpenseasonError(f"--top-k must be >= 1 and --val-fraction in [0, 1), not {top_k} and {val_fraction}")
    langs = set(langs) if langs else None
    messages: dict[str, dict] = {}
    where_of: dict[str, str] = {}
    order: list[str] = []
    for path in paths:
        for where, row in ctx.rows(path):
            if not isinstance(row, dict):
                ctx.malformed(where, "bad_row", "expected a JSON object")
                continue
            if "prompt" in row and isinstance(row.get("prompt"), dict):  # nested trees export
                flat: list = []
                _flatten_tree(row["prompt"], row.get("message_tree_id"), flat)
                ctx.extra["trees_read"] = ctx.extra.get("trees_read", 0) + 1
            else:
                flat = [row]
            for msg in flat:
                mid = msg.get("message_id")
                if not _well_formed(msg):
                    ctx.malformed(where, "bad_field",
                                  "a message needs message_id, role prompter|assistant and text (strings), and "
                                  "parent_id / lang strings and rank a number when present")
                    continue
                if mid in messages:
                    ctx.reject(where, "duplicate_message_id", mid)
                    continue
                messages[mid] = msg
                where_of[mid] = where
                order.append(mid)
    ctx.extra["messages_read"] = len(messages)

    children: dict[str, list] = defaultdict(list)
    roots = []
    for mid in order:
        msg = messages[mid]
        if msg.get("parent_id") is None:
            roots.append(mid)
        else:
            children[msg["parent_id"]].append(mid)

    # Drop bad messages with their subtrees; record every message that goes, with its reason.
    def drop_reason(msg):
        if msg.get("deleted"):
            return "deleted"
        if msg.get("review_result") is False:
            return "spam"
        if langs is not None and msg.get("lang") not in langs:
            return "lang"
        if not msg["text"].strip():
            return "empty"
        return None

    kept: set[str] = set()

    reachable: set[str] = set()
    for root in roots:  # iterative: real trees can be deep
        first = "root_not_prompter" if messages[root]["role"] != "prompter" else None
        stack = [(root, first)]
        while stack:
            mid, forced = stack.pop()
            reachable.add(mid)
            # a message's own fault is reported before its parent's, so e.g. every deleted row counts
            reason = drop_reason(messages[mid]) or forced if forced != "root_not_prompter" else forced
            if reason:
                ctx.reject(where_of[mid], reason, message_id=mid)
            else:
                kept.add(mid)
            below = "parent_dropped" if reason else None
            stack.extend((child, below) for child in reversed(children.get(mid, [])))
    for mid in order:
        if mid not in reachable:
            ctx.reject(where_of[mid], "orphan", "parent message not in the input", message_id=mid)

    def kids(mid):
        ks = [c for c in children.get(mid, []) if c in kept]
        if mode in ("top-k", "top1"):
            ks = sorted(ks, key=lambda c: _rank_key(messages[c]))[: (1 if mode == "top1" else top_k)]
        return ks

    def to_messages(path_ids):
        return [{"role": ROLE[messages[m]["role"]], "content": messages[m]["text"]} for m in path_ids]

    splits = defaultdict(int)
    for root in roots:
        if root not in kept:
            continue
        tree_id = messages[root].get("message_tree_id") or root
        split = split_of(tree_id, val_fraction, seed)
        lang = messages[root].get("lang")
        base_meta = {"tree_id": tree_id, "split": split, "lang": lang}
        produced = 0
        if mode == "preferences":
            stack = [(root, [root])]
            while stack:
                mid, path_ids = stack.pop()
                ks = kids(mid)
                if messages[mid]["role"] == "prompter":
                    ranked = sorted((c for c in ks if messages[c].get("rank") is not None),
                                    key=lambda c: messages[c]["rank"])
                    for i in range(len(ranked)):
                        for j in range(i + 1, len(ranked)):
                            a, b = messages[ranked[i]], messages[ranked[j]]
                            if a["rank"] == b["rank"]:
                                continue
                            produced += 1
                            yield where_of[ranked[i]], PreferencePair(
                                f"oasst-{ranked[i][:8]}-{ranked[j][:8]}", NAME, to_messages(path_ids), a["text"],
                                b["text"], {**base_meta, "chosen_rank": a["rank"], "rejected_rank": b["rank"],
                                            "chosen_id": ranked[i], "rejected_id": ranked[j]})
                for c in reversed(ks):
                    stack.append((c, path_ids + [c]))
        else:
            threads = []
            stack = [[root]]
            while stack:
                path_ids = stack.pop()
                ks = kids(path_ids[-1])
                if not ks:
                    threads.append(path_ids)
                for c in reversed(ks):
                    stack.append(path_ids + [c])
            emitted = set()
            for path_ids in threads:
                while path_ids and messages[path_ids[-1]]["role"] != "assistant":
                    path_ids = path_ids[:-1]
                if not path_ids or tuple(path_ids) in emitted:
                    continue
                emitted.add(tuple(path_ids))
                produced += 1
                leaf = path_ids[-1]
                yield where_of[leaf], Conversation(
                    f"oasst-{leaf}", NAME, to_messages(path_ids),
                    {**base_meta, "message_ids": list(path_ids), "turns": (len(path_ids) + 1) // 2})
        if produced:
            splits[split] += 1
        else:
            ctx.reject(where_of[root], "no_thread", f"tree has nothing to write in mode {mode}", message_id=root)
    ctx.extra["trees"] = dict(splits)
