"""Interleaved documents for Flamingo: `<image>` / `<|endofchunk|>` added to a tokenizer, conversation and
MMC4 records, few-shot episodes, and labels equal to the ones OpenFlamingo's own training step builds."""
from __future__ import annotations

import types

import pytest
import torch

from openseason.data.interleaved import (END_OF_CHUNK, MEDIA_TOKEN, InterleavedDoc, add_media_tokens, doc_example,
                                         encode_doc, few_shot_episode, flamingo_labels, from_conversation, from_mmc4)
from openseason.errors import DataError


@pytest.fixture
def tok(tiny_tokenizer):
    import copy

    t = copy.deepcopy(tiny_tokenizer)
    media, eoc = add_media_tokens(t)
    return t, media, eoc


def test_tokens_added_once_and_matched_whole(tok):
    t, media, eoc = tok
    assert (media, eoc) == (t.vocab_size - 1, t.vocab_size - 2)      # after the vocabulary, released order
    assert add_media_tokens(t) == (media, eoc)                          # idempotent
    ids = t.encode(f"{MEDIA_TOKEN}The fox{END_OF_CHUNK}{MEDIA_TOKEN}dog")
    assert ids.count(media) == 2 and ids.count(eoc) == 1 and ids[0] == media
    assert t.decode(ids) == "The foxdog"                                # special: left out of decoded text


def test_conversation_with_image_parts():
    doc = from_conversation([
        {"role": "user", "content": [{"type": "image", "path": "a.png"}, {"type": "text", "text": "What shape?"}]},
        {"role": "assistant", "content": "a circle"},
        {"role": "user", "content": [{"type": "text", "text": "And this?"}, {"type": "image", "path": "b.png"}]},
        {"role": "assistant", "content": "a square"}])
    assert doc.images == ["a.png", "b.png"]
    assert doc.text == f"{MEDIA_TOKEN} What shape? a circle{END_OF_CHUNK}And this? {MEDIA_TOKEN} a square{END_OF_CHUNK}"


@pytest.mark.parametrize("content,match", [
    ([{"type": "audio", "path": "x"}], "type"),
    ([{"type": "text", "text": "sneaky <image>"}], "reserved marker"),
])
def test_bad_conversation_parts(content, match):
    with pytest.raises(DataError, match=match) as err:
        from_conversation([{"role": "user", "content": content}], where="data.jsonl:3")
    assert "data.jsonl:3" in str(err.value)


def test_mmc4_document_as_the_released_preprocessing_shapes_it():
    doc = from_mmc4({"text_list": ["Intro text.", "A red circle.", "More words.", "A blue square."],
                     "image_info": [{"image_name": "1.jpg", "matched_text_index": 1, "matched_sim": 0.3},
                                    {"image_name": "3.jpg", "matched_text_index": 3, "matched_sim": 0.3}]})
    assert doc.images == ["1.jpg", "3.jpg"]
    assert doc.text == (f"Intro text.{MEDIA_TOKEN}A red circle. More words.{END_OF_CHUNK}{MEDIA_TOKEN}"
                        f"A blue square.{END_OF_CHUNK}")
    with pytest.raises(DataError, match="matched_text_index") as err:
        from_mmc4({"text_list": ["a"], "image_info": [{"image_name": "x", "matched_text_index": 4}]}, where="mmc4.jsonl:9")
    assert "mmc4.jsonl:9 image_info[0]" in str(err.value)


def test_few_shot_episode_is_a_conversation_in_the_flamingo_style(tok):
    from openseason.prompts import chat_pieces

    t, media, eoc = tok
    image = lambda name: {"type": "image", "path": name}   # noqa: E731
    messages = few_shot_episode([(image("a.png"), "circle"), (image("b.png"), "square")], image("q.png"))
    doc = from_conversation(messages)
    assert doc.text == (f"{MEDIA_TOKEN} Output: circle{END_OF_CHUNK}{MEDIA_TOKEN} Output: square{END_OF_CHUNK}"
                        f"{MEDIA_TOKEN} Output:")
    assert doc.images == ["a.png", "b.png", "q.png"]
    # the ids LLM.chat and training build from the conversation (one slot per image) are the document's
    ids, _ = encode_doc(doc, t, max_length=100, eos=False)
    pieces = chat_pieces(messages, t, "flamingo", add_generation_prompt=True, image_tokens=1, image_token_id=media)
    assert [i for piece, _ in pieces for i in piece] == ids
    assert ids.count(eoc) == 2


def test_truncation_keeps_the_images_whose_slot_survives(tok):
    t, media, _ = tok
    doc = InterleavedDoc(f"{MEDIA_TOKEN}Output:circle{END_OF_CHUNK}{MEDIA_TOKEN}Output:square", ["a.png", "b.png"])
    ids, images = encode_doc(doc, t, max_length=100, eos=False)
    assert ids.count(media) == 2 and images == ["a.png", "b.png"]
    cut, kept = encode_doc(doc, t, max_length=ids.index(media, 1), eos=False)
    assert kept == ["a.png"] and cut == ids[: len(cut)]
    example = doc_example(doc, t, 100)
    assert [im["start"] for im in example["images"]] == [0, ids.index(media, 1)]
    assert example["labels"][0] == -100 and example["labels"][1] == ids[1]
    with pytest.raises(DataError, match="2 <image> markers but 1 images"):
        InterleavedDoc(f"{MEDIA_TOKEN}{MEDIA_TOKEN}", ["a"])


def released_labels(train_utils, ids: torch.Tensor, media: int, eoc: int, pad: int) -> torch.Tensor:
    """The labels OpenFlamingo's `train_one_epoch` builds for an MMC4 batch: run the released function
    for one step with a model that records what it is given."""
    seen = {}

    class Recorder(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(1))

        def forward(self, vision_x, lang_x, attention_mask, labels):
            seen.setdefault("labels", []).append(labels.clone())
            return (self.w.sum() + 1.0,)

    class Tok:  # what train_one_epoch asks of a Hugging Face tokenizer
        pad_token_id, eos_token = pad, "<|endoftext|>"

        def __call__(self, text, add_special_tokens=False):
            return {"input_ids": [{MEDIA_TOKEN: media, END_OF_CHUNK: eoc}[text]]}

    class Loader(list):
        num_batches = 1

    mask = (ids != pad).long()
    laion = Loader([(torch.zeros(ids.size(0), 3, 2, 2), (ids, mask))])
    mmc4 = Loader([(torch.zeros(ids.size(0), 1, 3, 2, 2), [(r[None], m[None]) for r, m in zip(ids, mask)])])
    args = types.SimpleNamespace(num_epochs=1, precision="fp32", fsdp=False, gradient_accumulation_steps=1,
                                 loss_multiplier_laion=1.0, loss_multiplier_mmc4=1.0, freeze_lm_embeddings=True,
                                 rank=0, report_to_wandb=False, logging_steps=1000)
    model = Recorder()
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    train_utils.train_one_epoch(args, model, 0, laion, mmc4, Tok(), opt, torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0),
                    "cpu", None)
    return seen["labels"][1]          # [0] is the LAION (caption) pass


def test_labels_equal_the_released_training_step(open_flamingo_src):
    media, eoc, pad, eos = 90, 91, 92, 0
    ids = torch.tensor([
        [5, 6, media, 7, 8, eoc, 9, 10, media, 11, eoc, eos, pad, pad],   # text before the first image
        [media, 7, eoc, 9, media, 12, 13, eoc, media, 14, eoc, eos, pad, pad],
        [5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18],                  # no image at all
        [media, 1, eoc, eoc, 2, media, media, 3, eoc, 4, 5, 6, eos, pad],    # repeated markers
    ])
    ours = flamingo_labels(ids, media, eoc, attention_mask=(ids != pad).long())
    assert torch.equal(ours, released_labels(open_flamingo_src.train_utils, ids, media, eoc, pad))
    assert ours[1].tolist()[:4] == [-100, 7, eoc, -100]

