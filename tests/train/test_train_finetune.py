"""finetune/merge through the CLI and the library: the acceptance interface, LLM.load of every kind of
result, token-normalized gradient accumulation, NaN handling, recipes, and adapter-v2 learning."""
from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from openseason.checkpoint import load_model
from openseason.cli import main
from openseason.errors import ConfigError
from openseason.train.finetune import finetune

from .helpers_train import make_base, make_prepared


@pytest.fixture()
def setup(tmp_path, tiny_tokenizer):
    return make_base(tmp_path / "base", tiny_tokenizer), make_prepared(tmp_path / "data")


@pytest.mark.parametrize("method", ["adapter", "lora", "full"])
def test_cli_finetune_and_llm_load(tmp_path, setup, method):
    base, data = setup
    out = tmp_path / "run"
    adapter = ["--adapter-layers", "1", "--adapter-prompt-length", "3"] if method == "adapter" else []
    rc = main(["finetune", str(base), "--data", str(data), "--method", method, "--out", str(out), "--max-steps", "4",
               "--save-every", "2", "--seed", "1", "--micro-batch-size", "2", "--grad-accum", "2", "--resume", "auto",
               *adapter])
    assert rc == 0
    assert (out / "step-000002").is_dir() and (out / "final").is_dir()
    assert (out / "metrics.csv").exists() and (out / "loss.png").exists()
    card = json.loads((out / "final" / "run_card.json").read_text())
    assert card["prompt_style"]["name"] == "plain" and card["method"] == method
    assert card["data"]["train_examples"] + card["data"]["val_examples"] == 64
    peft = method != "full"
    assert (out / "final" / "peft.json").exists() == peft
    if peft:  # only the trainable weights are stored
        stored = load_file(str(out / "final" / "peft_weights.safetensors"))
        assert all(("adapter" in k) or (".lora." in k) for k in stored)

    from openseason import LLM
    llm = LLM.load(out / "final", device="cpu")
    assert llm.prompt_style == "plain"
    text = llm.generate("add 1 and 2\n\n", max_new_tokens=4)
    assert isinstance(text, str)
    trained = load_model(out / "final")
    plain = load_model(base)
    ids = torch.randint(0, 512, (1, 8))
    with torch.no_grad():
        assert not torch.allclose(trained(ids), plain(ids))


def test_merge_lora_checkpoint_matches(tmp_path, setup):
    base, data = setup
    result = finetune(base, data, "lora", tmp_path / "run", max_steps=3, lr=1e-2, lora_targets="all",
                      progress=False, register=False)
    assert main(["merge", str(result["final"]), "--out", str(tmp_path / "merged")]) == 0
    assert not (tmp_path / "merged" / "peft.json").exists()
    ids = torch.randint(0, 512, (2, 10))
    with torch.no_grad():
        torch.testing.assert_close(load_model(tmp_path / "merged")(ids), load_model(result["final"])(ids),
                                   atol=1e-5, rtol=1e-4)


def test_merge_adapter_is_a_clear_error(tmp_path, setup, capsys):
    base, data = setup
    result = finetune(base, data, "adapter", tmp_path / "run", max_steps=1, progress=False, register=False,
                      adapter_layers=1)
    assert main(["merge", str(result["final"]), "--out", str(tmp_path / "merged")]) == 2
    assert "cannot be merged" in capsys.readouterr().err


def test_grad_accum_normalizes_by_all_target_tokens(tmp_path, setup):
    """One step of 2 micro-batches x 2 equals one step of 1 micro-batch x 4 (answers differ in length,
    so averaging per micro-batch would not)."""
    base, data = setup
    common = dict(max_steps=1, lr=1e-2, seed=5, val_size=0, progress=False, register=False)
    one = finetune(base, data, "full", tmp_path / "a", micro_batch_size=4, grad_accum=1, **common)
    two = finetune(base, data, "full", tmp_path / "b", micro_batch_size=2, grad_accum=2, **common)
    wa = load_file(str(one["final"] / "model.safetensors"))
    wb = load_file(str(two["final"] / "model.safetensors"))
    start = load_file(str(base / "model.safetensors"))
    assert not torch.equal(wa["blocks.0.mlp.fc_1.weight"], start["blocks.0.mlp.fc_1.weight"])
    for key in wa:
        torch.testing.assert_close(wa[key], wb[key], atol=1e-4, rtol=1e-3)  # Adam amplifies ~0 gradients
    # The logged loss is total cross-entropy / total target tokens in both runs; a per-micro-batch
    # mean would differ here because the micro-batches hold different numbers of answer tokens.
    loss = lambda run: float((run / "metrics.csv").read_text().splitlines()[1].split(",")[2])  # noqa: E731
    assert loss(tmp_path / "a") == pytest.approx(loss(tmp_path / "b"), abs=1e-5)


def test_compiled_blocks_train_like_eager_ones(tmp_path, setup):
    """--compile (torch.compile of every block) changes the speed, not the run: the same losses as eager
    up to float rounding, and the LoRA weights stored under the same names. (The trained weights are not
    compared: Adam turns a rounding-level gradient into a full step of lr; the gradients are, below.)"""
    base, data = setup
    common = dict(max_steps=3, lr=1e-3, seed=3, micro_batch_size=4, progress=False, register=False)
    eager = finetune(base, data, "lora", tmp_path / "eager", **common)
    compiled = finetune(base, data, "lora", tmp_path / "compiled", compile=True, **common)
    losses = lambda run: [float(r.split(",")[2]) for r in (run / "metrics.csv").read_text().splitlines()[1:]]  # noqa: E731
    first, *rest = losses(tmp_path / "compiled")
    assert first == pytest.approx(losses(tmp_path / "eager")[0], rel=1e-6)
    assert rest == pytest.approx(losses(tmp_path / "eager")[1:], rel=1e-4)
    we = load_file(str(eager["final"] / "peft_weights.safetensors"))
    wc = load_file(str(compiled["final"] / "peft_weights.safetensors"))
    assert sorted(wc) == sorted(we)
    card = json.loads((compiled["final"] / "run_card.json").read_text())
    assert card["train_config"]["compile"] is True


@pytest.mark.parametrize("method,chunk", [("lora", 4096), ("adapter-v2", 4096), ("adapter-v2", 16)])
def test_compiled_blocks_give_the_eager_gradients(setup, method, chunk):
    """compile_blocks (blocks, and the head with its loss, also in checkpointed chunks) gives the eager
    gradients of every trainable tensor."""
    from openseason.peft import apply
    from openseason.train.loop import compile_blocks, token_loss_sum

    base, _ = setup
    torch.manual_seed(0)
    models = [load_model(base), load_model(base)]
    for model in models:
        torch.manual_seed(1)
        apply(model, method)
        with torch.no_grad():   # nonzero LoRA B / adapter gates, so every trainable tensor gets a gradient
            for p in model.parameters():
                if p.requires_grad:
                    p.add_(0.05 * torch.randn(p.shape, generator=torch.Generator().manual_seed(p.numel())))
        model.train()
    compile_blocks(models[1])
    assert models[1]._compiled_head_loss is not None and not hasattr(models[0], "_compiled_head_loss")
    ids = torch.randint(0, 512, (3, 17), generator=torch.Generator().manual_seed(2))
    labels = ids.clone()
    labels[0, :5] = -100
    grads = []
    for model in models:
        loss, n = token_loss_sum(model, {"input_ids": ids, "labels": labels}, chunk=chunk)
        (loss / n).backward()
        grads.append({k: p.grad for k, p in model.named_parameters() if p.requires_grad})
    assert sorted(grads[1]) == sorted(grads[0]) and grads[0]
    for key, grad in grads[0].items():
        assert grad.abs().sum() > 0, key
        torch.testing.assert_close(grads[1][key], grad, atol=1e-6, rtol=1e-4)


def test_nan_loss_stops_and_keeps_last_good_checkpoint(tmp_path, setup):
    from openseason.train import TrainingError

    base, data = setup
    model_holder = {}

    def poison(step, row):
        if step == 2:  # from step 3 on the output head produces NaN
            import openseason.train.loop as loop
            model_holder["hook"] = True

    import openseason.train.objectives.sft as loop  # the SFT objective's loss (the loop's default objective)
    original = loop.token_loss_sum

    def nan_after_two(model, batch, chunk=4096):
        loss, n = original(model, batch, chunk)
        return (loss * float("nan"), n) if model_holder.get("hook") else (loss, n)

    loop.token_loss_sum = nan_after_two
    try:
        with pytest.raises(TrainingError, match="loss is nan at step 3") as err:
            finetune(base, data, "lora", tmp_path / "run", max_steps=6, save_every=2, progress=False,
                     register=False, callbacks=[poison])
    finally:
        loop.token_loss_sum = original
    assert "step-000002" in str(err.value)
    assert (tmp_path / "run" / "step-000002").is_dir() and not (tmp_path / "run" / "final").exists()


def test_recipe_unknown_key_points_at_the_line(tmp_path, setup):
    base, data = setup
    recipe = tmp_path / "r.yaml"
    recipe.write_text("method: lora\nlora_rank: 4\nlearning_rate: 0.1\n")
    with pytest.raises(ConfigError, match=r"r.yaml:3:1: unknown recipe option 'learning_rate'"):
        finetune(base, data, out=tmp_path / "run", config=recipe, max_steps=1)


@pytest.mark.parametrize("recipe", ["lora.yaml", "adapter-v2.yaml", "adapter.yaml", "full.yaml"])
def test_bundled_recipes_load(recipe):
    from pathlib import Path

    from openseason.peft import METHODS
    from openseason.train.options import FinetuneOptions, resolve
    from openseason.train.recipe import load_recipe

    path = Path(__file__).resolve().parents[2] / "recipes" / recipe
    loaded = load_recipe(path, FinetuneOptions)
    assert loaded["method"] in METHODS and loaded["method"] == recipe.removesuffix(".yaml")
    assert resolve(FinetuneOptions, {}, loaded).method == loaded["method"]


def test_adapter_v2_training_lowers_the_loss(tmp_path, setup):
    base, data = setup
    result = finetune(base, data, "adapter-v2", tmp_path / "run", max_steps=30, lr=5e-2, micro_batch_size=8,
                      eval_every=30, val_size=16, adapter_layers=2, progress=False, register=False)
    rows = (tmp_path / "run" / "metrics.csv").read_text().splitlines()[1:]
    first = float(rows[0].split(",")[2])
    assert result["final_loss"] < 0.6 * first, (first, result["final_loss"])
    assert result["val_loss"] < 0.6 * first
