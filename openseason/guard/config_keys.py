"""Every key config.yml may hold, ours and NeMo Guardrails', so a misspelled one is reported.

`check_keys` walks the YAML node tree against SCHEMA and returns, for each key, one of:
unknown (with file:line:col and a difflib did-you-mean among the keys valid at that place) or
NeMo's but not used here (accepted, listed in `RailsConfig.ignored_keys`). Unknown keys are
warnings by default and errors with `strict=True` (`--strict` on the CLI).
"""
from __future__ import annotations

import difflib
from dataclasses import dataclass
from typing import Any, Optional

import yaml

ANY = "any"          # a free-form value (model parameters, custom data, prompt text)
NEMO = "nemo"        # NeMo Guardrails' key, accepted and not used by openseason

_MODEL = {"type": ANY, "engine": ANY, "model": ANY, "parameters": NEMO, "mode": NEMO, "api_key_env_var": NEMO,
          "reasoning_config": NEMO, "cache": NEMO}
_JAILBREAK = {"length_per_perplexity_threshold": ANY, "prefix_suffix_perplexity_threshold": ANY,
              "prefix_suffix_words": ANY, "model": ANY,
              # NeMo's jailbreak server names its parameters this way; they map to ours
              "lp_threshold": ANY, "ps_ppl_threshold": ANY,
              "server_endpoint": NEMO, "nim_url": NEMO, "nim_port": NEMO, "nim_base_url": NEMO,
              "nim_server_endpoint": NEMO, "embedding": NEMO, "api_key_env_var": NEMO}
_USER_MESSAGES = {"embeddings_only": ANY, "embeddings_only_similarity_threshold": ANY,
                  "embeddings_only_fallback_intent": ANY, "few_shot_k": ANY}
SCHEMA: dict = {
    "models": [_MODEL],
    "instructions": [{"type": ANY, "content": ANY}],
    "sample_conversation": ANY,
    "prompts": [{"task": ANY, "content": ANY, "messages": NEMO, "models": NEMO, "output_parser": NEMO,
                 "max_length": NEMO, "mode": NEMO, "stop": NEMO, "max_tokens": NEMO}],
    "rails": {
        "input": {"flows": ANY, "window": ANY, "trust_system": ANY},
        "output": {"flows": ANY, "apply_to_predefined": ANY, "streaming": NEMO, "apply_to_reasoning_traces": NEMO},
        "retrieval": {"flows": NEMO},
        "dialog": {"user_messages": _USER_MESSAGES, "single_call": NEMO},
        "actions": NEMO,
        "completions": ANY,
        "config": {"jailbreak_detection": _JAILBREAK,
                   "topical": {"blocked_intents": ANY, "refuse_unmatched": ANY},
                   "fact_checking": NEMO, "sensitive_data_detection": NEMO, "autoalign": NEMO,
                   "patronus": NEMO, "privateai": NEMO, "llama_guard": NEMO, "guardrails_ai": NEMO,
                   "injection_detection": NEMO, "content_safety": NEMO, "clavata": NEMO, "trend_micro": NEMO},
    },
    "embeddings": {"cache_dir": ANY},
    "seed": ANY,
    # NeMo Guardrails keys we accept and do not use
    "lowest_temperature": NEMO, "enable_multi_step_generation": NEMO, "colang_version": NEMO,
    "custom_data": NEMO, "knowledge_base": NEMO, "core": NEMO, "streaming": NEMO, "passthrough": NEMO,
    "actions_server_url": NEMO, "import_paths": NEMO, "tracing": NEMO, "user_messages": NEMO,
    "bot_messages": NEMO, "enable_rails_exceptions": NEMO, "embedding_search_provider": NEMO,
    "raw_llm_call_action": NEMO, "docs": NEMO, "imported_paths": NEMO, "config_path": NEMO,
}

# NeMo's jailbreak server parameter names -> ours
ALIASES = {"lp_threshold": "length_per_perplexity_threshold",
           "ps_ppl_threshold": "prefix_suffix_perplexity_threshold"}


@dataclass
class KeyReport:
    path: str              # dotted, e.g. rails.inputs
    where: str             # file:line:col
    unknown: bool          # False: NeMo's key, accepted and unused
    suggestion: Optional[str] = None

    def message(self) -> str:
        if not self.unknown:
            return f"{self.where}: `{self.path}` is a NeMo Guardrails key openseason does not use (ignored)"
        hint = f"; did you mean `{self.suggestion}`?" if self.suggestion else ""
        return f"{self.where}: unknown key `{self.path}`{hint}"


def check_keys(node, name: str) -> list[KeyReport]:
    from ..errors import where

    out: list[KeyReport] = []

    def walk(node, schema: Any, path: str) -> None:
        if schema in (ANY, NEMO) or node is None:
            return
        if isinstance(schema, list):
            if isinstance(node, yaml.SequenceNode):
                for item in node.value:
                    walk(item, schema[0], path + "[]")
            return
        if not isinstance(node, yaml.MappingNode):
            return
        for key_node, value in node.value:
            key = key_node.value if isinstance(key_node, yaml.ScalarNode) else str(key_node)
            full = f"{path}.{key}" if path else key
            loc = where(name, key_node.start_mark.line + 1, key_node.start_mark.column + 1)
            if key not in schema:
                close = difflib.get_close_matches(key, list(schema), n=1, cutoff=0.6)
                out.append(KeyReport(full, loc, True, close[0] if close else None))
            elif schema[key] == NEMO:
                out.append(KeyReport(full, loc, False))
            else:
                walk(value, schema[key], full)

    walk(node, SCHEMA, "")
    return out
