"""A tiny random transformers GPT-NeoX model and the same weights as an openseason checkpoint."""
from __future__ import annotations

import json

import pytest
import torch


@pytest.fixture(scope="module")
def hf_and_ours(tmp_path_factory, tiny_tokenizer):
    """(HF model directory, transformers model, our checkpoint directory) with identical weights."""
    transformers = pytest.importorskip("transformers")
    from openseason.convert import convert_from_hf

    torch.manual_seed(7)
    config = transformers.GPTNeoXConfig(vocab_size=512, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                                        intermediate_size=256, max_position_embeddings=64, rotary_pct=0.25,
                                        bos_token_id=0, eos_token_id=0)
    hf = transformers.GPTNeoXForCausalLM(config)
    with torch.no_grad():  # wider weights: a less uniform distribution makes the comparison meaningful
        for p in hf.parameters():
            if p.dim() >= 2:
                p.normal_(0.0, 0.1)
    hf.eval()
    root = tmp_path_factory.mktemp("eval-model")
    hf.save_pretrained(root / "hf")
    tiny_tokenizer.save(root / "hf")
    ckpt = convert_from_hf(root / "hf", root / "ckpt")
    return root / "hf", hf, ckpt


# lm-eval tasks on local JSONL files (no download): tiny_choice, tiny_rolling, tiny_generate
TASKS = """\
task: tiny_choice
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}/choice.jsonl
test_split: test
output_type: multiple_choice
doc_to_text: "Question: {{{{question}}}}\\nAnswer:"
doc_to_choice: "{{{{choices}}}}"
doc_to_target: "{{{{answer}}}}"
metric_list:
  - metric: acc
  - metric: acc_norm
---
task: tiny_rolling
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}/docs.jsonl
test_split: test
output_type: loglikelihood_rolling
doc_to_text: ""
doc_to_target: "{{{{text}}}}"
metric_list:
  - metric: word_perplexity
  - metric: bits_per_byte
---
task: tiny_generate
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}/choice.jsonl
test_split: test
output_type: generate_until
doc_to_text: "Question: {{{{question}}}}\\nAnswer:"
doc_to_target: "{{{{choices[answer]}}}}"
generation_kwargs:
  until: ["\\n"]
  max_gen_toks: 6
  do_sample: false
metric_list:
  - metric: exact_match
"""


@pytest.fixture(scope="module")
def task_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("harness")
    data = root / "data"
    data.mkdir()
    questions = [("What is 2 + 3?", [" 5", " 6", " 7"], 0), ("The quick brown fox jumps over the", [" dog", " cat"], 0),
                 ("Reverse abc", [" cba", " abc", " bca"], 0), ("Count to three", [" 1 2 3", " 3 2 1"], 1)]
    with (data / "choice.jsonl").open("w") as handle:
        for q, choices, answer in questions:
            handle.write(json.dumps({"question": q, "choices": choices, "answer": answer}) + "\n")
    with (data / "docs.jsonl").open("w") as handle:
        for text in ["The quick brown fox jumps over the lazy dog. " * 6, "Instruction: add 2 and 3. Response: 5"]:
            handle.write(json.dumps({"text": text}) + "\n")
    tasks = root / "tasks"
    tasks.mkdir()
    for i, block in enumerate(TASKS.format(data=data).split("---\n")):
        (tasks / f"task{i}.yaml").write_text(block)
    return tasks
