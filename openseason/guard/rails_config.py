"""A rails configuration folder: `config.yml` plus Colang 1.0 `*.co` files.

The keys follow NeMo Guardrails so its configs load unchanged. NeMo's keys we do not use are listed
in `RailsConfig.ignored_keys`; unknown or misspelled keys anywhere are reported with file:line:col
and a did-you-mean (`RailsConfig.unknown_keys`, warnings; errors with `strict=True` / `--strict`),
see config_keys.py. `rails.completions: disabled` makes `serve --rails` refuse /v1/completions.

    models:                        # type main (the LLM) and type embeddings (the intent encoder)
      - {type: embeddings, engine: SentenceTransformers, model: all-MiniLM-L6-v2}   # or a directory
    instructions: [{type: general, content: "..."}]
    sample_conversation: "..."
    prompts: [{task: self_check_input, content: "... {{ user_input }} ..."}]
    rails:
      input:  {flows: [self check input, jailbreak detection heuristics, topical check], window: 10,
               trust_system: false}      # ours: true = input rails skip the operator's system messages
      output: {flows: [self check output], apply_to_predefined: false}
      dialog:
        user_messages:
          embeddings_only: true                          # never ask the LLM for the intent (default false:
                                                         # below the threshold, a configured LLM names it)
          embeddings_only_similarity_threshold: 0.5      # plain cosine similarity
          embeddings_only_fallback_intent: unknown
          few_shot_k: 5                                   # nearest examples shown to the LLM otherwise
      config:
        jailbreak_detection: {length_per_perplexity_threshold: 89.79,
                              prefix_suffix_perplexity_threshold: 1845.65, prefix_suffix_words: 20,
                              model: path/to/openseason/checkpoint}
        topical: {blocked_intents: [...], refuse_unmatched: true}
    embeddings: {cache_dir: ...}   # ours: where utterance embeddings are cached (false: off)

Errors name file:line:col: YAML problems and wrong types at their YAML node, Colang problems at the
statement.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import yaml

from ..errors import ConfigError, where
from ..fileio import parse_yaml
from . import colang

LIBRARY = Path(__file__).with_name("library.co")


class UnknownKeyWarning(UserWarning):
    """A config.yml key that is neither ours nor NeMo Guardrails' (likely misspelled)."""
CONFIG_NAMES = ("config.yml", "config.yaml")


@dataclass
class JailbreakSettings:
    length_per_perplexity_threshold: float = 89.79
    prefix_suffix_perplexity_threshold: float = 1845.65
    prefix_suffix_words: int = 20
    model: Optional[str] = None


@dataclass
class RailsConfig:
    path: Optional[Path]
    users: dict[str, colang.UserDef] = field(default_factory=dict)
    bots: dict[str, colang.BotDef] = field(default_factory=dict)
    flows: dict[str, colang.FlowDef] = field(default_factory=dict)
    models: list[dict] = field(default_factory=list)
    instructions: str = ""
    sample_conversation: str = ""
    prompts: dict[str, str] = field(default_factory=dict)
    input_flows: list[str] = field(default_factory=list)
    output_flows: list[str] = field(default_factory=list)
    input_window: int = 10               # user turns replayed through the dialog flows
    input_trust_system: bool = False     # True: input rails skip system messages (operator-written)
    output_on_predefined: bool = False
    embeddings_only: bool = False        # True: never ask the LLM for an intent, even below the threshold
    threshold: float = 0.5
    fallback_intent: str = "unknown"
    few_shot_k: int = 5
    kb_k: int = 3                        # knowledge-base chunks retrieved into $relevant_chunks
    jailbreak: JailbreakSettings = field(default_factory=JailbreakSettings)
    topical_blocked: list[str] = field(default_factory=list)
    topical_refuse_unmatched: bool = True
    embedding_model: Optional[str] = None
    main_model: Optional[str] = None
    cache_dir: Optional[str] = "default"
    seed: Optional[int] = None
    ignored_keys: list[str] = field(default_factory=list)   # NeMo's keys we accept and do not use
    unknown_keys: list[str] = field(default_factory=list)   # "file:line:col: unknown key `x`; did you mean `y`?"
    warnings: list[str] = field(default_factory=list)
    completions_disabled: bool = False   # `rails: {completions: disabled}`: serve refuses /v1/completions
    raw: dict = field(default_factory=dict)  # config.yml as read: `$config` in flows (NeMo's `$config.x.y`)

    # -- loading -------------------------------------------------------------------------------------
    @classmethod
    def from_path(cls, path: str | Path, strict: bool = False) -> "RailsConfig":
        """Load a config folder (config.yml and every *.co below it, in sorted order). Unknown keys
        in config.yml are warnings (`cfg.warnings`, `cfg.unknown_keys`), errors with `strict`."""
        path = Path(path)
        if not path.is_dir():
            raise ConfigError("rails config folder not found", where=str(path),
                              hint="pass a folder holding config.yml and *.co files")
        yml = next((path / n for n in CONFIG_NAMES if (path / n).exists()), None)
        docs = [colang.parse_file(f) for f in sorted(path.rglob("*.co"))]
        if yml is None and not docs:
            raise ConfigError("no config.yml and no .co files", where=str(path))
        return cls._build(path, yml.read_text(encoding="utf-8") if yml else "", str(yml or path), docs, strict)

    @classmethod
    def from_content(cls, colang_content: str = "", yaml_content: str = "", strict: bool = False) -> "RailsConfig":
        """Build a config from strings (handy in tests and notebooks)."""
        docs = [colang.parse(colang_content, "<colang>")] if colang_content else []
        return cls._build(None, yaml_content, "<yaml>", docs, strict)

    @classmethod
    def _build(cls, path: Optional[Path], yaml_text: str, yaml_name: str, docs: list,
               strict: bool = False) -> "RailsConfig":
        cfg = cls(path=path)
        for doc in [colang.parse_file(LIBRARY)] + docs:
            for u in doc.users:
                if u.name in cfg.users and u.loc.file == cfg.users[u.name].loc.file:
                    cfg.users[u.name].examples.extend(u.examples)  # a file may add examples in two places
                else:
                    cfg.users[u.name] = colang.UserDef(u.name, list(u.examples), u.loc)
            for b in doc.bots:
                cfg.bots[b.name] = b
            for f in doc.flows:
                if f.name in cfg.flows and cfg.flows[f.name].loc.file == f.loc.file:
                    raise colang.ColangSyntaxError(f"flow {f.name!r} is defined twice in one file "
                                                   f"(first at {cfg.flows[f.name].loc})", f.loc)
                cfg.flows.pop(f.name, None)  # a redefinition replaces the library's and keeps file order
                cfg.flows[f.name] = f
        _Yaml(yaml_text, yaml_name, strict).apply(cfg)
        cfg._validate()
        return cfg

    # -- checks --------------------------------------------------------------------------------------
    def _validate(self) -> None:
        for kind, names in (("input", self.input_flows), ("output", self.output_flows)):
            for name in names:
                if name not in self.flows:
                    raise ConfigError(f"rails.{kind}.flows names {name!r}, which no .co file defines",
                                      where=str(self.path or "<config>"),
                                      hint=f"define it with `define subflow {name}` or fix the name; known: "
                                           f"{sorted(n for n in self.flows if not n.startswith('flow at'))}")
                if _waits(self.flows[name].body):
                    raise ConfigError(f"{kind} rail {name!r} waits for a user message (`user`/`when`); "
                                      "a rail must run to the end within one turn",
                                      where=str(self.flows[name].loc))
        for flow in self.flows.values():
            for step in _walk(flow.body):
                if isinstance(step, colang.Do) and step.expr is None:
                    target = self.flows.get(step.subflow)
                    if target is None:
                        raise ConfigError(f"`do {step.subflow}`: no such subflow", where=str(step.loc),
                                          hint="define it with `define subflow ...`")
                    if _waits(target.body):
                        raise ConfigError(f"subflow {step.subflow!r} waits for a user message, which `do` "
                                          "cannot resume", where=str(step.loc))
                elif isinstance(step, (colang.UserStep, colang.When)):
                    intents = [step.intent] if isinstance(step, colang.UserStep) else [i for i, _ in step.branches]
                    for intent in intents:
                        if intent != "..." and intent not in self.users and intent != self.fallback_intent:
                            self.warnings.append(f"{step.loc}: intent {intent!r} has no `define user` examples "
                                                 "and can only be reached by the LLM")
        for name in self.topical_blocked:
            if name not in self.users:
                raise ConfigError(f"rails.config.topical.blocked_intents names {name!r}, which has no "
                                  "`define user` examples", where=str(self.path or "<config>"))

    @property
    def dialog_flows(self) -> list[colang.FlowDef]:
        """Flows that start with a user step, highest `priority` first, then in definition order
        (the first match decides)."""
        flows = [f for f in self.flows.values()
                 if not f.subflow and f.body and isinstance(f.body[0], colang.UserStep)]
        return sorted(flows, key=lambda f: -f.priority)

    @property
    def bot_output_flows(self) -> list[str]:
        """Flows that start with `bot ...` (NeMo's way to write an output rail, e.g. `check bot
        response`): they run on every reply the output rails check, after `rails.output.flows`."""
        return [f.name for f in self.flows.values()
                if not f.subflow and f.body and isinstance(f.body[0], colang.BotStep) and f.body[0].name == "..."
                and f.name not in self.output_flows]

    def bot_triggered_flows(self, bot: str) -> list[str]:
        """Flows that start with `bot <bot>`: they continue after that bot message is said."""
        return [f.name for f in self.flows.values()
                if not f.subflow and f.body and isinstance(f.body[0], colang.BotStep) and f.body[0].name == bot]

    def event_flows(self, event: str) -> list[str]:
        """Flows that start with `event <event>`: they run when a flow does `create event <event>`."""
        return [f.name for f in self.flows.values()
                if f.body and isinstance(f.body[0], colang.EventStep) and f.body[0].name == event]

    def resolve(self, value: Optional[str], always: bool = False) -> Optional[str]:
        """A path from the config, relative to the config folder; a bare name that is no file there
        (like all-MiniLM-L6-v2) stays a name unless `always`."""
        if value is None or self.path is None or Path(value).is_absolute():
            return value
        candidate = self.path / value
        if always or candidate.exists() or "/" in value or value.startswith("."):
            return str(candidate)
        return value


def _walk(body: list):
    for step in body:
        yield step
        if isinstance(step, colang.If):
            for _cond, sub in step.branches:
                yield from _walk(sub)
            yield from _walk(step.orelse)
        elif isinstance(step, colang.When):
            for _intent, sub in step.branches:
                yield from _walk(sub)
            yield from _walk(step.orelse or [])
        elif isinstance(step, colang.While):
            yield from _walk(step.body)


def _waits(body: list) -> bool:
    return any(isinstance(s, (colang.UserStep, colang.When)) for s in _walk(body))


class _Yaml:
    """config.yml with node positions, so a wrong value is reported at file:line:col."""

    def __init__(self, text: str, name: str, strict: bool = False):
        self.name, self.strict = name, strict
        self._alias: dict = {}  # our key path -> NeMo's name it was given under
        self.node, self.data = parse_yaml(text, name, error=ConfigError, with_node=True)
        if self.data is None:
            self.data = {}
        if not isinstance(self.data, dict):
            raise ConfigError("config.yml must be a mapping of keys (models, instructions, rails, ...)",
                              where=self.loc(()))

    def loc(self, keys: tuple) -> str:
        keys = tuple(keys)
        for n in range(len(keys), 0, -1):  # a value given under NeMo's name is reported there
            if keys[:n] in self._alias:
                keys = keys[:n - 1] + (self._alias[keys[:n]],) + keys[n:]
                break
        node = self.node
        for key in keys:
            nxt = None
            if isinstance(node, yaml.MappingNode):
                nxt = next((v for k, v in node.value if k.value == key), None)
            elif isinstance(node, yaml.SequenceNode) and isinstance(key, int) and key < len(node.value):
                nxt = node.value[key]
            if nxt is None:
                break
            node = nxt
        if node is None:
            return self.name
        return where(self.name, node.start_mark.line + 1, node.start_mark.column + 1)

    def get(self, keys: tuple, kind, default=None):
        value: Any = self.data
        for key in keys:
            if not isinstance(value, dict) or key not in value:
                return default
            value = value[key]
        if value is None:
            return default
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if kind is float and isinstance(value, str):  # YAML 1.1 reads 1.0e12 (no sign) as a string
            try:
                value = float(value)
            except ValueError:
                pass
        if not isinstance(value, kind) or (kind in (int, float) and isinstance(value, bool)):
            names = {str: "a string", bool: "true or false", int: "an integer", float: "a number",
                     list: "a list", dict: "a mapping"}
            raise ConfigError(f"{'.'.join(map(str, keys))} must be {names.get(kind) or 'a string or true/false'}, "
                              f"not {value!r}", where=self.loc(keys))
        return value

    def apply(self, cfg: RailsConfig) -> None:
        from .config_keys import ALIASES, check_keys

        cfg.raw = self.data

        reports = check_keys(self.node, self.name)
        cfg.ignored_keys = sorted(r.path for r in reports if not r.unknown)
        cfg.unknown_keys = [r.message() for r in reports if r.unknown]
        if cfg.unknown_keys and self.strict:
            first = next(r for r in reports if r.unknown)
            raise ConfigError(f"unknown key `{first.path}`" + (f"; did you mean `{first.suggestion}`?"
                                                              if first.suggestion else ""), where=first.where,
                              hint=(f"{len(cfg.unknown_keys)} unknown keys in all: " + "; ".join(cfg.unknown_keys[:5])
                                    + "; " if len(cfg.unknown_keys) > 1 else "") + "drop --strict to load anyway")
        cfg.warnings.extend(cfg.unknown_keys)
        for message in cfg.unknown_keys:  # library users see them too, not only the CLI
            warnings.warn(message, UnknownKeyWarning, stacklevel=5)
        jb_data = self.get(("rails", "config", "jailbreak_detection"), dict, {})
        for nemo, ours in ALIASES.items():  # NeMo's jailbreak-server names for our two thresholds
            if nemo in jb_data and ours not in jb_data:
                jb_data[ours] = jb_data[nemo]
                self._alias[("rails", "config", "jailbreak_detection", ours)] = nemo
        for i, model in enumerate(self.get(("models",), list, [])):
            if not isinstance(model, dict) or "type" not in model:
                raise ConfigError("each entry of models needs a `type` (main or embeddings)",
                                  where=self.loc(("models", i)))
            cfg.models.append(model)
            if model["type"] == "embeddings":
                cfg.embedding_model = cfg.resolve(str(model.get("model") or "")) or None
            elif model["type"] == "main" and model.get("model"):
                cfg.main_model = cfg.resolve(str(model["model"]))
        parts = []
        for i, item in enumerate(self.get(("instructions",), list, [])):
            if not isinstance(item, dict) or not isinstance(item.get("content"), str):
                raise ConfigError("each instruction needs `type` and a string `content`",
                                  where=self.loc(("instructions", i)))
            if item.get("type", "general") == "general":
                parts.append(item["content"].strip())
        cfg.instructions = "\n\n".join(parts)
        cfg.sample_conversation = self.get(("sample_conversation",), str, "").strip()
        for i, item in enumerate(self.get(("prompts",), list, [])):
            if not isinstance(item, dict) or not isinstance(item.get("task"), str) \
                    or not isinstance(item.get("content"), str):
                raise ConfigError("each prompt needs a string `task` and a string `content`",
                                  where=self.loc(("prompts", i)))
            cfg.prompts[item["task"]] = item["content"]
        rails = ("rails",)
        cfg.input_flows = self._names(rails + ("input", "flows"))
        cfg.output_flows = self._names(rails + ("output", "flows"))
        cfg.input_window = self.get(rails + ("input", "window"), int, cfg.input_window)
        if cfg.input_window < 1:
            raise ConfigError("rails.input.window must be at least 1 (user turns replayed through the flows)",
                              where=self.loc(rails + ("input", "window")))
        cfg.input_trust_system = self.get(rails + ("input", "trust_system"), bool, False)
        cfg.output_on_predefined = self.get(rails + ("output", "apply_to_predefined"), bool, False)
        um = rails + ("dialog", "user_messages")
        cfg.embeddings_only = self.get(um + ("embeddings_only",), bool, False)
        cfg.threshold = self.get(um + ("embeddings_only_similarity_threshold",), float, cfg.threshold)
        if not -1.0 <= cfg.threshold <= 1.0:
            raise ConfigError("embeddings_only_similarity_threshold is a cosine similarity in [-1, 1]",
                              where=self.loc(um + ("embeddings_only_similarity_threshold",)))
        cfg.fallback_intent = self.get(um + ("embeddings_only_fallback_intent",), str, cfg.fallback_intent)
        cfg.few_shot_k = self.get(um + ("few_shot_k",), int, cfg.few_shot_k)
        jb = rails + ("config", "jailbreak_detection")
        j = cfg.jailbreak
        j.length_per_perplexity_threshold = self.get(jb + ("length_per_perplexity_threshold",), float,
                                                     j.length_per_perplexity_threshold)
        j.prefix_suffix_perplexity_threshold = self.get(jb + ("prefix_suffix_perplexity_threshold",), float,
                                                        j.prefix_suffix_perplexity_threshold)
        j.prefix_suffix_words = self.get(jb + ("prefix_suffix_words",), int, j.prefix_suffix_words)
        j.model = cfg.resolve(self.get(jb + ("model",), str, None), always=True)
        completions = self.get(rails + ("completions",), (str, bool), "enabled")
        if completions not in ("enabled", "disabled", True, False):
            raise ConfigError(f"rails.completions must be `enabled` or `disabled`, not {completions!r}",
                              where=self.loc(rails + ("completions",)))
        cfg.completions_disabled = completions in ("disabled", False)
        tp = rails + ("config", "topical")
        cfg.topical_blocked = [str(x) for x in self.get(tp + ("blocked_intents",), list, [])]
        cfg.topical_refuse_unmatched = self.get(tp + ("refuse_unmatched",), bool, True)
        cache = self.get(("embeddings", "cache_dir"), (str, bool), "default")
        # "default" (or true) is the user cache directory, never a folder named "default" next to config.yml
        cfg.cache_dir = (None if cache is False else "default" if cache is True or cache == "default"
                         else cfg.resolve(cache, always=True))
        cfg.seed = self.get(("seed",), int, None)

    def _names(self, keys: tuple) -> list[str]:
        names = self.get(keys, list, [])
        for i, n in enumerate(names):
            if not isinstance(n, str):
                raise ConfigError(f"{'.'.join(keys)} must list flow names (strings)", where=self.loc(keys + (i,)))
        return [" ".join(n.split()) for n in names]
