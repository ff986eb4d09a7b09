"""Preference pairs tokenize exactly as SFT and inference do: one shared prompt, no doubled BOS/EOS."""
from __future__ import annotations

import pytest

from openseason.data.preferences import PreferenceData, collate_pairs, tokenize_pair
from openseason.data.sft import IGNORE, tokenize_conversation
from openseason.prompts import STYLES, encode_chat

PROMPT = [{"role": "system", "content": "Be nice."}, {"role": "user", "content": "Hi"},
          {"role": "assistant", "content": "Hello!"}, {"role": "user", "content": "What is 2+2?"}]


@pytest.mark.parametrize("style", sorted(STYLES))
@pytest.mark.parametrize("tok", ["bpe_chat_tokenizer", "sp_chat_tokenizer"])
def test_pair_tokenizes_as_sft_and_inference(style, tok, request):
    tokenizer = request.getfixturevalue(tok)
    ex = tokenize_pair(PROMPT, "4", "The sum is 5.", tokenizer, style)
    assert ex["prompt_ids"] == encode_chat(PROMPT, tokenizer, style)
    sft = tokenize_conversation(PROMPT + [{"role": "assistant", "content": "4"}], tokenizer, style, 10_000)
    full = ex["prompt_ids"] + ex["chosen_ids"]
    assert sft["input_ids"][:len(full)] == full
    # the completion is exactly what SFT puts loss on in the last turn
    last = [i for i, lab in enumerate(sft["labels"]) if lab != IGNORE]
    assert sft["input_ids"][len(ex["prompt_ids"]):last[-1] + 1] == ex["chosen_ids"]
    if tokenizer.add_bos:
        assert full[0] == tokenizer.bos_id and full[1] != tokenizer.bos_id  # one BOS (llama-2-chat spells later <s>)
    for ids in (ex["chosen_ids"], ex["rejected_ids"]):
        if STYLES[style].end_with_eos:
            assert ids[-1] == tokenizer.eos_id and ids.count(tokenizer.eos_id) == 1


def test_collate_masks_everything_but_completions(bpe_chat_tokenizer):
    records = [{"id": str(i), "prompt": [{"role": "user", "content": f"add {i} and 2"}], "chosen": str(i + 2),
                "rejected": "no idea at all"} for i in range(3)]
    data = PreferenceData(records, bpe_chat_tokenizer, "chatml", 64)
    batch = collate_pairs(data.examples, 0)
    assert batch["input_ids"].shape[0] == 6 and batch["pairs"] == 3
    for r, ex in enumerate(data.examples):
        labels = batch["labels"][r]
        kept = labels[labels != IGNORE].tolist()
        assert kept == ex["chosen_ids"]
        kept = batch["labels"][3 + r][batch["labels"][3 + r] != IGNORE].tolist()
        assert kept == ex["rejected_ids"]


def test_long_prompts_cut_from_the_left_and_reported(sp_chat_tokenizer):
    long = [{"role": "user", "content": "The quick brown fox jumps over the lazy dog. " * 20}]
    data = PreferenceData([{"prompt": long, "chosen": "yes", "rejected": "no"},
                           {"prompt": long, "chosen": "same", "rejected": "same"}], sp_chat_tokenizer, "vicuna", 40)
    assert data.report["prompt_truncated"] == 1 and data.report["dropped"] == {"identical_completions": 1}
    ex = data.examples[0]
    assert len(ex["prompt_ids"]) + max(len(ex["chosen_ids"]), len(ex["rejected_ids"])) <= 40
    assert ex["prompt_ids"][0] == sp_chat_tokenizer.bos_id
