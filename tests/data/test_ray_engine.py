"""`--engine ray` for data prepare / dedup / tokenize: on a local Ray cluster with 2 worker processes,
the outputs are byte-identical to the single-process run on the same real data (plus planted
duplicates), whatever the number of workers and byte ranges, and after a driver killed with -9."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ray = pytest.importorskip("ray", reason="ray is not installed: pip install openseason[ray] (CI installs it)")

from openseason.cli import main as cli  # noqa: E402
from openseason.data.dedup import dedup  # noqa: E402
from openseason.data.prepare import prepare  # noqa: E402
from openseason.data.tokenize import tokenize_documents  # noqa: E402
from openseason.errors import DataError, OpenseasonError  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
BLOCK = 100_000  # bytes per range: every input file (0.4-0.8 MB) is cut into several ranges


@pytest.fixture(scope="module")
def cluster():
    """One local Ray cluster (2 CPUs: 2 worker processes) shared by the module's tests."""
    ray.init(num_cpus=2, object_store_memory=100 * 2**20, include_dashboard=False, log_to_driver=False)
    yield ray.get_runtime_context().gcs_address
    ray.shutdown()


@pytest.fixture(scope="module")
def corpus(tmp_path_factory, shared_data):
    """RedPajama-style documents from Dolly's contexts and responses, with planted duplicates far from
    their originals: 12 exact copies (case and spacing changed), 16 near copies (one word changed) and
    a chain of three (A ~ B ~ C), plus Dolly prepared as conversations."""
    root = tmp_path_factory.mktemp("corpus")
    rows = [json.loads(line) for line in (shared_data / "dolly-15k" / "dolly_sample.jsonl").open()]
    texts = [t for r in rows for t in (r["context"], r["response"]) if len(t.split()) >= 60]
    docs = list(texts)
    for i, text in enumerate(texts[:12]):
        docs.insert(len(docs) // 2 + i * 7, "  " + text.upper().replace(" ", "   "))
    long = [t for t in texts[12:] if len(t.split()) >= 150]  # one changed word keeps Jaccard > 0.9
    for i, text in enumerate(long[:16]):
        words = text.split()
        words[len(words) // 2] = "zebra"
        docs.append(" ".join(words))
    words = long[16].split()
    docs += [" ".join(words[:-1] + ["alpha"]), " ".join(words[:-1] + ["beta"])]
    raw = root / "docs.jsonl"
    with raw.open("w") as handle:
        for i, text in enumerate(docs):
            handle.write(json.dumps({"text": text, "meta": {"n": i}}) + "\n")
            if i % 97 == 0:
                handle.write("\n")  # blank lines count in line numbers, not as rows
    prepare("redpajama", [raw], root / "docs", progress=False)
    prepare("dolly", [shared_data / "dolly-15k" / "dolly_sample.jsonl"], root / "dolly", progress=False)
    return root


def _files(directory: Path, skip=("report.json",)) -> dict:
    return {p.name: p.read_bytes() for p in sorted(directory.iterdir()) if p.is_file() and p.name not in skip
            and not p.name.startswith(".")}


def _report(directory: Path) -> dict:
    report = json.loads((directory / "report.json").read_text())
    return {k: v for k, v in report.items() if k not in ("seconds", "engine")}


def test_prepare_is_identical_on_ray(cluster, corpus, shared_data, tmp_path):
    tasks = shared_data / "alpaca-format" / "alpaca_libre_tasks_v2.jsonl"  # 14 malformed lines upstream
    local = prepare("alpaca", [tasks], tmp_path / "local", on_error="skip", progress=False)
    on_ray = prepare("alpaca", [tasks], tmp_path / "ray", on_error="skip", progress=False, engine="ray",
                     workers=2, block_bytes=BLOCK)
    assert on_ray["engine"]["ranges"] > 5 and len(on_ray["engine"]["peak_rss_mib_per_worker"]) >= 1
    assert local["rejected"]["malformed_json"] == 14
    assert _files(tmp_path / "ray") == _files(tmp_path / "local")
    assert _report(tmp_path / "ray") == _report(tmp_path / "local")
    # a malformed row stops both engines with the same file:line
    with pytest.raises(DataError) as one:
        prepare("alpaca", [tasks], tmp_path / "fail-local", progress=False)
    with pytest.raises(DataError) as two:
        prepare("alpaca", [tasks], tmp_path / "fail-ray", progress=False, engine="ray", block_bytes=BLOCK)
    assert str(one.value) == str(two.value) and ":" in one.value.where


def test_dedup_is_identical_on_ray_for_any_workers_and_ranges(cluster, corpus, tmp_path):
    inputs = [corpus / "docs", corpus / "dolly"]   # two prompt styles: the result's is named
    local = dedup(inputs, tmp_path / "local", style="plain")
    assert local["clusters"]["exact"] >= 12 and local["clusters"]["near"] >= 14
    assert local["largest_cluster"] >= 3
    for workers, block in ((2, BLOCK), (1, 3 * BLOCK)):
        out = tmp_path / f"ray-{workers}"
        report = dedup(inputs, out, engine="ray", workers=workers, block_bytes=block, style="plain")
        assert report["engine"]["workers"] == workers and report["engine"]["ranges"] > 2
        assert _files(out) == _files(tmp_path / "local")  # kept rows, clusters, rejects, style
        assert _report(out) == _report(tmp_path / "local")
        assert not (out / ".ray-work").exists()
    clusters = [json.loads(line) for line in (tmp_path / "local" / "clusters.jsonl").open()]
    assert any(c["stage"] == "near" and c["size"] == 3 and c["kind"] == "document" for c in clusters)  # the chain


def test_tokenize_is_identical_on_ray(cluster, corpus, tiny_tokenizer, tmp_path):
    tok = tmp_path / "tok"
    tiny_tokenizer.save(tok)
    note = tmp_path / "note.txt"
    note.write_text("A plain text file is one document.\n\nIt keeps its blank lines.")
    inputs = [corpus / "docs" / "documents.jsonl", note, corpus / "dolly" / "conversations.jsonl"]
    for seed in (None, 7):
        local = tokenize_documents(inputs, tok, tmp_path / f"local-{seed}", docs_per_shard=150, shuffle_seed=seed,
                                   progress=False)
        on_ray = tokenize_documents(inputs, tok, tmp_path / f"ray-{seed}", docs_per_shard=150, shuffle_seed=seed,
                                    progress=False, engine="ray", workers=2, block_bytes=BLOCK)
        assert on_ray == local and len(local["shards"]) > 3
        assert _files(tmp_path / f"ray-{seed}", skip=()) == _files(tmp_path / f"local-{seed}", skip=())


def test_interrupted_tokenize_and_prepare_resume(cluster, corpus, tiny_tokenizer, shared_data, tmp_path, monkeypatch):
    """A driver stopped before its last step leaves its pieces; the rerun reuses them (the shards
    already written are not written again) and the outputs match one process."""
    import openseason.data.distributed.prepare as ray_prepare_mod
    import openseason.data.distributed.tokenize as ray_tokenize_mod

    tok = tmp_path / "tok"
    tiny_tokenizer.save(tok)
    docs = [corpus / "docs" / "documents.jsonl"]
    tokenize_documents(docs, tok, tmp_path / "t-local", docs_per_shard=100, shuffle_seed=3, progress=False)

    def stop(*a, **k):
        raise KeyboardInterrupt

    with monkeypatch.context() as patch:
        patch.setattr(ray_tokenize_mod, "write_manifest", stop)
        with pytest.raises(KeyboardInterrupt):
            tokenize_documents(docs, tok, tmp_path / "t-ray", docs_per_shard=100, shuffle_seed=3, progress=False,
                               engine="ray", block_bytes=BLOCK)
    out = tmp_path / "t-ray"
    assert (out / ".ray-work").is_dir() and not (out / "manifest.json").exists()
    written = {p.name: p.stat().st_mtime_ns for p in out.glob("shard-*.json")}
    assert len(written) > 3
    tokenize_documents(docs, tok, out, docs_per_shard=100, shuffle_seed=3, progress=False, engine="ray",
                       block_bytes=BLOCK)
    assert {p.name: p.stat().st_mtime_ns for p in out.glob("shard-*.json")} == written
    assert _files(out, skip=()) == _files(tmp_path / "t-local", skip=()) and not (out / ".ray-work").exists()

    dolly = [shared_data / "dolly-15k" / "dolly_sample.jsonl"]
    prepare("dolly", dolly, tmp_path / "p-local", progress=False)
    with monkeypatch.context() as patch:
        patch.setattr(ray_prepare_mod, "finish_prepared", stop)
        with pytest.raises(KeyboardInterrupt):
            prepare("dolly", dolly, tmp_path / "p-ray", progress=False, engine="ray", block_bytes=BLOCK)
    assert len(list((tmp_path / "p-ray" / ".ray-work").glob("part-*.json"))) > 3
    with pytest.raises(DataError, match="different"):  # other settings never mix with the pieces
        prepare("dolly", dolly, tmp_path / "p-ray", progress=False, engine="ray", block_bytes=BLOCK,
                categories=["open_qa"])
    prepare("dolly", dolly, tmp_path / "p-ray", progress=False, engine="ray", block_bytes=BLOCK)
    assert _files(tmp_path / "p-ray") == _files(tmp_path / "p-local")


def test_worker_and_driver_killed_then_rerun_gives_the_same_output(cluster, corpus, tmp_path):
    """A worker killed with -9 mid-task (Ray runs the task again), then the driver killed with -9
    mid-run: the rerun resumes from OUT/.ray-work and matches one process."""
    inputs = [corpus / "docs", corpus / "dolly"]
    dedup(inputs, tmp_path / "local", style="plain")
    out = tmp_path / "killed"
    marker = tmp_path / "worker-killed"
    # the slowed task is defined in the driver's __main__, so Ray ships it by value to the workers;
    # its first call kills its own worker process
    code = (f"import os, signal, time, ray\n"
            f"import openseason.data.distributed.dedup as m\n"
            f"real = m.map_range\n"
            f"def slow(*a):\n"
            f"    try:\n        os.close(os.open({str(marker)!r}, os.O_CREAT | os.O_EXCL))\n"
            f"    except FileExistsError:\n        pass\n"
            f"    else:\n        os.kill(os.getpid(), signal.SIGKILL)\n"
            f"    time.sleep(0.4)\n    return real(*a)\n"
            f"m.map_range = slow\n"
            f"from openseason.data.dedup import dedup\n"
            f"dedup({[str(p) for p in inputs]!r}, {str(out)!r}, engine='ray', workers=2, block_bytes={BLOCK}, style='plain',"
            f" address={cluster!r})\n")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([sys.executable, "-c", code], env=env, stderr=subprocess.PIPE)
    work = out / ".ray-work"
    deadline = time.time() + 90
    while len(list(work.glob("document-map-*.npz"))) < 2 and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    _, err = proc.communicate()
    done = len(list(work.glob("*-map-*.npz")))
    assert marker.exists() and done >= 2 and not (out / "report.json").exists(), err.decode()[-2000:]
    report = dedup(inputs, out, engine="ray", workers=2, block_bytes=BLOCK, style="plain")
    assert report["engine"]["ranges"] > done
    assert _files(out) == _files(tmp_path / "local")
    assert _report(out) == _report(tmp_path / "local")
    assert not work.exists()


def test_options_that_do_not_apply_are_errors(cluster, corpus, shared_data, tmp_path, capsys):
    with pytest.raises(OpenseasonError, match="only apply with --engine ray"):
        dedup([corpus / "docs"], tmp_path / "a", address="auto")
    assert cli(["data", "dedup", str(corpus / "docs"), "--out", str(tmp_path / "b"), "--workers", "2"]) == 2
    assert "only apply with --engine ray" in capsys.readouterr().err
    with pytest.raises(OpenseasonError, match="cannot be split across workers"):
        prepare("oasst1", [shared_data / "oasst1" / "oasst1_validation_en_sample.jsonl"], tmp_path / "c",
                engine="ray", progress=False)


def test_a_head_that_does_not_answer_is_a_clear_error(cluster, corpus, tmp_path):
    with pytest.raises(OpenseasonError, match="already joined the Ray cluster"):
        dedup([corpus / "docs"], tmp_path / "a", engine="ray", address="127.0.0.1:1")
    proc = subprocess.run([sys.executable, "-m", "openseason", "data", "dedup", str(corpus / "docs"), "--out",
                           str(tmp_path / "b"), "--engine", "ray", "--address", "127.0.0.1:1"],
                          capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(REPO)}, timeout=120)
    assert proc.returncode == 2 and "no Ray cluster answers at 127.0.0.1:1" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_cli_runs_on_ray(cluster, corpus, tmp_path, capsys):
    out = tmp_path / "cli"
    assert cli(["data", "dedup", str(corpus / "docs"), "--out", str(out), "--engine", "ray", "--workers", "2",
                "--block-bytes", str(BLOCK)]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["clusters"]["exact"] >= 12
    assert dedup([corpus / "docs"], tmp_path / "local") and _files(out) == _files(tmp_path / "local")
