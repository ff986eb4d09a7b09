"""One source of truth for options: the dataclasses in train/options.py drive the API, recipes and CLI."""
from __future__ import annotations

import dataclasses
import inspect

import pytest

from openseason.cli import build_parser
from openseason.errors import ConfigError
from openseason.peft import METHOD_ALIASES, METHODS, canonical_method
from openseason.train.finetune import finetune
from openseason.train.options import (METHOD_LR, FinetuneOptions, PretrainOptions, QuickstartOptions, option_names,
                                      resolve)
from openseason.train.pretrain import pretrain


def _flags(verb: str) -> dict[str, object]:
    sub = next(a for a in build_parser()._actions if a.dest == "command")
    return {a.dest: a for a in sub.choices[verb]._actions}


@pytest.mark.parametrize("verb, cls", [("finetune", FinetuneOptions), ("pretrain", PretrainOptions),
                                       ("quickstart", QuickstartOptions)])
def test_cli_flags_are_the_dataclass_fields(verb, cls):
    flags = _flags(verb)
    for f in dataclasses.fields(cls):
        action = flags[f.name]
        assert action.option_strings == ["--" + f.name.replace("_", "-")]
        assert action.default is None                     # "not given": a recipe value is not overridden
        assert f.metadata["doc"].split(" (")[0].replace("%", "%%") in action.help
    assert set(option_names(cls)) <= set(flags)


def test_defaults_live_only_in_the_dataclasses():
    for fn in (finetune, pretrain):
        params = inspect.signature(fn).parameters
        duplicated = set(params) & set(option_names(FinetuneOptions) + option_names(PretrainOptions))
        assert duplicated <= {"method"}, f"{fn.__name__} repeats option defaults: {duplicated}"
    assert inspect.signature(finetune).parameters["method"].default is None
    from openseason.train.quickstart import quickstart

    assert not set(inspect.signature(quickstart).parameters) & set(option_names(QuickstartOptions))


def test_cli_parses_into_the_api_options():
    args = build_parser().parse_args(["pretrain", "--config", "tiny-neox", "--data", "d", "--out", "o",
                                      "--max-steps", "7", "--gradient-checkpointing"])
    assert args.max_steps == 7 and args.gradient_checkpointing is True and args.seed is None
    resolved = resolve(PretrainOptions, {n: getattr(args, n) for n in option_names(PretrainOptions)})
    assert (resolved.max_steps, resolved.seed, resolved.micro_batch_size) == (7, 1234, 8)


def test_method_aliases_are_accepted_everywhere():
    assert set(METHOD_LR) == set(METHODS)
    for alias, name in METHOD_ALIASES.items():
        args = build_parser().parse_args(["finetune", "ckpt", "--data", "d", "--out", "o", "--method", alias])
        assert canonical_method(args.method) == name
    with pytest.raises(ConfigError, match="unknown finetuning method 'qlora'"):
        canonical_method("qlora")


def test_resolution_order_and_errors():
    o = resolve(FinetuneOptions, {"lr": 0.5, "seed": None}, {"lr": 0.1, "seed": 7, "lora_rank": 4})
    assert (o.lr, o.seed, o.lora_rank, o.lora_alpha) == (0.5, 7, 4, 16.0)
    with pytest.raises(ConfigError, match=r"unknown finetune options \['learning_rate'\]"):
        resolve(FinetuneOptions, {"learning_rate": 1.0}, what="finetune options")
    with pytest.raises(ConfigError, match="train_on must be one of assistant, all"):
        resolve(FinetuneOptions, {"train_on": "everything"})


def test_api_rejects_unknown_options(tmp_path):
    with pytest.raises(ConfigError, match="unknown pretrain options"):
        pretrain("tiny-neox", tmp_path, tmp_path / "o", max_stepz=1)
    with pytest.raises(ConfigError, match="unknown finetune options"):
        finetune(tmp_path, tmp_path, out=tmp_path / "o", lora_rnk=2)
