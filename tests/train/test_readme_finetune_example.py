"""The README's Python finetuning example, run as printed on a tiny model: only the step counts are
made small (1000 steps would take minutes on CPU); the imports, calls and paths are the README's."""
from __future__ import annotations

import json
import re
from pathlib import Path

from openseason.tokenizer import train_bpe

from .helpers_train import make_base

README = Path(__file__).resolve().parents[2] / "README.md"


def readme_finetune_example() -> str:
    """The ```python block of the Finetuning section that calls finetune()."""
    section = README.read_text().split("<!-- section: finetune -->", 1)[1].split("<!-- section:", 1)[0]
    blocks = re.findall(r"```python\n(.*?)```", section, re.S)
    (block,) = [b for b in blocks if "from openseason.train import finetune" in b]
    return block


def test_readme_python_finetune_example_runs(tmp_path, monkeypatch):
    code = readme_finetune_example()
    small = code.replace("max_steps=1000", "max_steps=4").replace("save_every=100", "save_every=2")
    assert small != code and small.count("max_steps=4") == 1  # the README still says what we replaced
    monkeypatch.chdir(tmp_path)
    tokenizer = train_bpe(["Instruction: add 2 and 3. Response: 5 the quick brown fox"] * 20, vocab_size=300)
    make_base(Path("checkpoints/pythia-70m"), tokenizer, name="tiny-neox")
    data = Path("data/dolly")
    data.mkdir(parents=True)
    rows = [{"id": f"d{i}", "messages": [{"role": "user", "content": f"add {i} and 3"},
                                          {"role": "assistant", "content": str(i + 3)}]} for i in range(40)]
    (data / "conversations.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (data / "prompt_style.json").write_text(json.dumps({"name": "dolly"}))
    namespace: dict = {}
    exec(compile(small, "README.md (finetune example)", "exec"), namespace)
    assert callable(namespace["finetune"])
    assert namespace["result"]["steps"] == 4 and Path(namespace["result"]["final"]).is_dir()
    assert sorted(p.name for p in Path("runs/dolly-lora/hf-peft").iterdir()) == ["adapter_config.json",
                                                                                 "adapter_model.safetensors"]


def test_finetune_is_the_function_even_after_its_module_is_imported():
    import importlib

    importlib.import_module("openseason.train.finetune")
    importlib.import_module("openseason.train.quickstart")
    from openseason.train import finetune, merge_checkpoint, quickstart

    assert all(callable(f) and not hasattr(f, "__path__") and type(f).__name__ == "function"
               for f in (finetune, merge_checkpoint, quickstart))
