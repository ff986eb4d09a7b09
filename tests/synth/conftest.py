"""Fixtures for the synth tests: a deterministic fake teacher that answers every prompt kind."""
from __future__ import annotations

import hashlib
import random

import pytest

from openseason.generation.client import LLMClient, LLMReply

WORDS = ("river mountain recipe budget poem contract sensor garden violin planet ladder museum protein "
         "algorithm harbor blanket cactus diploma engine festival glacier hammock igloo jacket kettle lantern "
         "magnet notebook orchard pepper quartz rocket saddle tunnel umbrella vessel walnut xylophone yacht zebra "
         "anchor bakery canyon dentist eclipse falcon guitar hydrant island jungle").split()
VERBS = "Describe Summarize Compare Explain List Suggest Rewrite Classify Outline Evaluate Propose Translate".split()


def _rng(prompt: str) -> random.Random:
    return random.Random(hashlib.sha256(prompt.encode()).hexdigest())


def fake_answer(prompt: str) -> str:
    rng = _rng(prompt)
    if prompt.startswith("Decide whether"):
        return " " + rng.choice(["Yes", "No", "No"])
    if prompt.startswith("Each task below is a classification"):
        return "Class label: Positive\nInput: " + " ".join(rng.sample(WORDS, 4)) + \
               "\nClass label: Negative\nInput: " + " ".join(rng.sample(WORDS, 4))
    if prompt.startswith("Write examples"):
        n = rng.randint(1, 7)
        return "\n\n".join(f"Example {i + 1}\nInput: {' '.join(rng.sample(WORDS, 3))}\n"
                           f"Output: {' '.join(rng.sample(WORDS, rng.choice([0, 4, 5])))}" for i in range(n))
    if prompt.startswith("Here is a numbered list"):
        start = int(prompt.rstrip().rsplit("\n", 1)[-1].rstrip("."))
        items = [f"{rng.choice(VERBS)} the {' '.join(rng.sample(WORDS, rng.randint(3, 9)))}." for _ in range(5)]
        return " " + "\n".join(f"{start + i}. {t}" if i else t for i, t in enumerate(items))
    if prompt.startswith("Come up with"):
        start = int(prompt.rstrip().rsplit("\n", 1)[-1].split(".")[0])
        blocks = []
        for i in range(4):
            k = start + i
            inst = f"{rng.choice(VERBS)} the {' '.join(rng.sample(WORDS, rng.randint(3, 8)))}."
            inp = rng.choice(["<noinput>", " ".join(rng.sample(WORDS, 3))])
            blocks.append(f"{'' if i == 0 else f'{k}. Instruction:'} {inst}\n{k}. Input:\n{inp}\n{k}. Output:\n"
                          f"{' '.join(rng.sample(WORDS, 5))}\n")
        return "\n###\n".join(blocks)
    raise AssertionError(f"unexpected prompt kind: {prompt[:60]!r}")


class FakeTeacher(LLMClient):
    name = "fake"

    def _complete_many(self, requests):
        return [LLMReply(fake_answer(r.prompt), "stop", len(r.prompt.split()), 10) for r in requests]


@pytest.fixture
def fake_teacher():
    return FakeTeacher()


@pytest.fixture(scope="session")
def seeds_path(shared_data):
    return shared_data / "self-instruct" / "seed_tasks.jsonl"
