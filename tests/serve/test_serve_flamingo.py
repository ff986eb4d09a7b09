"""A Flamingo checkpoint served: a few-shot conversation with several images (OpenAI image_url parts in
several user turns, through the official client) answers as LLM.chat does; the image count limit holds."""
from __future__ import annotations

import base64

import openai
import pytest

from openseason.data.interleaved import few_shot_episode
from openseason.generation.llm import LLM
from openseason.train.finetune import finetune

from ..train.helpers_train import make_base, make_vision_encoder
from .conftest import start_server


@pytest.fixture(scope="module")
def flamingo_ckpt(tmp_path_factory, tiny_tokenizer):
    from openseason.data.episodes import write_episodes
    from openseason.data.image_tasks import write_suite

    root = tmp_path_factory.mktemp("flamingo-serve")
    write_suite(root / "suite", n=8, n_eval=4, size=32, families=["shape"])
    data = write_episodes(root / "suite" / "train", root / "episodes", ["shape"], n=8, shots=(1, 2))
    run = finetune(make_base(root / "base", tiny_tokenizer), data, "flamingo", root / "run", progress=False,
                   register=False, max_steps=2, micro_batch_size=2, vision=str(make_vision_encoder(root / "enc")),
                   xattn_every=1, perceiver_depth=1, num_latents=4, lr=0.05)
    return run["final"], sorted((root / "suite" / "eval" / "images").glob("*.png"))


def data_url(path) -> str:
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode()


def as_openai(messages):
    """Our image parts as OpenAI image_url parts (data URLs)."""
    out = []
    for m in messages:
        if isinstance(m["content"], list):
            parts = [{"type": "image_url", "image_url": {"url": data_url(p["path"])}} if p["type"] == "image" else p
                     for p in m["content"]]
            out.append({**m, "content": parts})
        else:
            out.append(m)
    return out


def test_few_shot_conversation_with_several_images(flamingo_ckpt):
    ckpt, images = flamingo_ckpt
    part = lambda p: {"type": "image", "path": p}   # noqa: E731
    messages = few_shot_episode([(part(images[0]), "circle"), (part(images[1]), "square")], part(images[2]))
    server, engine, _ = start_server(ckpt, max_images=3)
    try:
        client = openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0, timeout=60)
        reply = client.chat.completions.create(model="final", max_tokens=5, temperature=0, messages=as_openai(messages))
        assert reply.choices[0].message.content == LLM.load(ckpt).chat(messages, max_new_tokens=5)
        four = few_shot_episode([(part(p), "x") for p in images[:3]], part(images[3]))
        with pytest.raises(openai.BadRequestError, match="4 images in one request"):
            client.chat.completions.create(model="final", max_tokens=2, messages=as_openai(four))
    finally:
        server.close()
        engine.close()
