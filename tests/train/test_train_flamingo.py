"""`finetune --method flamingo --vision ENCODER` on few-shot episodes of the synthetic image suite: only the
resampler, the cross-attention blocks and the two new token rows train, exact resume after kill -9,
and the checkpoint loads into LLM and answers a few-shot conversation with several images."""
from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from openseason.checkpoint import load_model
from openseason.errors import ConfigError
from openseason.train.finetune import finetune

from .helpers_train import assert_same_weights, kill_finetune_after_checkpoint, make_base, make_vision_encoder

ARGS = dict(max_steps=4, save_every=2, micro_batch_size=2, grad_accum=2, seed=3, lr=1e-2, warmup_steps=1,
            eval_every=2, xattn_every=2, perceiver_depth=1, num_latents=4, val_size=2)


@pytest.fixture(scope="module")
def parts(tmp_path_factory, tiny_tokenizer):
    from openseason.data.episodes import write_episodes
    from openseason.data.image_tasks import write_suite

    root = tmp_path_factory.mktemp("flamingo")
    write_suite(root / "suite", n=16, n_eval=4, size=32, families=["shape"])
    data = write_episodes(root / "suite" / "train", root / "episodes", ["shape", "color"], n=12, shots=(0, 1, 2))
    return {"base": make_base(root / "base", tiny_tokenizer), "encoder": make_vision_encoder(root / "encoder"),
            "data": data, "suite": root / "suite"}


def test_episodes_shape(parts):
    rows = [json.loads(line) for line in (parts["data"] / "conversations.jsonl").read_text().splitlines()]
    assert len(rows) == 12 and {r["meta"]["shots"] for r in rows} <= {0, 1, 2}
    row = rows[0]
    images = [p for m in row["messages"] if isinstance(m["content"], list) for p in m["content"] if p["type"] == "image"]
    assert len(images) == row["meta"]["shots"] + 1
    assert (parts["data"] / images[0]["path"]).exists()
    assert row["messages"][-1]["content"] == row["meta"]["label"]


def test_sigkill_then_resume_gives_identical_weights_and_only_flamingo_parts_train(tmp_path, parts):
    args = {**ARGS, "vision": str(parts["encoder"])}
    reference = finetune(parts["base"], parts["data"], "flamingo", tmp_path / "ref", progress=False, register=False,
                         **args)
    run = kill_finetune_after_checkpoint(tmp_path, parts["base"], parts["data"], "flamingo", args, step=3)
    resumed = finetune(parts["base"], parts["data"], "flamingo", run, progress=False, register=False, resume="auto",
                       **args)
    assert resumed["steps"] == 4
    got_w = assert_same_weights(reference["final"], resumed["final"])
    assert all(k.startswith("perceiver.") or ".xattn." in k or k in ("embed.rows", "lm_head.rows") for k in got_w)
    assert "embed.rows" in got_w and any(".xattn.attn_gate" in k for k in got_w)
    # every second layer, as asked; the gates moved off zero
    n_layer = load_model(parts["base"]).config.n_layer
    assert {k.split(".")[1] for k in got_w if k.startswith("blocks.")} == {str(i) for i in range(1, n_layer, 2)}
    assert any(float(got_w[k].abs().max()) > 0 for k in got_w if k.endswith("attn_gate"))
    options = json.loads((resumed["final"] / "peft.json").read_text())["methods"][0]["options"]
    assert options["every"] == 2 and options["token_ids"] == sorted(options["token_ids"]) and len(options["token_ids"]) == 2


def test_checkpoint_answers_a_few_shot_conversation(tmp_path, parts):
    from openseason.data.interleaved import few_shot_episode
    from openseason.generation.llm import LLM

    result = finetune(parts["base"], parts["data"], "flamingo", tmp_path / "run", progress=False, register=False,
                      **{**ARGS, "vision": str(parts["encoder"]), "max_steps": 2, "save_every": None,
                         "eval_every": None})
    llm = LLM.load(result["final"])
    assert llm.model.media is not None and llm.tokenizer.token_to_id("<image>") == llm.model.media_token_id
    images = sorted((parts["suite"] / "eval" / "images").glob("*.png"))
    part = lambda p: {"type": "image", "path": str(p)}   # noqa: E731
    messages = few_shot_episode([(part(images[0]), "circle"), (part(images[1]), "square")], part(images[2]))
    ids, media, _, stop_ids = llm.chat_inputs(messages)
    assert len(media) == 3 and llm.tokenizer.token_to_id("<|endofchunk|>") in stop_ids
    text = llm.chat(messages, max_new_tokens=4)
    assert isinstance(text, str)
    # the reloaded model is the trained one
    again = load_model(result["final"])
    stored = load_file(str(result["final"] / "peft_weights.safetensors"))
    assert torch.equal(again.embed.rows, stored["embed.rows"])


def test_flamingo_options_are_checked(tmp_path, parts):
    run = lambda method, **kw: finetune(parts["base"], parts["data"], method, tmp_path / "x", progress=False,  # noqa: E731
                                        register=False, max_steps=1, **kw)
    with pytest.raises(ConfigError, match="needs --vision"):
        run("flamingo")
    with pytest.raises(ConfigError, match="--xattn-every does not apply to --method minigpt4"):
        run("minigpt4", vision=str(parts["encoder"]), xattn_every=2)
    with pytest.raises(ConfigError, match="--mm-mode does not apply to --method flamingo"):
        run("flamingo", vision=str(parts["encoder"]), mm_mode="paper")
    with pytest.raises(ConfigError, match="--train-on does not apply"):
        run("flamingo", vision=str(parts["encoder"]), train_on="all")
