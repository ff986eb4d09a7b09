"""MinHash parity with datasketch on real texts, dedup, mix, stats, and the smaller sources."""
from __future__ import annotations

import json

import numpy as np
import pytest

from openseason.cli import main as cli
from openseason.data.dedup import dedup
from openseason.data.minhash import MinHasher, candidate_pairs, lsh_params, shingles
from openseason.data.mix import exact_counts, mix
from openseason.data.prepare import prepare
from openseason.data.stats import stats
from openseason.errors import DataError, OpenseasonError


def rows(path):
    return [json.loads(line) for line in open(path)]


def real_texts(shared_data):
    texts = [r["response"] for r in rows(shared_data / "dolly-15k/dolly_sample.jsonl")]
    texts += [r["text"] for r in rows(shared_data / "oasst1/oasst1_validation_en_sample.jsonl")][:300]
    # near copies: one word changed in long texts
    texts += [" ".join(t.split()[:-1] + ["changed"]) for t in texts[:60] if len(t.split()) > 120]
    return texts


def test_minhash_and_lsh_match_datasketch_on_real_texts(shared_data):
    datasketch = pytest.importorskip("datasketch")
    from datasketch.lsh import _optimal_param

    for threshold, num_perm in ((0.87, 128), (0.5, 64), (0.9, 256)):
        assert lsh_params(threshold, num_perm) == _optimal_param(threshold, num_perm, 0.5, 0.5)
    texts = real_texts(shared_data)
    sigs, has = MinHasher(128, shingle_hash="sha1").signatures(texts)
    theirs = []
    for text in texts:
        m = datasketch.MinHash(num_perm=128)
        m.update_batch(shingles(text))
        theirs.append(m)
    keep = [i for i in range(len(texts)) if has[i]]
    assert all(np.array_equal(sigs[i], theirs[i].hashvalues) for i in keep)
    b, r = lsh_params(0.87, 128)
    lsh = datasketch.MinHashLSH(threshold=0.87, num_perm=128)
    for i in keep:
        lsh.insert(i, theirs[i])
    ds_pairs = {(min(i, j), max(i, j)) for i in keep for j in lsh.query(theirs[i]) if j != i}
    ours = candidate_pairs(sigs, b, r, mask=has)
    assert len(ds_pairs) >= 5 and ours == ds_pairs
    # the fast shingle hash estimates the same Jaccard (unbiased, independent hashing)
    fast, _ = MinHasher(128).signatures(texts[:50])
    ref = sigs[:50]
    est_fast = (fast[:, None, :] == fast[None, :, :]).mean(-1)
    est_ref = (ref[:, None, :] == ref[None, :, :]).mean(-1)
    assert np.abs(est_fast - est_ref).mean() < 0.02


def test_dedup_exact_and_near(tmp_path):
    base = "the quick brown fox jumps over the lazy dog while the cat watches from a sunny window sill " * 3
    convs = []
    texts = [base, base.upper(), base + " again", "something entirely different about tax law and cooking " * 4,
             base.replace("lazy", "sleepy", 1)]
    for i, t in enumerate(texts):
        convs.append({"id": f"c{i}", "source": "t", "messages": [{"role": "user", "content": "q"},
                                                                  {"role": "assistant", "content": t}], "meta": {}})
    src = tmp_path / "src"
    src.mkdir()
    (src / "conversations.jsonl").write_text("".join(json.dumps(c) + "\n" for c in convs))
    (src / "prompt_style.json").write_text(json.dumps({"name": "chatml"}))
    report = dedup([src], tmp_path / "out", threshold=0.7)
    kept = [c["id"] for c in rows(tmp_path / "out/conversations.jsonl")]
    assert kept == ["c0", "c3"]
    assert report["rejected"] == {"exact_duplicate": 1, "near_duplicate": 2}
    assert report["clusters"] == {"exact": 1, "near": 1} and report["largest_cluster"] == 3
    rejects = rows(tmp_path / "out/rejects.jsonl")
    assert {r["id"]: r["duplicate_of"] for r in rejects} == {"c1": "c0", "c2": "c0", "c4": "c0"}
    assert rejects[0]["where"].endswith("conversations.jsonl:2")
    clusters = rows(tmp_path / "out/clusters.jsonl")
    assert {c["stage"] for c in clusters} == {"exact", "near"}
    assert (tmp_path / "out/prompt_style.json").exists()
    assert cli(["data", "dedup", str(src), "--out", str(tmp_path / "cli"), "--no-near"]) == 0
    assert len(rows(tmp_path / "cli/conversations.jsonl")) == 4
    with pytest.raises(DataError):
        dedup([tmp_path / "nothing"], tmp_path / "x")


def _prepared(tmp_path, name, n, style="alpaca"):
    d = tmp_path / name
    d.mkdir()
    (d / "conversations.jsonl").write_text("".join(
        json.dumps({"id": f"{name}{i}", "source": name, "messages": [{"role": "user", "content": f"{name} q{i}"},
                                                                      {"role": "assistant", "content": "a"}], "meta": {}})
        + "\n" for i in range(n)))
    (d / "prompt_style.json").write_text(json.dumps({"name": style}))
    return d


def test_mix_exact_proportions(tmp_path):
    a, b = _prepared(tmp_path, "a", 100), _prepared(tmp_path, "b", 40)
    assert exact_counts([0.7, 0.3], 10) == [7, 3] and sum(exact_counts([1, 1, 1], 100)) == 100
    report = mix([f"{a}:0.7", f"{b}:0.3"], tmp_path / "m", seed=3)
    out = rows(tmp_path / "m/conversations.jsonl")
    counts = {s: sum(r["source"] == s for r in out) for s in ("a", "b")}
    assert counts == {"a": 93, "b": 40} and report["written"] == 133  # b is the limit: 40 / 0.3
    assert len({r["id"] for r in out}) == 133
    mix([f"{a}:0.7", f"{b}:0.3"], tmp_path / "m2", seed=3)
    assert rows(tmp_path / "m2/conversations.jsonl") == out  # seeded
    assert cli(["data", "mix", f"{a}:0.5", f"{b}:0.5", "--total", "60", "--out", str(tmp_path / "m3")]) == 0
    assert [r["source"] for r in rows(tmp_path / "m3/conversations.jsonl")].count("b") == 30
    with pytest.raises(OpenseasonError):
        mix([f"{a}:0.5", f"{b}:0.5"], tmp_path / "m4", total=100)
    with pytest.raises(OpenseasonError):
        mix([f"{a}:zero"], tmp_path / "m5")


def test_stats_counts_and_png(tmp_path, tiny_tokenizer):
    tok_dir = tmp_path / "tok"
    tiny_tokenizer.save(tok_dir)
    d = _prepared(tmp_path, "s", 30)
    report = stats(d, tokenizer=str(tok_dir))
    assert report["kinds"] == {"conversation": 30} and report["turns"] == {"1": 30} and report["unit"] == "tokens"
    png = d / "length_histogram.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert cli(["data", "stats", str(d)]) == 0


def test_longform_sharegpt_generic_redpajama(tmp_path):
    lf = tmp_path / "longform.jsonl"
    lf.write_text(json.dumps({"input": "Write about tides.", "output": "Tides rise.", "source": "Wikipedia",
                              "subset": "search_engine"}) + "\n" + json.dumps({"input": "", "output": "x", "source": "C4",
                                                                               "subset": "chatbot"}) + "\n")
    r = prepare("longform", [lf], tmp_path / "lf", progress=False)
    c = rows(tmp_path / "lf/conversations.jsonl")[0]
    assert r["rejected"] == {"empty": 1} and c["meta"]["source"] == "Wikipedia" and c["meta"]["subset"] == "search_engine"
    assert c["messages"] == [{"role": "user", "content": "Write about tides."}, {"role": "assistant", "content": "Tides rise."}]

    sg = tmp_path / "sg.json"
    sg.write_text(json.dumps([{"id": "x", "conversations": [
        {"from": "gpt", "value": "orphan"}, {"from": "human", "value": "hi"}, {"from": "gpt", "value": "hello"},
        {"from": "gpt", "value": "again"}, {"from": "human", "value": "bye"}]}, {"id": "y", "conversations": []}]))
    r = prepare("sharegpt", [sg], tmp_path / "sg", progress=False)
    c = rows(tmp_path / "sg/conversations.jsonl")[0]
    assert c["messages"] == [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello\n\nagain"}]
    assert r["rejected"] == {"no_reply": 1} and r["merged_turns"] == 1 and r["cut_leading_assistant"] == 1

    csv_file = tmp_path / "qa.csv"
    csv_file.write_text('question,answer,topic\n"What is 2+2?",4,math\n"Name a color",blue,art\n')
    r = prepare("csv", [csv_file], tmp_path / "csv", columns={"instruction": "question", "output": "answer"},
                meta_columns=["topic"], progress=False)
    c = rows(tmp_path / "csv/conversations.jsonl")
    assert r["written"] == 2 and c[0]["messages"][1]["content"] == "4" and c[1]["meta"]["topic"] == "art"
    assert c[0]["id"].endswith("qa-2")  # file:line of the CSV row
    import pyarrow as pa
    import pyarrow.parquet as pq
    pq.write_table(pa.table({"q": ["a?", "b?"], "a": ["A", "B"]}), tmp_path / "t.parquet")
    assert prepare("parquet", [tmp_path / "t.parquet"], tmp_path / "pq", columns={"instruction": "q", "output": "a"},
                   progress=False)["written"] == 2
    with pytest.raises(DataError):
        prepare("csv", [csv_file], tmp_path / "bad", columns={"instruction": "nope"}, progress=False)

    rp = tmp_path / "rp.jsonl"
    docs = ["def f():\n    return 1\n", "x" * 1500, ("word " * 30 + "\n") * 3, "#### $$$ %%% ^^^ &&& *** !!!\n" * 3]
    rp.write_text("".join(json.dumps({"text": t, "meta": {"repo": "r"}}) + "\n" for t in docs))
    r = prepare("redpajama", [rp], tmp_path / "rp", github_filters=True, progress=False)
    assert r["written"] == 1 and r["rejected"] == {"max_line_length": 1, "mean_line_length": 1, "alnum_fraction": 1}
    assert rows(tmp_path / "rp/documents.jsonl")[0]["meta"] == {"repo": "r"}
    assert prepare("redpajama", [rp], tmp_path / "rp2", progress=False)["written"] == 4


def test_hub_offline_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    with pytest.raises(DataError, match="HF_DATASETS_OFFLINE"):
        prepare("hub", ["databricks/databricks-dolly-15k"], tmp_path / "h", as_source="dolly", progress=False)
    with pytest.raises(OpenseasonError):
        prepare("nosuch", [tmp_path], tmp_path / "n", progress=False)
