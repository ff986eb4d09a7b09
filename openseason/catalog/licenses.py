"""License normalization: free-text license fields -> Hugging Face / SPDX ids, and what each allows.

The table lives in `data/licenses.yaml` (data, not code). Matching ignores case, spaces and
punctuation, so "CC BY-NC 4.0", "CC-BY-NC-4.0" and "cc by nc 4.0" are one key. Composite strings
such as "LLaMa License (model weights), GPLv3 (code)" are split into roles, so the weights, code
and data terms of one asset stay apart. Text we cannot classify normalizes to `other` (commercial
verdict unknown) and keeps the raw text, so nothing is lost and nothing is guessed.
"""
from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from importlib import resources
from typing import Optional

from ..errors import OpenseasonError
from ..fileio import parse_yaml

ROLES = ("weights", "code", "data")
VERDICTS = ("yes", "no", "unknown")


@dataclass(frozen=True)
class License:
    id: str
    name: str
    spdx: Optional[str]
    hf: Optional[str]
    commercial: str
    research: str
    share_alike: bool = False
    kind: str = "license"
    conditions: tuple[str, ...] = ()

    def allows(self, purpose: str) -> str:
        """'yes' | 'no' | 'unknown' for purpose 'commercial' or 'research'."""
        return self.commercial if purpose == "commercial" else self.research


def match_key(text: str) -> str:
    """The key two spellings of one license (or asset name) share: casefolded alphanumerics and '+'."""
    return re.sub(r"[^0-9a-z+]", "", str(text).casefold())


def _verdict(value) -> str:
    # YAML 1.1 reads yes/no as booleans.
    if value is True:
        return "yes"
    if value is False:
        return "no"
    value = str(value or "unknown").lower()
    if value not in VERDICTS:
        raise ValueError(f"licenses.yaml: verdict must be yes/no/unknown, not {value!r}")
    return value


@functools.lru_cache(maxsize=1)
def _table() -> tuple[dict[str, License], dict[str, str], dict[str, str]]:
    text = resources.files("openseason.catalog").joinpath("data/licenses.yaml").read_text(encoding="utf-8")
    raw = parse_yaml(text, "licenses.yaml", error=OpenseasonError)
    by_id: dict[str, License] = {}
    keys: dict[str, str] = {}
    for entry in raw["licenses"]:
        lic = License(id=entry["id"], name=entry["name"], spdx=entry.get("spdx"),
                      hf=entry["hf"] if "hf" in entry else entry["id"],
                      commercial=_verdict(entry.get("commercial")), research=_verdict(entry.get("research")),
                      share_alike=bool(entry.get("share_alike", False)), kind=entry.get("kind", "license"),
                      conditions=tuple(entry.get("conditions") or ()))
        by_id[lic.id] = lic
        for spelling in [lic.id, lic.name, lic.spdx or "", *(entry.get("aliases") or [])]:
            key = match_key(spelling)
            if key or spelling == "":
                keys.setdefault(key, lic.id)
    org_terms = {match_key(k): v for k, v in (raw.get("output_terms_by_organization") or {}).items()}
    return by_id, keys, org_terms


def get(license_id: str) -> License:
    """The License for one of our ids (KeyError for an id not in the table)."""
    return _table()[0][license_id]


def all_licenses() -> list[License]:
    return list(_table()[0].values())


def normalize(text) -> str:
    """One license string -> our id ('other' when not recognized, 'unknown' when empty/unknown)."""
    if text is None:
        return "unknown"
    text = str(text).strip()
    by_id, keys, _ = _table()
    key = match_key(text)
    if key in keys:
        return keys[key]
    # Trailing words like "license", "v1.0" or a markdown link do not change which license it is.
    stripped = re.sub(r"\[\[.*?\]\]\(.*?\)|\(.*?\)", "", text)
    stripped = re.sub(r"(?i)\b(license|licence|agreement)\b", "", stripped)
    key2 = match_key(stripped)
    if key2 in keys:
        return keys[key2]
    return "other"


_ROLE_WORDS = {
    "weights": ("weight", "model"),
    "code": ("code", "software", "repo"),
    "data": ("data", "dataset"),
}


def split_roles(text, default_role: str) -> dict[str, str]:
    """Split a possibly composite license string into {role: id}.

    "LLaMa License (model weights), GPLv3 (code)" -> {"weights": "llama-research-license", "code": "gpl-3.0"}.
    A part without a role annotation goes to `default_role` (weights for models, data for datasets).
    """
    if text is None:
        return {default_role: "unknown"}
    text = str(text).strip()
    whole = normalize(text)
    if whole not in ("other",) or "(" not in text:
        return {default_role: whole}
    out: dict[str, str] = {}
    for part in re.split(r",\s*(?![^()]*\))", text):
        m = re.match(r"\s*(.*?)\s*\((.*?)\)\s*$", part)
        body, note = (m.group(1), m.group(2).lower()) if m else (part, "")
        role = next((r for r, words in _ROLE_WORDS.items() if any(w in note for w in words)), default_role)
        out.setdefault(role, normalize(body))
    return out


def output_terms_for(organization: Optional[str], access: Optional[str]) -> Optional[str]:
    """Terms that govern outputs of a hosted (not openly released) model of this organization."""
    if not organization or (access or "").lower() == "open":
        return None
    return _table()[2].get(match_key(organization))


def describe(license_id: str) -> str:
    lic = get(license_id)
    return f"{lic.id} ({lic.name})" if lic.id not in lic.name.lower() else lic.name
