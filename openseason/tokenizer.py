"""Tokenizer: a thin wrapper over the `tokenizers` library with an explicit BOS/EOS policy.

Hugging Face tokenizer.json files sometimes add BOS through their post-processor and sometimes not;
we always encode without the post-processor and add BOS ourselves when the model family expects it
(LLaMA: yes, Pythia/GPT-NeoX: no), so training, generation and evaluation agree on every token.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Iterable, Optional

from tokenizers import Tokenizer as _HFTokenizer

from .chat_template import LEGACY_TEMPLATE_FILE, TEMPLATE_FILE
from .errors import CheckpointError

# Copied with a checkpoint both ways by `convert`; the chat template files keep a model's chat format
# (see openseason.chat_template).
CHAT_TEMPLATE_FILES = (TEMPLATE_FILE, LEGACY_TEMPLATE_FILE)
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                   "tokenizer.model", "generation_config.json", *CHAT_TEMPLATE_FILES)


def _token_text(value) -> Optional[str]:
    if isinstance(value, dict):  # {"content": "<s>", ...} in tokenizer_config.json
        return value.get("content")
    return value


class Tokenizer:
    def __init__(self, backend: _HFTokenizer, *, bos_id: Optional[int] = None, eos_id: Optional[int] = None,
                 add_bos: bool = False, pad_id: Optional[int] = None):
        self.backend = backend
        self.bos_id = bos_id
        self.eos_id = eos_id
        self.add_bos = add_bos and bos_id is not None
        self.pad_id = pad_id if pad_id is not None else eos_id
        # The model's chat format as from_dir found it, written back by save: the text of
        # chat_template.jinja / chat_template.json, and tokenizer_config.json's "chat_template" entry.
        self.chat_template_files: dict[str, str] = {}
        self.config_chat_template = None

    # -- loading ------------------------------------------------------------------------------------
    @classmethod
    def from_dir(cls, path: str | Path, config=None) -> "Tokenizer":
        """Load tokenizer.json from a checkpoint or HF directory; BOS/EOS come from tokenizer_config.json,
        else from the model config (bos_token_id, eos_token_id, add_bos_token)."""
        path = Path(path)
        if not path.exists():
            raise CheckpointError("tokenizer not found", where=str(path),
                                  hint="pass a checkpoint directory holding tokenizer.json, or the tokenizer.json file")
        file = path / "tokenizer.json" if path.is_dir() else path
        if not file.exists():
            raise CheckpointError("no tokenizer.json", where=str(path),
                                  hint="copy the model's tokenizer.json into the checkpoint directory")
        try:
            backend = _HFTokenizer.from_file(str(file))
        except Exception as exc:  # the Rust library raises plain Exceptions
            raise CheckpointError(f"cannot read tokenizer: {exc}", where=str(file)) from None
        bos_id = getattr(config, "bos_token_id", None)
        eos_id = getattr(config, "eos_token_id", None)
        add_bos = bool(getattr(config, "add_bos_token", False))
        pad_id = None
        tok_cfg_file = file.parent / "tokenizer_config.json"
        if tok_cfg_file.exists():
            try:
                tok_cfg = json.loads(tok_cfg_file.read_text())
            except json.JSONDecodeError as exc:
                raise CheckpointError(f"malformed JSON: {exc.msg}",
                                      where=f"{tok_cfg_file}:{exc.lineno}:{exc.colno}") from None
            for key, attr in (("bos_token", "bos"), ("eos_token", "eos"), ("pad_token", "pad")):
                text = _token_text(tok_cfg.get(key))
                token_id = backend.token_to_id(text) if text else None
                if token_id is not None:
                    if attr == "bos":
                        bos_id = token_id
                    elif attr == "eos":
                        eos_id = token_id
                    else:
                        pad_id = token_id
            if "add_bos_token" in tok_cfg:
                add_bos = bool(tok_cfg["add_bos_token"])
        tokenizer = cls(backend, bos_id=bos_id, eos_id=eos_id, add_bos=add_bos, pad_id=pad_id)
        if tok_cfg_file.exists():
            tokenizer.config_chat_template = tok_cfg.get("chat_template")
        for name in CHAT_TEMPLATE_FILES:
            if (file.parent / name).exists():
                try:
                    tokenizer.chat_template_files[name] = (file.parent / name).read_text(encoding="utf-8")
                except (OSError, UnicodeDecodeError) as exc:
                    raise CheckpointError(f"cannot read the chat template ({exc})", where=str(file.parent / name)) from None
        return tokenizer

    def save(self, directory: str | Path) -> None:
        """Write tokenizer.json, a tokenizer_config.json that records the BOS/EOS policy, and the chat
        template the tokenizer was loaded with (so a model finetuned from a chat model keeps its format)."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        self.backend.save(str(directory / "tokenizer.json"))
        cfg = {"add_bos_token": self.add_bos, "add_eos_token": False,
               "bos_token": self.id_to_token(self.bos_id), "eos_token": self.id_to_token(self.eos_id),
               "pad_token": self.id_to_token(self.pad_id), "tokenizer_class": "PreTrainedTokenizerFast"}
        if self.config_chat_template is not None:
            cfg["chat_template"] = self.config_chat_template
        (directory / "tokenizer_config.json").write_text(json.dumps(cfg, indent=2) + "\n")
        for name, text in self.chat_template_files.items():
            (directory / name).write_text(text, encoding="utf-8")

    # -- encode / decode ----------------------------------------------------------------------------
    @property
    def vocab_size(self) -> int:
        return self.backend.get_vocab_size(with_added_tokens=True)

    def token_to_id(self, token: str) -> Optional[int]:
        return self.backend.token_to_id(token)

    def id_to_token(self, token_id: Optional[int]) -> Optional[str]:
        return None if token_id is None else self.backend.id_to_token(token_id)

    @property
    def special_ids(self) -> frozenset[int]:
        """Ids of the special tokens (added tokens flagged special: EOS, padding, <|im_end|>, ...),
        which decode(skip_special_tokens=True) leaves out of the text."""
        if getattr(self, "_special_ids", None) is None:
            try:
                added = self.backend.get_added_tokens_decoder()
            except AttributeError:   # an old tokenizers
                added = {}
            self._special_ids = frozenset(i for i, token in added.items() if getattr(token, "special", False))
        return self._special_ids

    def add_special_tokens(self, tokens: Iterable[str]) -> list[int]:
        """Add `tokens` as special tokens (matched whole, before pre-tokenization; left out of decoded
        text) unless present; returns their ids in order. New ids follow the current vocabulary."""
        from tokenizers import AddedToken

        tokens = list(tokens)
        missing = [t for t in tokens if self.backend.token_to_id(t) is None]
        if missing:
            self.backend.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in missing])
            self._special_ids = None
        return [self.backend.token_to_id(t) for t in tokens]

    def encode(self, text: str, *, bos: Optional[bool] = None, eos: bool = False) -> list[int]:
        """Token ids of `text`; BOS follows the family policy unless `bos` says otherwise."""
        ids = self.backend.encode(text, add_special_tokens=False).ids
        if (self.add_bos if bos is None else bos) and self.bos_id is not None:
            ids = [self.bos_id] + ids
        if eos and self.eos_id is not None:
            ids = ids + [self.eos_id]
        return ids

    def encode_batch(self, texts: list[str], *, bos: Optional[bool] = None, eos: bool = False) -> list[list[int]]:
        encoded = self.backend.encode_batch(texts, add_special_tokens=False)
        add_bos = (self.add_bos if bos is None else bos) and self.bos_id is not None
        return [([self.bos_id] if add_bos else []) + e.ids + ([self.eos_id] if eos and self.eos_id is not None else [])
                for e in encoded]

    def decode(self, ids: Iterable[int], skip_special_tokens: bool = True) -> str:
        return self.backend.decode(list(ids), skip_special_tokens=skip_special_tokens)


def copy_tokenizer_files(src: str | Path, dst: str | Path) -> list[str]:
    """Copy whichever tokenizer files exist in `src` to `dst`; returns the names copied."""
    src, dst = Path(src), Path(dst)
    dst.mkdir(parents=True, exist_ok=True)
    copied = []
    for name in TOKENIZER_FILES:
        if (src / name).exists():
            shutil.copyfile(src / name, dst / name)
            copied.append(name)
    return copied


def train_bpe(texts: Iterable[str], vocab_size: int = 512, special_tokens: tuple[str, ...] = ("<|endoftext|>",),
              bos: Optional[str] = None, eos: str = "<|endoftext|>", add_bos: bool = False) -> Tokenizer:
    """Train a byte-level BPE tokenizer on the spot (tests and the offline quickstart)."""
    from tokenizers import decoders, models, pre_tokenizers, trainers

    backend = _HFTokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=list(special_tokens),
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    backend.train_from_iterator(texts, trainer=trainer)
    eos_id = backend.token_to_id(eos)
    bos_id = backend.token_to_id(bos) if bos else None
    return Tokenizer(backend, bos_id=bos_id, eos_id=eos_id, add_bos=add_bos)
