"""`finetune --method minigpt4|adapter-v2-mm --vision ENCODER`: mixed image/text batches through the one
loop, checkpoints with only the trained parts, exact resume after kill -9, and the errors."""
from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from openseason.checkpoint import load_model
from openseason.errors import CheckpointError, ConfigError, DataError
from openseason.train.finetune import finetune

from .helpers_train import assert_same_weights, kill_finetune_after_checkpoint, make_base, make_mm_prepared, make_vision_encoder

ARGS = dict(max_steps=5, save_every=2, micro_batch_size=4, grad_accum=2, seed=3, lr=1e-2, warmup_steps=1,
            eval_every=2, adapter_prompt_length=3, adapter_layers=1)


@pytest.fixture(scope="module")
def parts(tmp_path_factory, tiny_tokenizer):
    root = tmp_path_factory.mktemp("mmtrain")
    return {"base": make_base(root / "base", tiny_tokenizer), "encoder": make_vision_encoder(root / "encoder"),
            "data": make_mm_prepared(root / "data", n_images=12, n_text=6)}


# released mode differs from paper mode only in what the per-row extras hold (tests/peft covers both)
CASES = [("minigpt4", {}), ("adapter-v2-mm", {"mm_mode": "released"})]


def _args(method, extra, encoder):
    args = {**ARGS, **extra, "vision": str(encoder)}
    if method == "minigpt4":
        args = {k: v for k, v in args.items() if not k.startswith("adapter_")}
    return args


@pytest.mark.parametrize("method,extra", CASES)
def test_sigkill_then_resume_gives_identical_weights(tmp_path, parts, method, extra):
    args = _args(method, extra, parts["encoder"])
    reference = finetune(parts["base"], parts["data"], method, tmp_path / "ref", progress=False, register=False,
                         **args)
    run = kill_finetune_after_checkpoint(tmp_path, parts["base"], parts["data"], method, args, step=3)
    resumed = finetune(parts["base"], parts["data"], method, run, progress=False, register=False, resume="auto",
                       **args)
    assert resumed["steps"] == 5
    got_w = assert_same_weights(reference["final"], resumed["final"])
    # only the trained parts are stored: no encoder, no base weights
    assert not any(k.startswith("media.tower") or k == "embed.weight" for k in got_w)
    if method == "minigpt4":
        assert set(got_w) == {"media.proj.weight", "media.proj.bias"}
    # the trained parts moved, and the checkpoint references the encoder and the base with fingerprints
    peft = json.loads((resumed["final"] / "peft.json").read_text())
    options = peft["methods"][0]["options"]
    assert options["vision"] == str(parts["encoder"].resolve())
    assert options["vision_fingerprint"].startswith("sampled-v1:") and peft["base_fingerprint"]
    card = json.loads((resumed["final"] / "run_card.json").read_text())
    assert card["multimodal"]["vision_fingerprint"] == options["vision_fingerprint"]


def test_checkpoint_loads_and_checks_the_encoder_fingerprint(tmp_path, parts):
    args = _args("minigpt4", {}, parts["encoder"])
    result = finetune(parts["base"], parts["data"], "minigpt4", tmp_path / "run", progress=False, register=False,
                      **{**args, "max_steps": 1, "save_every": None, "eval_every": None})
    model = load_model(result["final"])
    stored = load_file(str(result["final"] / "peft_weights.safetensors"))
    assert torch.equal(model.media.proj.weight, stored["media.proj.weight"])
    # the encoder changed on disk: refused, naming it
    make_vision_encoder(tmp_path / "other", seed=1)
    peft = json.loads((result["final"] / "peft.json").read_text())
    peft["methods"][0]["options"]["vision"] = str(tmp_path / "other")
    (result["final"] / "peft.json").write_text(json.dumps(peft))
    with pytest.raises(CheckpointError, match="not the one this checkpoint was trained with"):
        load_model(result["final"])


def test_options_that_do_not_apply_are_errors(tmp_path, parts):
    run = lambda method, **kw: finetune(parts["base"], parts["data"], method, tmp_path / "x", progress=False,  # noqa: E731
                                        register=False, max_steps=1, **kw)
    with pytest.raises(ConfigError, match="needs --vision"):
        run("minigpt4")
    with pytest.raises(ConfigError, match="--vision does not apply to --method lora"):
        run("lora", vision=str(parts["encoder"]))
    with pytest.raises(ConfigError, match="--mm-mode does not apply to --method minigpt4"):
        run("minigpt4", vision=str(parts["encoder"]), mm_mode="paper")
    with pytest.raises(ConfigError, match="--adapter-prompt-length does not apply to --method minigpt4"):
        run("minigpt4", vision=str(parts["encoder"]), adapter_prompt_length=4)
    with pytest.raises(ConfigError, match="early_layers applies"):
        run("adapter-v2-mm", vision=str(parts["encoder"]), mm_mode="released", early_layers=1)
    with pytest.raises(ConfigError, match="--packing"):
        run("minigpt4", vision=str(parts["encoder"]), packing=True)
    # image records with a text-only method: named, not silently dropped
    with pytest.raises(DataError, match="has images but the model takes none"):
        run("lora")


def test_cli_finetune_minigpt4(tmp_path, parts, capsys):
    from openseason.cli import main

    code = main(["finetune", str(parts["base"]), "--data", str(parts["data"]), "--out", str(tmp_path / "cli"),
                 "--method", "minigpt4", "--vision", str(parts["encoder"]), "--max-steps", "1"])
    assert code == 0
    assert (tmp_path / "cli" / "final" / "peft_weights.safetensors").exists()
    code = main(["finetune", str(parts["base"]), "--data", str(parts["data"]), "--out", str(tmp_path / "cli2"),
                 "--method", "minigpt4", "--max-steps", "1"])
    assert code == 2 and "needs --vision" in capsys.readouterr().err
