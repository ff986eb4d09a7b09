"""lm-evaluation-harness through our forward pass gives the harness's own HF results on the same model."""
import pytest

from openseason import LLM
from openseason.cli import main
from openseason.errors import OpenseasonError
from openseason.evaluate.harness import OpenseasonLM, run_harness

lm_eval = pytest.importorskip("lm_eval")


def _metrics(results):
    return {task: {k: v for k, v in metrics.items() if isinstance(v, float)} for task, metrics in results.items()}


def test_same_results_as_the_harness_hf_model(monkeypatch, task_dir, hf_and_ours):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    hf_dir, _hf, ckpt = hf_and_ours
    names = ["tiny_choice", "tiny_rolling", "tiny_generate"]
    ours = run_harness(ckpt, names, include_path=str(task_dir), batch_size=3, device="cpu")
    reference = lm_eval.simple_evaluate(model=HFLM(pretrained=str(hf_dir), device="cpu", batch_size=3),
                                        tasks=names, task_manager=TaskManager(include_path=str(task_dir), include_defaults=False),
                                        log_samples=False, bootstrap_iters=0)
    got, want = _metrics(ours["results"]), _metrics(reference["results"])
    assert set(got) == set(names)
    for task in names:
        for metric, value in want[task].items():
            assert got[task][metric] == pytest.approx(value, rel=1e-4), (task, metric)


def test_loglikelihood_matches_a_direct_forward(hf_and_ours):
    import torch

    _hf_dir, hf, ckpt = hf_and_ours
    lm = OpenseasonLM(llm=LLM.load(ckpt, device="cpu"), batch_size=2)
    context, continuation = lm.encode_pair("Question: what is 2 + 3? ", "5")
    [(logprob, _greedy)] = lm.loglikelihood_tokens([(context, continuation)])
    ids = torch.tensor([context + continuation])
    with torch.no_grad():
        logp = hf(ids).logits.log_softmax(-1)[0]
    expected = sum(float(logp[len(context) - 1 + i, tok]) for i, tok in enumerate(continuation))
    assert logprob == pytest.approx(expected, rel=1e-5)


def test_unknown_task_is_a_clear_error(monkeypatch, task_dir, hf_and_ours, capsys):
    import lm_eval.tasks

    from openseason.evaluate import harness_env

    # online (offline with an empty cache, non-local names are refused before any lookup: the registry tests)
    monkeypatch.setattr(harness_env, "hub_reachable", lambda *a, **k: True)
    _hf_dir, _hf, ckpt = hf_and_ours
    original = lm_eval.tasks.TaskManager
    # indexing the ~15k built-in tasks takes half a minute: the error path is the same without them
    monkeypatch.setattr(lm_eval.tasks, "TaskManager",
                        lambda include_path=None, **kw: original(include_path=include_path, include_defaults=False))
    with pytest.raises(OpenseasonError, match="unknown harness task"):
        run_harness(ckpt, ["no_such_task"], include_path=str(task_dir))
    assert main(["evaluate", "harness", str(ckpt), "--tasks", "tiny_choice", "--include-path", str(task_dir),
                 "--json"]) == 0
    assert "tiny_choice" in capsys.readouterr().out
