"""Decode speed (batch 1 by default, `--batch N` for N sequences at once): openseason's generation vs
transformers' `generate` and other engines, same weights, one process.

    python benchmarks/decode.py                                  # CPU, pythia-70m and pythia-160m, fp32
    python benchmarks/decode.py --device cuda --dtype bfloat16 --models pythia-1b llama-7b
    python benchmarks/decode.py --models pythia-70m --threads 1 2 --quantize int8 bf16 --llama-cpp f32 q8_0 \
        --ppl-steps 300                                          # CPU contenders + quantization quality

Contenders on CPU (each optional): ours with weight-only int8 / bf16 linears (`--quantize`, from
openseason.generation.quantize), llama.cpp through llama-cpp-python on the GGUF file our exporter
writes (`--llama-cpp f32 q8_0`; `openseason convert to-gguf`), CTranslate2 on its own conversion of the transformers twin
(`--ctranslate2 float32 int8`), onnxruntime-genai on the model its own builder makes from the
transformers twin (`--onnx fp32 int8`; LLaMA shapes such as `--models llama-6x512`; benchmark-only:
`pip install onnxruntime-genai onnx onnx_ir`), with --threads applied to every side. Each peer engine
runs in a process of its own (PeerProcess: in ours they would share torch's OpenMP runtime), on files
made here from the same weights, and is still timed in turn with ours, run by run.
Every row prints tok/s, the ratio of ours (fp32) to it, and whether its greedy tokens equal ours; at
the first disagreement it prints how far apart our two candidates' fp32 logits were (a flip between
near-ties is rounding, a flip at a wide gap is a bug). `--ppl-steps N` trains a tiny model on real
text (../shared/data, dolly responses) for N steps and reports held-out perplexity in fp32, int8 and
bf16 (on random weights perplexity says nothing), plus the max logit error of each quantization
against fp32 on the benchmark model.

Both sides get the same random-weight model (ours is built from a named config with init_weights(),
transformers' from the same tensors through the production key map), the same prompt, greedy
decoding of --new-tokens tokens with EOS ignored, one warm-up each, then --repeats alternating runs
(so background load hits both alike); the median is reported. tokens/s = new tokens / wall time of
the whole call (prefill of the short prompt included, for both). The script also checks that both
produced the same tokens.

Every decode step must read all weights once (the input embedding excepted: one row per token), so
memory bandwidth / weight bytes is a ceiling on steps per second. On a CPU the fp32 rows report each
side's fraction of it, with the bandwidth probed (a sum over 512 MB) right before each timed run; on
a GPU, the fraction of the HBM ceiling from the data sheet.
"""
from __future__ import annotations

import argparse
import atexit
import contextlib
import itertools
import json
import os
import shutil
import statistics
import subprocess
import tempfile
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from openseason.config import Config  # noqa: E402
from openseason.generation import SamplingParams, compile_decoding, generate_ids, prepare_for_decoding  # noqa: E402
from openseason.generation.llm import parse_dtype  # noqa: E402
from openseason.model import GPT  # noqa: E402

# Peak memory bandwidth (GB/s) by GPU name fragment, from the vendors' data sheets.
HBM_GBPS = {"H200": 4800, "H100 SXM": 3350, "H100 NVL": 3900, "H100 PCIe": 2000, "H100": 3350,
            "A100-SXM4-80GB": 2039, "A100 80GB PCIe": 1935, "A100": 1555, "L40S": 864, "A10G": 600,
            "RTX 4090": 1008, "RTX 3090": 936}


# (our --quantize mode, the peer row that stores its weights the same way): int8 weights with int8
# activations, and 16-bit weights
LIKE_FOR_LIKE = (("int8-dynamic", "llama.cpp q8_0"), ("int8-dynamic", "ctranslate2 int8"),
                 ("int8-dynamic", "onnxruntime-genai int8"), ("bf16", "llama.cpp f16"),
                 ("bf16", "ctranslate2 bfloat16"))
FP32_PEERS = ("ours eager", "transformers", "llama.cpp f32", "ctranslate2 float32", "onnxruntime-genai fp32")

# Shapes that are not named configs: the LLaMA the table measured (6 x 512, vocab 32000).
BENCH_MODELS = {"llama-6x512": ("tiny-llama", dict(name="llama-6x512", n_layer=6, n_embd=512, n_head=8, n_query_groups=8,
                                                   intermediate_size=1376, vocab_size=32000, padded_vocab_size=32000))}


def bench_config(name: str) -> Config:
    if name in BENCH_MODELS:
        from openseason.config import NAMED_CONFIGS

        base, overrides = BENCH_MODELS[name]
        return Config(**{**NAMED_CONFIGS[base], **overrides})
    return Config.from_name(name)


def hf_twin(model: GPT, device, dtype):
    """A transformers model holding exactly our weights (via openseason.convert's key maps)."""
    import transformers

    from openseason.convert.families import family_for_config
    from openseason.convert.keymap import state_to_hf

    config = model.config
    family = family_for_config(config.family, config.name)
    state = {k: v for k, v in model.state_dict().items()
             if not (config.tie_embeddings and k == "lm_head.weight")}
    hf_state = state_to_hf(family, config, state)
    hf_config = family.config_to_hf(config, hf_state)
    hf_config.pop("torch_dtype", None)
    cfg = transformers.AutoConfig.for_model(hf_config.pop("model_type"), **hf_config)
    with torch.device(device):
        hf = transformers.AutoModelForCausalLM.from_config(cfg, dtype=dtype)
    # Hub files name Pythia's output layer embed_out; transformers renames it only in from_pretrained.
    out_name = next(n for n, m in hf.named_modules() if m is hf.get_output_embeddings()) + ".weight"
    if "embed_out.weight" in hf_state and out_name != "embed_out.weight":
        hf_state[out_name] = hf_state.pop("embed_out.weight")
    missing, unexpected = hf.load_state_dict(hf_state, strict=False)
    assert not unexpected and all("rotary" in k or "inv_freq" in k for k in missing), (missing, unexpected)
    hf.generation_config.eos_token_id = None
    hf.generation_config.pad_token_id = 0
    return hf.eval()


def sync(device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def time_call(fn, device) -> tuple[float, list[int]]:
    sync(device)
    start = time.perf_counter()
    out = fn()
    sync(device)
    return time.perf_counter() - start, out


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process and all its threads so far (Linux; 0 elsewhere)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def wait_until_quiet(pids: list[int], window: float = 0.05, limit: float = 2.0) -> float:
    """Waits until none of these processes used any CPU over `window` seconds (at most `limit`); returns
    the seconds waited. A timed run must not share the cores with the previous contender's threads:
    onnxruntime's spun for about 40 ms after each call returned, and our two-thread decode timed right
    after it read 205 tok/s against 266 alone (the bandwidth probe, 23.5 GB/s against 43.6)."""
    start = time.perf_counter()
    before = [cpu_seconds(pid) for pid in pids]
    while time.perf_counter() - start < limit:
        time.sleep(window)
        now = [cpu_seconds(pid) for pid in pids]
        if now == before:
            break
        before = now
    return time.perf_counter() - start


def weight_bytes(model: GPT) -> int:
    """Bytes a decode step reads: every parameter except the input embedding (unless lm_head shares it)."""
    total = sum(p.numel() * p.element_size() for p in model.parameters())
    if not model.config.tie_embeddings:
        total -= model.embed.weight.numel() * model.embed.weight.element_size()
    return total


def paired_ratio(ours: list[float], peer: list[float]) -> float:
    """Our speed over the peer's as the median of each alternated repeat's ratio (seconds peer / ours):
    a repeat times both sides within seconds, so each pair shares the machine's state (this VM's read
    bandwidth drifted 30% in minutes)."""
    return statistics.median(p / o for o, p in zip(ours, peer))


class ReadBandwidth:
    """What this CPU reads from memory with torch's current threads: a sum over a buffer far larger
    than any cache, best of `tries` (GB/s). The roofline of fp32 batch-1 decoding is this over
    weight_bytes; a model whose weights partly stay in cache can run above it. Measured right before
    each timed run (`probe`), because this VM's read bandwidth drifted 30-50% within minutes: a run's
    fraction of the roofline is taken against the bandwidth of its own moment."""

    def __init__(self, megabytes: int = 512, tries: int = 3):
        self.buffer = torch.ones(megabytes * 2**20 // 4)
        self.buffer.sum()
        self.tries = tries

    def probe(self) -> float:
        best = min(time_call(self.buffer.sum, "cpu")[0] for _ in range(self.tries))
        return self.buffer.numel() * 4 / best / 1e9


def roofline_fraction(seconds: list[float], gbps: list[float], bytes_per_run: float) -> float:
    """The median over a contender's timed runs of (bytes read per second) / (the bandwidth probed just
    before that run)."""
    return statistics.median(bytes_per_run / dt / 1e9 / bw for dt, bw in zip(seconds, gbps))


def greedy_logits(model: GPT, ids: list[int]) -> torch.Tensor:
    """Our fp32 logits [T, vocab] for a whole sequence (to judge a flip)."""
    with torch.inference_mode():
        return model(torch.tensor([ids], device=model.embed.weight.device))[0].float().cpu()


def agreement(ours: list[int], theirs: list[int], prompt: list[int], logits: torch.Tensor,
              reference: list[int] | None = None) -> str:
    """Whether two greedy runs chose the same tokens; at the first difference, the gap between the two
    choices in `logits` (our fp32 logits along `reference`, our fp32 tokens, by default `ours`). When
    `ours` had already left `reference` there, those logits are not the ones either side saw: no gap."""
    if ours == theirs:
        return "same tokens"
    i = next((k for k, (a, b) in enumerate(zip(ours, theirs)) if a != b), min(len(ours), len(theirs)))
    if i >= min(len(ours), len(theirs)):
        return f"lengths differ ({len(ours)} vs {len(theirs)})"
    reference = ours if reference is None else reference
    left = next((k for k, (a, b) in enumerate(zip(ours[:i], reference)) if a != b), None)
    if left is not None:
        return f"differ at token {i}, where ours had left our fp32 tokens since token {left} (no gap to judge)"
    row = logits[len(prompt) + i - 1]
    return f"differ at token {i}: our logit gap there {float(row[ours[i]] - row[theirs[i]]):.3g}"


def llama_cpp_gguf(model: GPT, kind: str, workdir: Path) -> Path:
    """The GGUF file our exporter writes for `model` at `kind` (f32, f16, q8_0), made once per workdir."""
    from openseason.checkpoint import save_checkpoint
    from openseason.convert.gguf import convert_to_gguf
    from openseason.tokenizer import train_bpe

    ckpt = workdir / "ckpt"
    if not ckpt.exists():
        # A GGUF file must carry a vocabulary; a small trained one is padded to the embedding size.
        tok = train_bpe(["the quick brown fox jumps over the lazy dog"] * 4, vocab_size=300)
        save_checkpoint(ckpt, model, tokenizer=tok)
    path = workdir / f"model-{kind}.gguf"
    if not path.exists():
        convert_to_gguf(ckpt, path, type=kind)
    return path


def llama_cpp_model_params(kind: str, default=None):
    """llama.cpp model parameters for `kind` (from `default`, the bindings' defaults function):
    llama-cpp-python 0.3.36's extra CPU buffer types (Q8_0 repacking / AMX) segfaulted on our q8_0
    exports on an AVX-512+AMX CPU (like ggml-org/llama.cpp#20824); plain CPU buffers run them."""
    import llama_cpp

    params = (default or llama_cpp.llama_cpp.llama_model_default_params)()
    if kind == "q8_0":
        params.use_extra_bufts = False
    return params


def hf_directory(hf, workdir: Path) -> Path:
    """The transformers twin saved with a small trained tokenizer, for the peers that convert it."""
    from openseason.tokenizer import train_bpe

    hf_dir = workdir / "hf"
    if not hf_dir.exists():
        hf.save_pretrained(hf_dir)
        train_bpe(["the quick brown fox jumps over the lazy dog"] * 4, vocab_size=300).save(hf_dir)
        cfg_file = hf_dir / "tokenizer_config.json"
        cfg = json.loads(cfg_file.read_text())
        cfg.update(bos_token="<|endoftext|>", unk_token="<|endoftext|>")   # CTranslate2's converter needs strings
        cfg_file.write_text(json.dumps(cfg))
    return hf_dir


class PeerProcess:
    """A peer engine in a process of its own, as its users run it; calls go over a pipe, so timing one
    from here adds a pipe round trip (tens of microseconds against runs of 0.1 s and more).

    In our process, CTranslate2 and llama.cpp bind to torch's OpenMP runtime (libgomp, loaded into the
    global scope first). CTranslate2 runs its products from a thread of its own, so a second thread
    team appears; with more OpenMP threads than cores, libgomp stops spinning at barriers and every
    thread of every team sleeps and wakes through the kernel instead. On 2 cores that halved our
    2-thread decode after one CTranslate2 call (llama-6x512: 235 -> 123 tok/s) and slowed CTranslate2
    itself below its 1-thread rate. In separate processes no engine shares another's runtime."""

    def __init__(self, name: str, factory, *args):
        import multiprocessing

        context = multiprocessing.get_context("spawn")   # no fork of a process with threads
        self.name = name
        self.pipe, child = context.Pipe()
        self.process = context.Process(target=_serve_peer, args=(child, factory, args), daemon=True)
        self.process.start()
        child.close()
        self._answer()   # built, or the child's error (a daemon: it ends with this process at the latest)

    def _answer(self):
        try:
            status, value = self.pipe.recv()
        except EOFError:
            raise RuntimeError(f"{self.name}: its process ended (exit code {self.process.exitcode})") from None
        if status == "error":
            raise RuntimeError(f"{self.name} failed in its process:\n{value}")
        return value

    def __call__(self, rows, n: int):
        self.pipe.send((rows, n))
        return self._answer()

    def close(self) -> None:
        if self.process.is_alive():
            with contextlib.suppress(BrokenPipeError, OSError):
                self.pipe.send(None)
            self.process.join(10)
        if self.process.is_alive():
            self.process.kill()


def _serve_peer(pipe, factory, args) -> None:
    """The child's loop: build the peer's run function, then run it for each request until None."""
    import traceback

    try:
        run = factory(*args)
        pipe.send(("ok", None))
        while (request := pipe.recv()) is not None:
            pipe.send(("ok", run(*request)))
    except Exception:   # noqa: BLE001 - handed to the parent, which raises it
        pipe.send(("error", traceback.format_exc()))


def llama_cpp_runner(path: Path, kind: str, threads: int, ctx: int):
    """A greedy decode function over llama.cpp, on the GGUF file our exporter wrote (llama_cpp_gguf)."""
    import llama_cpp
    import numpy as np

    default = llama_cpp.llama_cpp.llama_model_default_params
    llama_cpp.llama_cpp.llama_model_default_params = lambda: llama_cpp_model_params(kind, default)
    # logits_all: llama-cpp-python 0.3.36 fills `scores` only then (the prompt's extra rows cost one
    # batched lm_head product at prefill); the greedy pick here is ours, argmax over those logits.
    llm = llama_cpp.Llama(model_path=str(path), n_ctx=ctx, n_threads=threads, n_threads_batch=threads,
                          n_batch=ctx, logits_all=True, verbose=False)
    llama_cpp.llama_cpp.llama_model_default_params = default

    def run(ids: list[int], n: int) -> list[int]:
        llm.reset()
        llm.eval(ids)
        out = []
        for _ in range(n):
            out.append(int(np.argmax(llm.scores[llm.n_tokens - 1])))
            llm.eval([out[-1]])
        return out
    return run


def llama_cpp_batch_runner(path: Path, kind: str, threads: int, batch: int, ctx: int):
    """Greedy decoding of `batch` sequences at once over llama.cpp's C API (llama-cpp-python's
    low-level bindings; its Llama class decodes one sequence): one context with a sequence id per row,
    every step one llama_decode of `batch` tokens, as llama.cpp's server does with parallel slots."""
    import ctypes

    import llama_cpp as L
    import numpy as np

    from llama_cpp._logger import set_verbose

    set_verbose(False)   # llama.cpp's loader logs every tensor otherwise (the Llama class does this too)
    lm = L.llama_model_load_from_file(str(path).encode(), llama_cpp_model_params(kind))
    params = L.llama_context_default_params()
    params.n_ctx, params.n_batch, params.n_ubatch = batch * ctx, batch * ctx, batch * ctx
    params.n_seq_max, params.n_threads, params.n_threads_batch = batch, threads, threads
    context = L.llama_init_from_model(lm, params)
    n_vocab = L.llama_vocab_n_tokens(L.llama_model_get_vocab(lm))
    work = L.llama_batch_init(batch * ctx, 0, 1)

    def decode(entries: list[tuple[int, int, int, bool]]) -> None:
        """entries: (token, position, sequence, wants logits)."""
        for i, (token, pos, seq, wants) in enumerate(entries):
            work.token[i], work.pos[i], work.n_seq_id[i] = token, pos, 1
            work.seq_id[i][0], work.logits[i] = seq, int(wants)
        work.n_tokens = len(entries)
        if L.llama_decode(context, work) != 0:
            raise RuntimeError("llama_decode failed")

    def argmax(index: int) -> int:
        row = ctypes.cast(L.llama_get_logits_ith(context, index), ctypes.POINTER(ctypes.c_float * n_vocab))
        return int(np.argmax(np.frombuffer(row.contents, dtype=np.float32)))

    def run(rows: list[list[int]], n: int) -> list[list[int]]:
        L.llama_memory_clear(L.llama_get_memory(context), True)
        decode([(t, p, s, p == len(r) - 1) for s, r in enumerate(rows) for p, t in enumerate(r)])
        ends = list(itertools.accumulate(len(r) for r in rows))
        out = [[argmax(end - 1)] for end in ends]
        for step in range(1, n):
            decode([(o[-1], len(r) + step - 1, s, True) for s, (r, o) in enumerate(zip(rows, out))])
            for s, o in enumerate(out):
                o.append(argmax(s))
        return out
    return run


def ctranslate2_model(hf_dir: Path, kind: str, workdir: Path) -> Path:
    """CTranslate2's conversion of the transformers twin (same weights, saved by hf_directory). Made
    here, not in the peer's process: converting runs torch's threads there, and CTranslate2's own
    team would then be a second one in the same OpenMP runtime (PeerProcess)."""
    import ctranslate2
    import transformers

    # ctranslate2 4.8's converter reads transformers 4 names; give GPT-NeoX the old ones back.
    transformers.GPTNeoXForCausalLM.embed_out = property(lambda self: self.lm_head)
    transformers.GPTNeoXConfig.rotary_pct = property(
        lambda self: (self.rope_parameters or {}).get("partial_rotary_factor", 0.25))
    transformers.GPTNeoXConfig.rotary_emb_base = property(
        lambda self: (self.rope_parameters or {}).get("rope_theta", 10000.0))
    out = workdir / f"ct2-{kind}"
    ctranslate2.converters.TransformersConverter(str(hf_dir)).convert(
        str(out), quantization=None if kind == "float32" else kind, force=True)
    return out


def ctranslate2_runner(model_dir: Path, kind: str, threads: int):
    """A greedy decode function over CTranslate2 on its converted model (ctranslate2_model)."""
    import ctranslate2

    vocab = json.loads((model_dir / "vocabulary.json").read_text())
    generator = ctranslate2.Generator(str(model_dir), device="cpu", intra_threads=threads, compute_type=kind)

    def run(rows: list[list[int]], n: int) -> list[int]:
        result = generator.generate_batch([[vocab[i] for i in ids] for ids in rows], max_length=n, min_length=n,
                                          sampling_topk=1,
                                          include_prompt_in_result=False, end_token=[])
        return list(result[0].sequences_ids[0])
    return run


def onnx_genai_runner(hf_dir: Path, kind: str, threads: int, batch: int, workdir: Path):
    """A greedy decode function over onnxruntime-genai, on the model its own builder makes from the
    transformers twin (same weights, saved by hf_directory); kind is the builder's precision (fp32, int8)."""
    import onnxruntime_genai as og

    out = workdir / f"onnx-{kind}"
    subprocess.run([sys.executable, "-m", "onnxruntime_genai.models.builder", "-i", str(hf_dir), "-o", str(out),
                    "-p", kind, "-e", "cpu"], check=True, capture_output=True)
    config_file = out / "genai_config.json"
    genai = json.loads(config_file.read_text())
    genai["model"]["decoder"]["session_options"]["intra_op_num_threads"] = threads
    config_file.write_text(json.dumps(genai))
    model = og.Model(str(out))

    def run(rows: list[list[int]], n: int) -> list[int]:
        params = og.GeneratorParams(model)
        # min_length = max_length: EOS does not end the run (ignored, as for every other side)
        params.set_search_options(do_sample=False, max_length=len(rows[0]) + n, min_length=len(rows[0]) + n,
                                  batch_size=batch)
        generator = og.Generator(model, params)
        generator.append_tokens(rows)
        while not generator.is_done():
            generator.generate_next_token()
        return list(generator.get_sequence(0))[len(rows[0]):]
    return run


def bench(name: str, args, threads: int | None) -> list[dict]:
    device, dtype = args.device, parse_dtype(args.dtype)
    if threads:
        torch.set_num_threads(threads)
    torch.manual_seed(0)
    config = bench_config(name)
    with torch.device(device):
        ours = GPT(config)
    ours.init_weights()
    ours = ours.to(dtype).eval()
    hf = hf_twin(ours, device, dtype)

    # --batch rows of distinct prompts of one length (no padding on any side); tokens agree on row 0
    prompts = torch.randint(0, config.vocab_size, (args.batch, args.prompt_tokens),
                            generator=torch.Generator().manual_seed(1))
    batch_ids = prompts.tolist()
    ids = batch_ids[0]
    n = args.new_tokens
    params = SamplingParams(max_new_tokens=n, ignore_eos=True)
    workdir = Path(tempfile.mkdtemp(prefix="decode-bench-"))
    # the GGUF files and converted models are ~1 GB a model: gone when the process ends
    atexit.register(shutil.rmtree, workdir, ignore_errors=True)

    # The peers run in processes of their own (PeerProcess), on files made here from the same weights.
    contenders, peer_threads, ctx = {}, threads or torch.get_num_threads(), len(ids) + n + 8
    peers = []

    def peer(*args) -> PeerProcess:
        peers.append(PeerProcess(*args))
        return peers[-1]
    for kind in args.llama_cpp or []:
        path = llama_cpp_gguf(ours, kind, workdir)
        if args.batch == 1:
            runner = peer(f"llama.cpp {kind}", llama_cpp_runner, path, kind, peer_threads, ctx)
            contenders[f"llama.cpp {kind}"] = lambda r=runner: r(ids, n)
        else:
            runner = peer(f"llama.cpp {kind}", llama_cpp_batch_runner, path, kind, peer_threads,
                          args.batch, ctx)
            contenders[f"llama.cpp {kind}"] = lambda r=runner: r(batch_ids, n)[0]
    for kind in args.ctranslate2 or []:
        runner = peer(f"ctranslate2 {kind}", ctranslate2_runner,
                      ctranslate2_model(hf_directory(hf, workdir), kind, workdir), kind, peer_threads)
        contenders[f"ctranslate2 {kind}"] = lambda r=runner: r(batch_ids, n)
    for kind in args.onnx or []:
        if config.family != "llama":
            print(f"# onnxruntime-genai: no builder for the {config.family} family; skipped", flush=True)
            continue
        runner = peer(f"onnxruntime-genai {kind}", onnx_genai_runner, hf_directory(hf, workdir), kind,
                      peer_threads, args.batch, workdir)
        contenders[f"onnxruntime-genai {kind}"] = lambda r=runner: r(batch_ids, n)
    quantized = {}
    for mode in args.quantize or []:
        from openseason.generation.quantize import quantize

        twin = GPT(config).to(dtype).eval()
        twin.load_state_dict(ours.state_dict())
        quantized[mode] = quantize(twin, mode)
        prepare_for_decoding(quantized[mode])   # as LLM.load does after quantizing
        contenders[f"ours {mode}"] = lambda m=quantized[mode]: generate_ids(m, batch_ids, params)[0].token_ids
    prepare_for_decoding(ours)
    if args.compile:
        # "ours" is the compiled decode step; the eager one is a peer row, on the same model object
        seconds = compile_decoding(ours)
        print(f"# {name}: decode step compiled in {seconds:.1f}s", flush=True)

        def without(*names):   # ours with some of its compiled steps set aside
            def run():
                kept = {key: getattr(ours, key, None) for key in names}
                try:
                    for key in names:
                        setattr(ours, key, None)
                    return generate_ids(ours, batch_ids, params)[0].token_ids
                finally:
                    for key, value in kept.items():
                        setattr(ours, key, value)
            return run
        extra = {"ours eager": without("_compiled_step", "_ahead_of_time_step", "_ahead_of_time_batch_step")}
        built = "_ahead_of_time_step" if args.batch == 1 else "_ahead_of_time_batch_step"
        if getattr(ours, built, None) is not None:
            extra["ours torch.compile"] = without(built)   # the step before AOTInductor
        contenders = {**extra, **contenders}
        for model in quantized.values():
            compile_decoding(model)

    def run_ours():
        return generate_ids(ours, batch_ids, params)[0].token_ids

    def run_hf():
        x = prompts.to(device)
        with torch.inference_mode():
            out = hf.generate(x, attention_mask=torch.ones_like(x), max_new_tokens=n, do_sample=False)
        return out[0, len(ids):].tolist()

    everyone = {"ours": run_ours, "transformers": run_hf, **contenders}
    for fn in everyone.values():  # warm-up
        fn()
    times = {k: [] for k in everyone}
    read = ReadBandwidth() if torch.device(device).type == "cpu" else None
    gbps = {k: [] for k in everyone}   # the bandwidth probed right before each timed run
    tokens = {}
    processes = [os.getpid()] + [runner.process.pid for runner in peers]
    for _ in range(args.repeats):  # alternate, so background load hits every side alike
        for key, fn in everyone.items():
            wait_until_quiet(processes)   # the last contender's threads may still spin for a while
            if read is not None and (key == "ours" or key in FP32_PEERS):   # the rows that report a fraction
                gbps[key].append(read.probe())
            dt, tokens[key] = time_call(fn, device)
            times[key].append(dt)
    tps = {k: args.batch * n / statistics.median(v) for k, v in times.items()}
    logits = greedy_logits(ours, ids + tokens["ours"])
    probe = torch.tensor([ids + tokens["ours"]], device=device)
    rows = []
    for key in everyone:
        if key == "ours":
            continue
        row = {"model": name, "threads": threads or torch.get_num_threads(), "device": device,
               "dtype": str(dtype).replace("torch.", ""), "peer": key, "ours_tps": tps["ours"],
               "peer_tps": tps[key], "ratio": paired_ratio(times["ours"], times[key]),
               "agree": agreement(tokens["ours"], tokens[key], ids, logits)}
        if key.startswith("ours ") and key[5:] in quantized:
            with torch.inference_mode():
                row["logit_err"] = float((quantized[key[5:]](probe)[0].float().cpu() - logits).abs().max())
        rows.append(row)
    if read is not None:
        # a decode step reads the weights once for all --batch rows: a run reads n steps' worth
        bytes_per_run = n * weight_bytes(ours)
        ours_fraction = roofline_fraction(times["ours"], gbps["ours"], bytes_per_run)
        for row in rows:   # the roofline is for fp32 weights: quantized peers read fewer bytes
            row.update(read_gbps=statistics.median(gbps["ours"]), ours_fraction=ours_fraction)
            if dtype == torch.float32 and row["peer"] in FP32_PEERS:
                row["peer_fraction"] = roofline_fraction(times[row["peer"]], gbps[row["peer"]], bytes_per_run)
    # like for like: each of our quantized modes against the peer that stores weights the same way,
    # with the same paired ratio (these rows carry no roofline: it is for fp32 weights)
    for mode, peer_key in LIKE_FOR_LIKE:
        ours_key = f"ours {mode}"
        if ours_key in times and peer_key in times:
            rows.append({"model": name, "threads": threads or torch.get_num_threads(), "device": device,
                         "dtype": mode, "peer": peer_key, "ours_tps": tps[ours_key], "peer_tps": tps[peer_key],
                         "ratio": paired_ratio(times[ours_key], times[peer_key]),
                         "agree": agreement(tokens[ours_key], tokens[peer_key], ids, logits, tokens["ours"])})
    if torch.device(device).type == "cuda":
        gbps = args.hbm_gbps or next((v for k, v in HBM_GBPS.items() if k in torch.cuda.get_device_name()), None)
        if gbps:
            ceiling = args.batch * gbps * 1e9 / weight_bytes(ours)
            rows[0].update(hbm_gbps=gbps, ceiling_tps=ceiling, fraction=tps["ours"] / ceiling,
                           hf_fraction=tps["transformers"] / ceiling)
    for runner in peers:   # each held its engine and model in memory
        runner.close()
    del hf, ours
    return rows


def quantized_perplexity(steps: int, modes: list[str]) -> dict:
    """Train a tiny GPT-NeoX on real text (dolly responses) for `steps` steps, then held-out
    perplexity in fp32 and after each weight-only quantization."""
    import math

    from openseason.generation.quantize import quantize
    from openseason.tokenizer import train_bpe

    data = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "dolly-15k" / "dolly_sample.jsonl"
    if not data.exists():
        data = Path("/work/shared/data/dolly-15k/dolly_sample.jsonl")
    texts = [json.loads(line)["response"] for line in data.read_text().splitlines() if line.strip()]
    train_texts, test_texts = texts[:500], texts[500:]
    tok = train_bpe(train_texts, vocab_size=1024)
    stream = lambda ts: torch.tensor([i for t in ts for i in tok.encode(t, eos=True)])  # noqa: E731
    train_ids, test_ids = stream(train_texts), stream(test_texts)
    config = Config.from_name("tiny-neox", vocab_size=tok.vocab_size, padded_vocab_size=1024, n_layer=4,
                              n_embd=128, n_head=4, intermediate_size=512, block_size=128)
    torch.manual_seed(0)
    model = GPT(config)
    model.init_weights()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.0)
    g = torch.Generator().manual_seed(0)
    T, B = 128, 16
    for step in range(steps):
        start = torch.randint(0, len(train_ids) - T - 1, (B,), generator=g)
        x = torch.stack([train_ids[s:s + T] for s in start])
        y = torch.stack([train_ids[s + 1:s + T + 1] for s in start])
        for group in opt.param_groups:
            group["lr"] = 3e-3 * min(1.0, (step + 1) / 30) * (0.1 + 0.9 * (1 - step / steps))
        loss = torch.nn.functional.cross_entropy(model(x).flatten(0, 1), y.flatten())
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()

    def ppl(m) -> float:
        n = (len(test_ids) - 1) // T * T
        x, y = test_ids[:n].view(-1, T), test_ids[1:n + 1].view(-1, T)
        with torch.inference_mode():
            return math.exp(float(torch.nn.functional.cross_entropy(m(x).flatten(0, 1), y.flatten())))

    out = {"steps": steps, "train_loss": float(loss.detach()), "test_tokens": (len(test_ids) - 1) // T * T, "fp32": ppl(model)}
    for mode in modes:
        twin = GPT(config).eval()
        twin.load_state_dict(model.state_dict())
        out[mode] = ppl(quantize(twin, mode))
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", nargs="+", default=["pythia-70m", "pythia-160m"])
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="float32")
    p.add_argument("--prompt-tokens", type=int, default=16)
    p.add_argument("--batch", type=int, default=1,
                   help="sequences decoded together (tok/s counts all of them; llama.cpp decodes them as "
                        "parallel sequences, one llama_decode a step)")
    p.add_argument("--new-tokens", type=int, default=128)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", type=int, nargs="+", default=None,
                   help="CPU threads for every side, one run per value (default: torch's choice)")
    p.add_argument("--quantize", nargs="*", choices=["int8", "int8-dynamic", "bf16"], default=[],
                   help="also time ours with weight-only int8 / bf16 linears, or int8 weights and activations (int8-dynamic)")
    p.add_argument("--llama-cpp", nargs="*", choices=["f32", "f16", "q8_0"], default=[],
                   help="also time llama.cpp (llama-cpp-python) on our GGUF export of the same weights")
    p.add_argument("--ctranslate2", nargs="*", choices=["float32", "int8", "int8_float32", "bfloat16"], default=[],
                   help="also time CTranslate2 (compute type) on a conversion of the same weights")
    p.add_argument("--onnx", nargs="*", choices=["fp32", "int8"], default=[],
                   help="also time onnxruntime-genai (its model builder on the same weights; LLaMA shapes)")
    p.add_argument("--compile", action="store_true",
                   help="ours = the compiled decode step (generation.speed.compile_decoding; the --quantize "
                        "rows too; batch 1 through the step built ahead of time); the eager step becomes the "
                        "'ours eager' row and, at batch 1, torch.compile's step alone the 'ours torch.compile' row")
    p.add_argument("--ppl-steps", type=int, default=0,
                   help="train a tiny model on real text this many steps and report perplexity per --quantize mode")
    p.add_argument("--hbm-gbps", type=float, default=None, help="GPU memory bandwidth (default: by GPU name)")
    args = p.parse_args(argv)
    import transformers

    peers = [f"transformers {transformers.__version__}"]
    if args.llama_cpp:
        import llama_cpp
        peers.append(f"llama-cpp-python {llama_cpp.__version__}")
    if args.ctranslate2:
        import ctranslate2
        peers.append(f"ctranslate2 {ctranslate2.__version__}")
    if args.onnx:
        import onnxruntime_genai
        peers.append(f"onnxruntime-genai {onnxruntime_genai.__version__}")
    load = "load average %.2f %.2f %.2f" % os.getloadavg() if hasattr(os, "getloadavg") else ""
    from timing import machine
    where = torch.cuda.get_device_name() if args.device.startswith("cuda") else machine()
    print(f"# decode benchmark: torch {torch.__version__}, {', '.join(peers)}, {where}, {load}")
    print(f"# batch {args.batch}, prompt {args.prompt_tokens} tokens, {args.new_tokens} new tokens (greedy), "
          f"median of {args.repeats}; ratio = ours tok/s / peer tok/s (ours fp32 unless the row names "
          f"another dtype), the median of the alternated repeats' ratios")
    for threads in args.threads or [None]:
        for name in args.models:
            for r in bench(name, args, threads):
                line = (f"{r['model']:<12} {r['dtype']:<12} threads {r['threads']}  ours {r['ours_tps']:7.1f} tok/s  "
                        f"{r['peer']:<16} {r['peer_tps']:7.1f} tok/s  ratio {r['ratio']:5.2f}x  {r['agree']}")
                if "read_gbps" in r:
                    line += (f"  roofline ({r['read_gbps']:.1f} GB/s read): ours {100 * r['ours_fraction']:.0f}%"
                             + (f", it {100 * r['peer_fraction']:.0f}%" if "peer_fraction" in r else ""))
                if "logit_err" in r:
                    line += f"  (max logit error vs fp32 {r['logit_err']:.3g})"
                if "fraction" in r:
                    line += (f"   HBM ceiling {r['ceiling_tps']:.0f} tok/s: ours {100 * r['fraction']:.0f}%, "
                             f"transformers {100 * r['hf_fraction']:.0f}%")
                print(line, flush=True)
    if args.ppl_steps:
        r = quantized_perplexity(args.ppl_steps, args.quantize or ["int8", "bf16"])
        extra = "  ".join(f"{m} {r[m]:.3f} ({100 * (r[m] / r['fp32'] - 1):+.3f}%)" for m in args.quantize or ["int8", "bf16"])
        print(f"# perplexity, tiny GPT-NeoX (4x128) trained {r['steps']} steps on dolly responses "
              f"(train loss {r['train_loss']:.2f}), {r['test_tokens']} held-out tokens: fp32 {r['fp32']:.3f}  {extra}")
    if hasattr(os, "getloadavg"):
        print("# load average %.2f %.2f %.2f at the end" % os.getloadavg(), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
