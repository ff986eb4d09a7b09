"""`openseason configs`: the named model configs with their shapes and parameter counts.

The counts are computed by building each architecture on the meta device (no memory is allocated)
and counting its parameters, so they are the numbers of the model `pretrain --config NAME` builds,
never typed in by hand.

    from openseason.config_list import list_configs
    rows = list_configs(family="llama")      # [{"name", "family", "parameters", ...}, ...]
"""
from __future__ import annotations

import json
from typing import Optional

from .errors import ConfigError

COLUMNS = ("name", "family", "parameters", "non_embedding", "n_layer", "n_embd", "n_head", "n_query_groups",
           "block_size", "vocab_size", "hf_id")


def _shape_key(config) -> str:
    """Configs that differ only in name and source (pythia-70m and pythia-70m-deduped) build the same model."""
    data = config.to_dict()
    for key in ("name", "hf_id", "extra"):
        data.pop(key, None)
    return json.dumps(data, sort_keys=True)


def list_configs(family: Optional[str] = None, match: Optional[str] = None) -> list[dict]:
    """One row per named config (openseason.config.NAMED_CONFIGS), optionally only one `family`
    ("gpt_neox", "llama", "mpt") and names containing `match`; an empty selection is a ConfigError."""
    from .config import NAMED_CONFIGS, Config
    from .model import count_parameters

    families = sorted({spec["family"] for spec in NAMED_CONFIGS.values()})
    if family is not None and family not in families:
        raise ConfigError(f"unknown family {family!r}", hint=f"choose one of: {', '.join(families)}")
    counted: dict[str, int] = {}
    rows = []
    for name in NAMED_CONFIGS:
        config = Config.from_name(name)
        if (family and config.family != family) or (match and match.lower() not in name.lower()):
            continue
        key = _shape_key(config)
        if key not in counted:
            counted[key] = count_parameters(config)
        total = counted[key]
        embedding = config.padded_vocab_size * config.n_embd
        rows.append({"name": name, "family": config.family, "parameters": total,
                     # the input embedding does no matmul work; a tied lm_head is the same matrix
                     "non_embedding": total - embedding * (1 if config.tie_embeddings else 2),
                     "n_layer": config.n_layer, "n_embd": config.n_embd, "n_head": config.n_head,
                     "n_query_groups": config.n_query_groups, "block_size": config.block_size,
                     "vocab_size": config.vocab_size, "hf_id": config.hf_id})
    if not rows:
        raise ConfigError("no named config matches" + (f" family {family!r}" if family else "")
                          + (f" and {match!r}" if family and match else f" {match!r}" if match else ""),
                          hint="`openseason configs` lists them all")
    return rows


def human(n: int) -> str:
    """14067712 -> 14.1M, 6738415616 -> 6.74B."""
    for div, unit in ((1e9, "B"), (1e6, "M"), (1e3, "K")):
        if n >= div:
            return f"{n / div:.3g}{unit}"
    return str(n)


def format_table(rows: list[dict]) -> str:
    header = ("name", "family", "params", "non-emb", "layers", "d_model", "heads", "kv", "context", "vocab",
              "source")
    body = [(r["name"], r["family"], human(r["parameters"]), human(r["non_embedding"]), str(r["n_layer"]),
             str(r["n_embd"]), str(r["n_head"]), str(r["n_query_groups"]), str(r["block_size"]),
             str(r["vocab_size"]), r["hf_id"] or "(test config)") for r in rows]
    widths = [max(len(row[i]) for row in (header, *body)) for i in range(len(header))]
    right = {2, 3, 4, 5, 6, 7, 8, 9}
    return "\n".join("  ".join(cell.rjust(w) if i in right else cell.ljust(w)
                               for i, (cell, w) in enumerate(zip(row, widths))).rstrip() for row in (header, *body))


def _configs(args) -> int:
    rows = list_configs(family=args.family, match=args.match)
    print(json.dumps(rows, indent=2) if args.json else format_table(rows))
    return 0


def register(subparsers) -> None:
    p = subparsers.add_parser("configs", help="list the named model configs with parameter counts",
                              description="The named configs `pretrain --config NAME` and Config.from_name take, "
                                          "with their shapes and parameter counts (computed from the model, on the "
                                          "meta device).")
    p.add_argument("match", nargs="?", default=None, help="only names containing this text (e.g. pythia)")
    p.add_argument("--family", default=None, help="only this family: gpt_neox, llama or mpt")
    p.add_argument("--json", action="store_true", help="print the rows as JSON")
    p.set_defaults(func=_configs)
