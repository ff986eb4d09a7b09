"""Every CLI verb, fed bad input, answers with one clear `openseason: error:` line (what and where),
exit status 2 and no traceback; a failed command leaves no empty --out directory and no stale
staging siblings; flags that do not apply are errors, not silently ignored.

The table runs in-process through `openseason.cli.main` (fast); a few cases run as real processes to
check what a shell user sees (stderr, exit status, a closed pipe)."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from openseason.checkpoint import save_checkpoint
from openseason.cli import main
from openseason.config import Config
from openseason.model import GPT
from openseason.tokenizer import train_bpe

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def fx(tmp_path_factory) -> Path:
    """A tiny base checkpoint, a prepared directory, LoRA and adapter checkpoints trained one step, a
    Hugging Face folder, and a handful of bad files."""
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

    from openseason.train import finetune

    root = tmp_path_factory.mktemp("fx")
    tok = train_bpe(["The quick brown fox jumps over the lazy dog. add 2 and 3 = 5"] * 20, vocab_size=300)
    torch.manual_seed(0)
    model = GPT(Config.from_name("tiny-neox"))
    model.init_weights()
    save_checkpoint(root / "base", model, tokenizer=tok)
    data = root / "data"
    data.mkdir()
    rows = [{"id": f"add-{i}", "messages": [{"role": "user", "content": f"add {i} and 1"},
                                            {"role": "assistant", "content": str(i + 1)}]} for i in range(12)]
    (data / "conversations.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (data / "prompt_style.json").write_text(json.dumps({"name": "plain"}))
    for method in ("lora", "adapter"):
        finetune(root / "base", data, method, root / method, max_steps=1, micro_batch_size=2, progress=False,
                 register=False)
    hf = GPTNeoXConfig(vocab_size=300, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                       intermediate_size=64, max_position_embeddings=64)
    GPTNeoXForCausalLM(hf).save_pretrained(root / "hf")
    (root / "afile.txt").write_text("hello\n")
    (root / "bad.json").write_text("{not json")
    (root / "bad.yaml").write_text("a: [1, 2\n")
    (root / "docs.jsonl").write_text("".join(json.dumps({"text": f"doc {i} the quick brown fox"}) + "\n"
                                             for i in range(5)))
    (root / "rows.csv").write_text("instruction,output\nhi,there\nadd 1 and 2,3\n")
    assert main(["data", "tokenize", str(root / "docs.jsonl"), "--tokenizer", str(root / "base"), "--out",
                 str(root / "tok")]) == 0
    (root / "dolly.jsonl").write_text("".join(json.dumps(
        {"instruction": f"q{i}", "context": "", "response": f"a{i}", "category": c}) + "\n"
        for i, c in enumerate(["open_qa", "brainstorming", "open_qa"])))
    return root


# (argv with $F = fixtures and $O = a fresh output root, text the error line must contain)
CASES = [
    # -- training: options checked before anything runs ------------------------------------------------
    ("finetune $F/base --data $F/data --out $O/run --max-steps 1 --lr -1", "--lr must be > 0, not -1"),
    ("finetune $F/base --data $F/data --out $O/run --max-steps 1 --micro-batch-size 0",
     "--micro-batch-size must be >= 1, not 0"),
    ("finetune $F/base --data $F/data --out $O/run --max-steps 1 --grad-accum 0", "--grad-accum must be >= 1"),
    ("finetune $F/base --data $F/data --out $O/run --max-steps 1 --lora-dropout 1", "--lora-dropout must be"),
    ("finetune $F/base --data $F/data --out $F/afile.txt --max-steps 1", "afile.txt: exists and is a file"),
    ("finetune $F/base --data $F/data --out $O/run --max-steps 1 --device cuda:7", "'cuda:7' asked for"),
    ("finetune $F/base --data $F/data --out $O/run --max-steps 1 --device nope", "unknown device 'nope'"),
    ("finetune $F/nope --data $F/data --out $O/run --max-steps 1", "nope: checkpoint directory not found"),
    ("finetune $F/base --data $F/nope --out $O/run --max-steps 1", "nope"),
    ("finetune $F/base --data $F/data --out $O/run --max-steps 1 --config $F/bad.yaml", "bad.yaml:2:1"),
    ("finetune $F/base --data $F/data --out $O/run --max-steps 1 --config $F/nope.yaml", "nope.yaml"),
    ("pretrain --config tiny-neox --data $F/data --out $O/run --max-steps 1 --lr -1", "--lr must be > 0"),
    ("pretrain --config tiny-neox --data $F/data --out $O/run --micro-batch-size 0", "--micro-batch-size"),
    ("pretrain --config tiny-neox --data $F/data --out $O/run --max-steps 0", "--max-steps must be >= 1"),
    ("pretrain --config nope --data $F/data --out $O/run --max-steps 1", "unknown model config 'nope'"),
    ("pretrain --config $F/bad.json --data $F/data --out $O/run --max-steps 1", "bad.json:1:2"),
    ("pretrain --config tiny-neox --data $F/data --out $O/run --max-steps 1", "data"),
    ("merge $F/nope --out $O/run", "nope: checkpoint directory not found"),
    ("merge $F/base --out $F/afile.txt", "afile.txt: exists and is a file"),
    ("quickstart --out $F/afile.txt", "afile.txt: exists and is a file"),
    ("quickstart --out $O/run --finetune-steps 0", "--finetune-steps must be >= 1"),
    # -- conversion -------------------------------------------------------------------------------------
    ("convert to-hf $F/nope $O/run", "nope: checkpoint directory not found"),
    ("convert to-hf $F/base $F/afile.txt", "afile.txt: exists and is a file"),
    ("convert to-hf $F/adapter/final $O/run", "cannot export a PEFT checkpoint to Hugging Face format"),
    ("convert to-hf $F/base $O/run --peft", "not a PEFT checkpoint"),
    ("convert to-hf $F/lora/final $O/run --peft --dtype float16", "--dtype does not apply with --peft"),
    ("convert to-hf $F/lora/final $O/run --base-model x", "--base-model applies only with --peft"),
    ("convert from-hf $F/nope $O/run", "nope: Hugging Face model directory not found"),
    ("convert from-hf $F/data $O/run", "data"),
    ("convert to-gguf $F/nope $O/x.gguf", "nope: checkpoint directory not found"),
    ("convert to-gguf $F/base $F/data", "the output is a directory"),
    ("export-peft $F/base $O/run", "not a PEFT checkpoint"),
    ("export-peft $F/adapter/final $O/run", "only LoRA checkpoints export to the PEFT format"),
    ("export-peft $F/nope $O/run", "nope: checkpoint directory not found"),
    # -- generation ---------------------------------------------------------------------------------------
    ("generate $F/hf --prompt hi", "hf: this is a Hugging Face model folder, not an openseason checkpoint"),
    ("generate $F/nope --prompt hi", "nope: checkpoint directory not found"),
    ("generate $F/base --prompt hi --device cuda:7", "'cuda:7' asked for"),
    ("generate $F/base --prompt hi --dtype nope", "unknown dtype 'nope'"),
    ("generate $F/base --prompt hi --temperature 0.5 --top-p 2", "top_p must be in (0, 1]"),
    ("generate $F/base --prompt hi --top-k 5", "--top-k only apply when sampling"),
    ("generate $F/base --prompt hi --min-p 0.1", "--min-p only apply when sampling"),
    ("generate $F/base --prompt hi --temperature 0.5 --min-p 1.5", "min_p must be in [0, 1]"),
    ("generate $F/base --prompt hi --top-p 0.5 --seed 3", "--top-p, --seed only apply when sampling"),
    ("generate $F/base --prompt hi --max-context 0", "max_context must be positive"),
    ("chat $F/nope", "nope: checkpoint directory not found"),
    ("chat $F/base --temperature 0 --top-p 0.5", "--top-p only apply when sampling"),
    ("serve $F/nope", "nope: checkpoint directory not found"),
    # -- data ---------------------------------------------------------------------------------------------
    ("data tokenize $F/docs.jsonl --tokenizer nope --out $O/run", "nope: tokenizer not found"),
    ("data tokenize $F/nope.jsonl --tokenizer $F/base --out $O/run", "nope.jsonl: input not found"),
    ("data tokenize $F/docs.jsonl --tokenizer $F/base --out $O/run --docs-per-shard 0", "--docs-per-shard"),
    ("data tokenize $F/docs.jsonl --tokenizer $F/base --out $O/run --workers 0", "--workers must be >= 1"),
    ("data tokenize $F/docs.jsonl --tokenizer $F/base --out $F/afile.txt", "afile.txt: exists and is a file"),
    ("data batch $F/nope --step 0 --seq-len 8 --batch-size 2", "nope"),
    ("data batch $F/tok --step -1 --seq-len 8 --batch-size 2", "--step must be >= 0, not -1"),
    ("data batch $F/tok --step 0 --seq-len 0 --batch-size 2", "--seq-len and the batch size must be >= 1"),
    ("data prepare redpajama $F/docs.jsonl --out $O/run --max-line-length -3", "--max-line-length must be >= 0"),
    ("synth reverse-instructions --corpus $F/docs.jsonl --out $O/run --backend http://127.0.0.1:9 --concurrency 0",
     "argument --concurrency: expected a positive integer, got 0"),
    ("data prepare csv $F/rows.csv --out $O/run --columns instruction=nope output=output",
     "rows.csv:2: missing_column: no column 'nope' (mapped to instruction); the row has: 'instruction', 'output'"),
    ("data prepare csv $F/nope.csv --out $O/run", "nope.csv: file not found"),
    ("data prepare json $F/bad.json --out $O/run", "bad.json:1"),
    ("data prepare nope $F/afile.txt --out $O/run", "unknown data source 'nope'"),
    ("data prepare dolly $F/dolly.jsonl --out $F/afile.txt", "afile.txt: exists and is a file"),
    ("data stats $F/nope", "nope"),
    ("data stats $F/data --tokenizer nope", "nope: tokenizer not found"),
    ("data mix $F/data:abc --out $O/run", "abc"),
    ("data mix $F/nope:1 --out $O/run", "nope"),
    ("data dedup $F/nope --out $O/run", "nope: not a prepared directory"),
    ("data dedup $F/data --out $O/run --threshold 2", "--threshold must be between 0 and 1"),
    ("data dedup $F/data --out $O/run --num-perm 0", "--num-perm must be >= 2"),
    ("data dedup $F/data --out $O/run --ngram 0", "--ngram >= 1"),
    ("data dedup $F/data --out $O/run --no-exact --no-near", "--no-exact and --no-near together leave nothing"),
    # -- flags that do not apply (item 5) -------------------------------------------------------------------
    ("data prepare dolly $F/dolly.jsonl --out $O/run --lang en", "--lang does not apply to the dolly source"),
    ("data prepare oasst1 $F/docs.jsonl --out $O/run --top-k 3", "--top-k applies only to --mode top-k"),
    ("data prepare hh-rlhf $F/docs.jsonl --out $O/run --alpaca-libre --mode preferences",
     "--alpaca-libre is --mode alpaca-libre; it conflicts with --mode preferences"),
    ("data prepare dolly $F/dolly.jsonl --out $O/run --category nope --category open_qa",
     "--category nope matched no row"),
    ("data prepare dolly $F/dolly.jsonl --out $O/run --columns text=x", "--columns does not apply"),
    ("data prepare dolly $F/dolly.jsonl --out $O/run --split train", "--split applies only to the hub source"),
    ("finetune $F/base --data $F/data --out $O/run --max-steps 1 --method adapter --lora-targets q",
     "--lora-targets does not apply to --method adapter"),
    ("finetune $F/base --data $F/data --out $O/run --max-steps 1 --method lora --adapter-layers 1",
     "--adapter-layers does not apply to --method lora"),
    # -- the other stages -------------------------------------------------------------------------------------
    ("catalog show nope", "nope"),
    ("catalog import ecosystem-graphs $F/bad.yaml", "bad.yaml:2:1: invalid YAML"),
    ("guard check nope hi", "nope"),
    ("guard check $F/afile.txt hi", "afile.txt"),
    ("guard calibrate support --paraphrases $F/nope.txt", "nope.txt: paraphrase file not found"),
    ("synth self-instruct --seeds $F/nope.jsonl --num 1 --out $O/run --backend http://127.0.0.1:9",
     "nope.jsonl: file not found"),
    ("synth self-instruct --seeds $F/bad.json --num 1 --out $O/run --backend http://127.0.0.1:9", "bad.json:1"),
    ("synth reverse-instructions --corpus $F/nope.jsonl --out $O/run --backend http://127.0.0.1:9", "nope.jsonl"),
    ("synth rationales --data $F/nope.jsonl --out $O/run --backend http://127.0.0.1:9", "nope.jsonl"),
    ("synth self-improve --data $F/nope.json --checkpoint $F/base --out $O/run", "nope.json: file not found"),
    ("consistency train --data nope --out $O/run", "nope"),
    ("consistency train --data digits --out $O/run --device cuda:7 --max-steps 1", "'cuda:7' asked for"),
    ("evaluate perplexity $F/base --data $F/docs.jsonl --device cuda:7", "'cuda:7' asked for"),
    ("serve $F/base --device cuda:7", "'cuda:7' asked for"),
    ("consistency sample $F/nope", "nope"),
    ("evaluate perplexity $F/base --data $F/nope.jsonl", "nope.jsonl: file not found"),
    ("evaluate memorization $F/base --data $F/nope --out $O/run", "nope"),
    ("evaluate perplexity $F/base --data $F/docs.jsonl --window 0", "argument --window: expected a positive"),
    ("evaluate perplexity $F/base --data $F/docs.jsonl --batch-size 0", "argument --batch-size: expected a positive"),
    ("serve $F/base --port -1", "argument --port: expected a port number 0..65535"),
    ("data mix $F/data:1 --out $O/run --total -5", "--total must be >= 1"),
    ("data prepare oasst1 $F/docs.jsonl --out $O/run --mode top-k --top-k 0", "--top-k must be >= 1"),
    ("data stats $F/data --png $F/data", "data: is a directory; give a file name"),
    ("catalog export -o $F/data", "data: is a directory; give a file name"),
    ("configs nope-such-model", "no named config matches 'nope-such-model'"),
    ("configs --family nope", "unknown family 'nope'"),
]


def _argv(line: str, fx: Path, out_root: Path) -> list[str]:
    return line.replace("$F", str(fx)).replace("$O", str(out_root)).split()


def _leftovers(root: Path) -> list[str]:
    """Staging siblings (.NAME.tmp-HOST-PID, .new-, .old-) and staging folders anywhere under root."""
    marks = (".tmp-", ".new-", ".old-", ".staging-")
    return sorted(str(p) for p in root.rglob(".*") if any(k in p.name for k in marks))


@pytest.mark.parametrize("line, expected", CASES, ids=[c[0].split(" $")[0] + ":" + str(i) for i, c in enumerate(CASES)])
def test_bad_input_is_one_clear_error(line, expected, fx, tmp_path, capsys):
    out_root = tmp_path / "out"
    before = sorted(p.name for p in fx.iterdir())
    try:
        status = main(_argv(line, fx, out_root))
    except SystemExit as exc:  # argparse's own refusals (a bad type or choice) print usage, then this line
        status = exc.code
    assert status == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    errors = [ln for ln in err.splitlines() if re.match(r"openseason( [\w-]+)*: error: ", ln)]
    assert len(errors) == 1, err
    assert expected.replace("$F", str(fx)) in errors[0], err
    # nothing left behind: no (empty) --out, no staging siblings, the inputs untouched
    assert not out_root.exists(), sorted(p.name for p in out_root.rglob("*"))
    assert _leftovers(fx) == [] and sorted(p.name for p in fx.iterdir()) == before
    assert (fx / "afile.txt").read_text() == "hello\n"


def test_argparse_errors_are_usage_errors_not_tracebacks(capsys):
    """What argparse itself refuses (a missing required flag, a bad choice) also exits with 2."""
    for argv in (["finetune", "x"], ["convert", "to-gguf", "a", "b", "--type", "q4"], ["data", "mix"]):
        with pytest.raises(SystemExit) as exc:
            main(argv)
        assert exc.value.code == 2
        assert "Traceback" not in capsys.readouterr().err


def test_os_errors_naming_a_path_are_user_errors(monkeypatch, capsys):
    """A stray OSError about a user's path (not caught deeper) still prints as PATH: reason, exit 2."""
    import openseason.config_list as config_list

    def boom(**_):
        raise PermissionError(13, "Permission denied", "/some/where.json")

    monkeypatch.setattr(config_list, "list_configs", boom)
    assert main(["configs"]) == 2
    assert capsys.readouterr().err.strip() == "openseason: error: /some/where.json: Permission denied"


def test_broken_pipe_in_process_is_quiet(monkeypatch, capsys):
    class Closed:
        def write(self, _text):
            raise BrokenPipeError(32, "Broken pipe")

        def flush(self):
            raise BrokenPipeError(32, "Broken pipe")

    monkeypatch.setattr(sys, "stdout", Closed())
    assert main(["configs", "tiny", "--json"]) == 141
    assert capsys.readouterr().err == ""


def _env() -> dict:
    return {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}


def test_an_error_as_a_shell_user_sees_it(fx, tmp_path):
    proc = subprocess.run([sys.executable, "-m", "openseason", "finetune", str(fx / "base"), "--data", str(fx / "data"),
                           "--out", str(tmp_path / "run"), "--max-steps", "1", "--lr", "-1"],
                          cwd=REPO, env=_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2
    assert proc.stderr.startswith("openseason: error: --lr must be > 0, not -1\n"), proc.stderr
    assert "Traceback" not in proc.stderr and not (tmp_path / "run").exists()


def test_generate_on_a_hugging_face_folder_says_to_convert_it(fx, capsys):
    assert main(["generate", str(fx / "hf"), "--prompt", "hi"]) == 2
    assert f"openseason convert from-hf {fx / 'hf'} OUT" in capsys.readouterr().err


def test_closed_pipe_is_quiet_in_a_real_process(fx, capsys):
    """`openseason catalog can-use NAME --json | head -c 1`: the reader is gone before we write; the
    command stops quietly (status 141, as for SIGPIPE) instead of a BrokenPipeError traceback."""
    assert main(["catalog", "register", str(fx / "base")]) == 0
    capsys.readouterr()
    proc = subprocess.Popen([sys.executable, "-m", "openseason", "catalog", "can-use", "base", "--json"], cwd=REPO,
                            env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    proc.stdout.close()  # the reader goes away before the first write
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=300) == 141
    assert err == ""


# -- what still works next to the refusals -------------------------------------------------------------------
def test_category_that_matches_writes_only_those_rows(fx, tmp_path):
    assert main(["data", "prepare", "dolly", str(fx / "dolly.jsonl"), "--out", str(tmp_path / "d"),
                 "--category", "open_qa"]) == 0
    report = json.loads((tmp_path / "d" / "report.json").read_text())
    assert report["written"] == 2 and report["rejected"] == {"category": 1}


def _prepared(path: Path, style: str, n: int = 3) -> Path:
    path.mkdir(parents=True)
    rows = [{"id": f"{style}-{i}", "messages": [{"role": "user", "content": f"{style} question {i}"},
                                                {"role": "assistant", "content": f"answer {i}"}]} for i in range(n)]
    (path / "conversations.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (path / "prompt_style.json").write_text(json.dumps({"name": style}))
    return path


@pytest.mark.parametrize("verb", ["mix", "dedup"])
def test_mixing_prompt_styles_needs_a_named_style(verb, tmp_path, capsys):
    a, b = _prepared(tmp_path / "a", "alpaca"), _prepared(tmp_path / "b", "chatml")
    inputs = [f"{a}:1", f"{b}:1"] if verb == "mix" else [str(a), str(b)]
    assert main(["data", verb, *inputs, "--out", str(tmp_path / "m")]) == 2
    err = capsys.readouterr().err
    assert "have different prompt styles" in err and "(alpaca)" in err and "(chatml)" in err and "--style" in err
    assert not (tmp_path / "m").exists()
    assert main(["data", verb, *inputs, "--out", str(tmp_path / "m"), "--style", "chatml"]) == 0
    stored = json.loads((tmp_path / "m" / "prompt_style.json").read_text())
    assert stored["name"] == "chatml" and stored["combined_from"] == {str(a): "alpaca", str(b): "chatml"}
    # one style in: that style out, no --style needed
    c = _prepared(tmp_path / "c", "alpaca")
    same = [f"{a}:1", f"{c}:1"] if verb == "mix" else [str(a), str(c)]
    assert main(["data", verb, *same, "--out", str(tmp_path / "s")]) == 0
    assert json.loads((tmp_path / "s" / "prompt_style.json").read_text())["name"] == "alpaca"


def test_sampling_flags_apply_with_a_temperature(fx, capsys):
    assert main(["generate", str(fx / "base"), "--prompt", "The", "--max-new-tokens", "3", "--temperature", "0.8",
                 "--top-k", "5", "--top-p", "0.9", "--seed", "1"]) == 0
    first = capsys.readouterr().out
    assert main(["generate", str(fx / "base"), "--prompt", "The", "--max-new-tokens", "3", "--temperature", "0.8",
                 "--top-k", "5", "--top-p", "0.9", "--seed", "1"]) == 0
    assert capsys.readouterr().out == first  # the seed is honoured, not ignored
    assert main(["generate", str(fx / "base"), "--prompt", "The", "--max-new-tokens", "3"]) == 0
    greedy = capsys.readouterr().out
    assert main(["generate", str(fx / "base"), "--prompt", "The", "--max-new-tokens", "3", "--temperature", "5",
                 "--min-p", "1", "--seed", "1"]) == 0
    assert capsys.readouterr().out == greedy  # min-p 1 keeps only the most likely token


def test_lora_options_from_the_lora_recipe_refused_for_adapter(fx, tmp_path, capsys):
    """A recipe's LoRA options under --method adapter are as inapplicable as the flags."""
    assert main(["finetune", str(fx / "base"), "--data", str(fx / "data"), "--out", str(tmp_path / "run"),
                 "--config", str(REPO / "recipes" / "lora.yaml"), "--method", "adapter", "--max-steps", "1"]) == 2
    assert "does not apply to --method adapter" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()
