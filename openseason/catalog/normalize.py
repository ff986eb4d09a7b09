"""Turn a source record (Ecosystem Graphs YAML, our built-in YAML, a parsed card) into an Asset.

Values may be scalars or {value, explanation}. Every source field lands somewhere: a schema field,
`explanations` (the why), or `extra` (fields the schema does not know). Problems that do not stop
the import (a {value, explanation} with no value, a value at the wrong level) are returned as
messages so the importer can report them with file and asset.
"""
from __future__ import annotations

from typing import Any, Optional

from . import licenses as lic
from .schema import (RELATIONS, TYPES, Asset, Dependency, as_text, normalize_access, parse_date, parse_params,
                     parse_tokens, unwrap)

_TEXT_FIELDS = ("organization", "description", "url", "modality", "size", "intended_uses", "prohibited_uses",
                "training_hardware", "training_time", "training_emissions", "training_cost", "hub_id",
                "base_model", "base_relation", "finetune_method", "finetune_data", "family", "license_notes")
_LICENSE_FIELDS = ("weights_license", "code_license", "data_license", "output_terms")
_NUMBER_FIELDS = ("params", "tokens", "training_tokens")


def asset_from_record(raw: dict, *, source: str, origin: Optional[str] = None,
                      default_type: str = "model") -> tuple[Asset, list[str]]:
    """(Asset, problems) for one source record; never drops a field."""
    problems: list[str] = []
    explanations: dict[str, str] = {}
    values: dict[str, Any] = {}
    for key, raw_value in raw.items():
        value, why = unwrap(raw_value)
        if why:
            explanations[key] = why
        if isinstance(raw_value, dict) and "value" not in raw_value and "explanation" in raw_value:
            problems.append(f"field {key!r} has an explanation but no value")
        values[key] = value

    name = as_text(values.pop("name", None))
    asset = Asset(name=name or "", source=source, origin=origin)
    if not name:
        problems.append("asset has no name")
    a_type = (as_text(values.pop("type", None)) or default_type).lower()
    if a_type not in TYPES:
        problems.append(f"unknown type {a_type!r} (expected one of {', '.join(TYPES)}); kept as given")
    asset.type = a_type
    asset.created_date = parse_date(values.get("created_date"))
    if values.get("created_date") is not None and asset.created_date is None:
        problems.append(f"created_date {values.get('created_date')!r} is not a date; kept in extra")
        asset.extra["created_date"] = as_text(values.get("created_date"))
    values.pop("created_date", None)
    asset.access = normalize_access(values.pop("access", None))
    asset.license = as_text(values.pop("license", None))

    deps = values.pop("dependencies", None) or []
    if isinstance(deps, (str, dict)):
        deps = [deps]
    for dep in deps:
        if isinstance(dep, dict):
            relation = str(dep.get("relation") or "depends")
            if relation not in RELATIONS:
                problems.append(f"dependency {dep.get('name')!r}: unknown relation {relation!r}")
            asset.dependencies.append(Dependency(str(dep.get("name")), relation, dep.get("note")))
        elif dep is not None and str(dep).strip():
            asset.dependencies.append(Dependency(str(dep).strip(), "depends"))

    for key in _TEXT_FIELDS:
        if key in values:
            setattr(asset, key, as_text(values.pop(key)))
    for key in _LICENSE_FIELDS:
        if key in values:
            val = as_text(values.pop(key))
            setattr(asset, key, lic.normalize(val) if val is not None else None)
    for key in _NUMBER_FIELDS:
        if key in values and values[key] is not None:
            setattr(asset, key, float(values.pop(key)))
    if values.get("records") is not None:
        asset.records = int(values.pop("records"))
    for key in ("aliases", "datasets"):
        if key in values:
            val = values.pop(key) or []
            setattr(asset, key, [str(v) for v in (val if isinstance(val, list) else [val])])
    if "evaluations" in values:
        asset.evaluations = list(values.pop("evaluations") or [])
    if "value" in values:
        # Seen upstream: a {value:} indented one level too far out ends up as a field of the asset.
        problems.append(f"stray top-level 'value: {as_text(values['value'])}' (probably belongs to a field above)")
    asset.extra.update({k: (as_text(v) if not isinstance(v, (list, dict, int, float, bool)) else v)
                        for k, v in values.items()})
    asset.explanations = explanations
    return finish_asset(asset), problems


def finish_asset(asset: Asset) -> Asset:
    """Fill the derived fields: license ids per role from the raw text, parsed sizes, output terms."""
    default_role = {"model": "weights", "dataset": "data"}.get(asset.type, "weights")
    if asset.license is not None or not any(asset.licenses_by_role().values()):
        roles = lic.split_roles(asset.license, default_role)
        for role, license_id in roles.items():
            attr = f"{role}_license"
            if getattr(asset, attr) is None:
                setattr(asset, attr, license_id)
    if asset.params is None and asset.type == "model":
        asset.params = parse_params(asset.size)
    if asset.tokens is None:
        asset.tokens = parse_tokens(asset.size)
    if asset.output_terms is None and asset.type in ("model", "application"):
        asset.output_terms = lic.output_terms_for(asset.organization, asset.access)
    if asset.base_model and not any(d.name == asset.base_model for d in asset.dependencies):
        asset.dependencies.insert(0, Dependency(asset.base_model, asset.base_relation or "finetune"))
    for ds in asset.datasets:
        if not any(d.name == ds for d in asset.dependencies):
            asset.dependencies.append(Dependency(ds, "trained_on"))
    return asset
