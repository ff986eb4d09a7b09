"""Images in use: LLM.chat with image parts, the OpenAI API's image_url parts (through the official
`openai` client), the edge rules (sources, sizes, counts), rails reading the text, `chat` with /image."""
from __future__ import annotations

import base64
import io
import json
from pathlib import Path

import httpx
import openai
import pytest
import torch

from openseason.generation.llm import LLM
from openseason.train.finetune import finetune

from ..train.helpers_train import make_base, make_mm_prepared, make_vision_encoder
from .conftest import start_server

QUESTION = "What color is the square?"


@pytest.fixture(scope="module")
def mm(tmp_path_factory, tiny_tokenizer):
    root = tmp_path_factory.mktemp("mm")
    base = make_base(root / "base", tiny_tokenizer)
    encoder = make_vision_encoder(root / "encoder")
    data = make_mm_prepared(root / "data", n_images=8, n_text=4)
    run = finetune(base, data, "minigpt4", root / "run", progress=False, register=False, max_steps=2,
                   micro_batch_size=4, vision=str(encoder), lr=0.05)
    return {"root": root, "base": base, "ckpt": run["final"], "data": data}


def image_message(path: Path) -> list[dict]:
    return [{"role": "user", "content": [{"type": "image", "path": str(path)}, {"type": "text", "text": QUESTION}]}]


def reference_greedy(llm: LLM, messages, n: int) -> list[int]:
    """Greedy tokens by full forwards over the spliced embeddings (no cache, no engine)."""
    ids, media, _, _ = llm.chat_inputs(messages)
    model = llm.model
    pixels = torch.stack([p for p, _ in media])
    rows = torch.zeros(len(media), dtype=torch.long)
    starts = torch.tensor([s for _, s in media])
    out = []
    with torch.no_grad():
        for _ in range(n):
            x = torch.tensor([ids + out])
            embeds, extras = model.media.inputs(model, x, pixels, rows, starts)
            logits = model(x, inputs_embeds=embeds, extras=extras)[0, -1, :llm.tokenizer.vocab_size]
            out.append(int(logits.argmax()))   # the engine never picks ids the tokenizer cannot decode
    return out


def test_llm_chat_with_an_image_decodes_like_full_forwards(mm):
    llm = LLM.load(mm["ckpt"])
    messages = image_message(mm["data"] / "images" / "0.png")
    completion = llm.complete(*llm.chat_inputs(messages)[:1], media=llm.chat_inputs(messages)[1], max_new_tokens=6,
                              ignore_eos=True)
    assert completion.token_ids == reference_greedy(llm, messages, 6)
    # the image matters: another image, another prompt embedding
    a = llm.chat_inputs(messages)[1][0][0]
    b = llm.chat_inputs(image_message(mm["data"] / "images" / "1.png"))[1][0][0]
    assert not torch.equal(a, b)
    assert isinstance(llm.chat(messages, max_new_tokens=4), str)
    # a text-only model refuses images with a clear error
    plain = LLM.load(mm["base"])
    with pytest.raises(Exception, match="takes no images"):
        plain.chat(messages)


def data_url(path: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode()


@pytest.fixture(scope="module")
def live_mm(mm):
    allowed = mm["root"] / "allowed"
    allowed.mkdir()
    (allowed / "a.png").write_bytes((mm["data"] / "images" / "0.png").read_bytes())
    seen = []

    from openseason.serve.app import Hooks

    def check_input(messages):
        seen.append(json.loads(json.dumps(messages)))
        return None

    server, engine, settings = start_server(mm["ckpt"], max_images=2, max_image_bytes=20_000,
                                            allow_image_paths=allowed, hooks=Hooks(check_input=check_input))
    yield {"server": server, "allowed": allowed, "seen": seen, **mm}
    server.close()
    engine.close()


def test_openai_client_sends_an_image_url_part(live_mm):
    client = openai.OpenAI(base_url=live_mm["server"].url + "/v1", api_key="unused", max_retries=0, timeout=60)
    image = live_mm["data"] / "images" / "0.png"
    reply = client.chat.completions.create(
        model="final", max_tokens=6, temperature=0,
        messages=[{"role": "user", "content": [{"type": "image_url", "image_url": {"url": data_url(image)}},
                                               {"type": "text", "text": QUESTION}]}])
    llm = LLM.load(live_mm["ckpt"])
    assert reply.choices[0].message.content == llm.chat(image_message(image), max_new_tokens=6)
    # the rails saw the text of the multimodal turn, not the image
    assert live_mm["seen"][-1] == [{"role": "user", "content": QUESTION}]


def post(live_mm, parts):
    body = {"model": "final", "max_tokens": 2, "messages": [{"role": "user", "content": parts}]}
    return httpx.post(live_mm["server"].url + "/v1/chat/completions", json=body, timeout=60)


def image_part(url):
    return {"type": "image_url", "image_url": {"url": url}}


def test_image_sources_and_limits_are_4xx_naming_the_problem(live_mm, tmp_path):
    allowed = live_mm["allowed"]
    ok = post(live_mm, [image_part(str(allowed / "a.png")), {"type": "text", "text": "hi"}])
    assert ok.status_code == 200, ok.text
    assert post(live_mm, [image_part((allowed / "a.png").as_uri())]).status_code == 200
    outside = tmp_path / "b.png"
    outside.write_bytes((allowed / "a.png").read_bytes())
    cases = [
        ([image_part(str(outside))], 400, "invalid_image_url"),
        ([image_part(str(allowed / ".." / "data" / "images" / "0.png"))], 400, "invalid_image_url"),
        ([image_part("https://example.com/cat.png")], 400, "invalid_image_url"),
        ([image_part("data:image/png;base64,%%%")], 400, "invalid_image_url"),
        ([image_part("data:text/plain;base64,aGk=")], 400, "invalid_image_url"),
        ([image_part("data:image/png;base64," + "A" * 40_000)], 413, "image_too_large"),
        ([image_part(data_url(allowed / "a.png"))] * 3, 400, "too_many_images"),
        ([image_part("data:image/png;base64," + base64.b64encode(b"not an image").decode())], 400, "invalid_value"),
    ]
    for parts, status, code in cases:
        r = post(live_mm, parts)
        assert r.status_code == status, (parts[0]["image_url"]["url"][:60], r.text)
        assert r.json()["error"]["code"] == code
    # adapter-v2-mm-style limits and images in the wrong role are 400 too
    body = {"model": "final", "messages": [{"role": "assistant", "content": [image_part(data_url(allowed / "a.png"))]}]}
    r = httpx.post(live_mm["server"].url + "/v1/chat/completions", json=body, timeout=60)
    assert r.status_code == 400 and "only user messages" in r.json()["error"]["message"]


def test_a_text_only_server_refuses_images(mm):
    server, engine, _ = start_server(mm["base"])
    try:
        body = {"model": "base", "messages": [{"role": "user", "content": [image_part(
            data_url(mm["data"] / "images" / "0.png"))]}]}
        r = httpx.post(server.url + "/v1/chat/completions", json=body, timeout=60)
        assert r.status_code == 400 and r.json()["error"]["code"] == "images_not_supported"
    finally:
        server.close()
        engine.close()


def test_terminal_chat_attaches_an_image(mm):
    from openseason.generation.engine import Engine
    from openseason.serve.chat import ChatSession, run_repl

    llm = LLM.load(mm["ckpt"])
    engine = Engine(llm.model, llm.tokenizer, max_batch=1)
    try:
        session = ChatSession(engine, llm.chat_format, max_new_tokens=4, temperature=0)
        image = mm["data"] / "images" / "2.png"
        out = io.StringIO()
        run_repl(session, io.StringIO(f"/image {image}\n{QUESTION}\n/image /no/such.png\n/history\n"), out)
        text = out.getvalue()
        assert f"(image {image} goes with your next message)" in text
        assert f"user: [image] {QUESTION}" in text
        assert "(error:" in text   # the missing file, at once
        assert session.turns[0][1] == llm.chat(image_message(image), max_new_tokens=4).strip()
    finally:
        engine.close()


def test_web_page_attaches_an_image_in_chromium(live_mm):
    """The page offers the image picker for a multimodal model, sends the file as an image_url part with
    the next message, shows it, and the answer is the API's answer for that image and text."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import WebDriverWait

    from .test_serve_web import chromium, close_chromium

    url = live_mm["server"].url
    image = live_mm["data"] / "images" / "3.png"
    driver = chromium()
    try:
        driver.get(url + "/")
        wait = WebDriverWait(driver, 60)
        wait.until(lambda d: d.find_element(By.ID, "model").get_attribute("data-ready") == "true")
        assert driver.find_element(By.ID, "attach").is_displayed()
        driver.execute_script("document.getElementById('max-tokens').value = '5';"
                              "document.getElementById('temperature').value = '0';")
        driver.find_element(By.ID, "image").send_keys(str(image))
        wait.until(lambda d: d.find_element(By.ID, "attached").get_attribute("data-ready") == "true")
        box = driver.find_element(By.ID, "input")
        box.send_keys(QUESTION)
        box.send_keys(Keys.ENTER)
        wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, ".msg.assistant[data-done='true']"))
        assert not driver.find_elements(By.CSS_SELECTOR, ".msg.error")
        shown = driver.find_element(By.CSS_SELECTOR, ".msg.user img").get_attribute("src")
        assert shown == data_url(image)
        assert not driver.find_element(By.ID, "attached").is_displayed()   # used up by that message
        answer = driver.find_element(By.CSS_SELECTOR, ".msg.assistant").get_attribute("textContent")
        expected = httpx.post(url + "/v1/chat/completions", timeout=60, json={
            "model": "final", "max_tokens": 5, "temperature": 0, "messages": [{"role": "user", "content": [
                image_part(data_url(image)), {"type": "text", "text": QUESTION}]}]}).json()
        assert answer == expected["choices"][0]["message"]["content"]
        # what the server says about images, which the page reads
        info = httpx.get(url + "/v1/models").json()["data"][0]
        assert info["images"] == {"max_per_request": 2, "max_bytes": 20_000}
    finally:
        close_chromium(driver)
