"""Load test of `openseason serve`: N concurrent streaming clients on loopback for a bounded time.

Runs the same workload twice in one process against a small random model: once with continuous
batching (the server's default) and once with the engine limited to one sequence at a time, and
prints aggregate tokens/s, p50/p99 time to first token and request latency, the batched/one-at-a-time
throughput ratio (with --compile also a batched phase with the compiled decode step; with
--prefill-together one whose engine prefills the prompts admitted together in one padded pass), how
many requests completed or got a clean 503, and the process RSS before and after.

    .venv/bin/python benchmarks/serve_load.py --clients 32 --duration 20
    .venv/bin/python benchmarks/serve_load.py --clients 32 --duration 20 --prefill-together
    .venv/bin/python benchmarks/serve_load.py --long-clients 2 --clients 8 --duration 30   # chunked prefill

With --long-clients K, K more clients send long prompts (~900 tokens) while the others send short
ones, and the two phases compare whole-prompt prefill with chunked prefill (--prefill-tokens): time to
first token and inter-token latency p99 of the short requests show whether long prompts stall the batch.

Every response must be a complete stream (finish_reason, usage, [DONE]) or a 503 with Retry-After;
anything else is counted as an error and makes the script exit 1.
"""
from __future__ import annotations

import argparse
import asyncio
import socket
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from openseason.checkpoint import save_checkpoint  # noqa: E402
from openseason.config import Config  # noqa: E402
from openseason.model import GPT  # noqa: E402
from openseason.serve.app import create_app  # noqa: E402
from openseason.serve.server import load_for_serving  # noqa: E402
from openseason.tokenizer import train_bpe  # noqa: E402

PROMPTS = ["Tell me about the quick brown fox.", "Add 2 and 3.", "Write a haiku about the sea.",
           "What is the capital of France?", "Summarize: the lazy dog sleeps all day long in the sun.",
           "List three colors.", "Why is the sky blue?", "Translate 'hello' to French."]


def rss_mib() -> float:
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def make_checkpoint(directory: Path) -> Path:
    """A small random LLaMA-style model (4 layers, 256 wide, 1024 context) with a trained-on-the-spot
    BPE tokenizer. EOS is biased away so every request runs to max_tokens (equal work per request)."""
    texts = [p * 3 for p in PROMPTS] * 20
    tokenizer = train_bpe(texts, vocab_size=512)
    config = Config.from_name("tiny-llama", block_size=1024, n_layer=4, n_embd=256, n_head=8,
                              n_query_groups=4, intermediate_size=688, lm_head_bias=True, eos_token_id=0,
                              bos_token_id=None, add_bos_token=False)
    torch.manual_seed(0)
    model = GPT(config)
    model.init_weights(std=0.2)
    with torch.no_grad():
        model.lm_head.bias.zero_()
        model.lm_head.bias[0] = -100.0
    return save_checkpoint(directory / "bench-small", model, tokenizer=tokenizer, run_card={"prompt_style": "chatml"})


class Server:
    def __init__(self, app):
        import uvicorn

        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.server = uvicorn.Server(uvicorn.Config(app, log_level="error", timeout_graceful_shutdown=2))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)
        self.thread.start()
        while not self.server.started:
            time.sleep(0.02)

    def close(self):
        self.server.should_exit = True
        self.thread.join(10)
        self.sock.close()


LONG_PROMPT = " ".join(PROMPTS) * 14   # ~900 tokens with the benchmark's tokenizer


async def client(url: str, model: str, deadline: float, max_tokens: int, seed: int, stats: dict,
                 long: bool = False) -> None:
    async with httpx.AsyncClient(timeout=300) as http:
        i = seed
        while time.monotonic() < deadline:
            content = LONG_PROMPT[: 3000 + (i % 7) * 10] if long else PROMPTS[i % len(PROMPTS)]
            body = {"model": model, "messages": [{"role": "user", "content": content}],
                    "max_tokens": max_tokens, "temperature": 0.8, "seed": i, "stream": True,
                    "stream_options": {"include_usage": True}}
            i += 1
            start = time.monotonic()
            first = None
            last_piece, gaps = None, []
            finish, usage, done = None, None, False
            try:
                async with http.stream("POST", url + "/v1/chat/completions", json=body) as r:
                    if r.status_code == 503:
                        await r.aread()
                        stats["busy"] += 1
                        ok = "retry-after" in r.headers and b'"server_busy"' in r.content
                        stats["errors"] += 0 if ok else 1
                        await asyncio.sleep(float(r.headers.get("retry-after", 1)) / 4)
                        continue
                    if r.status_code != 200:
                        stats["errors"] += 1
                        continue
                    import json

                    async for line in r.aiter_lines():
                        if not line.startswith("data: "):
                            continue
                        data = line[6:]
                        if data == "[DONE]":
                            done = True
                            break
                        chunk = json.loads(data)
                        for choice in chunk.get("choices", []):
                            if choice["delta"].get("content"):
                                now = time.monotonic()
                                if first is None:
                                    first = now - start
                                if last_piece is not None:
                                    gaps.append(now - last_piece)
                                last_piece = now
                            finish = choice.get("finish_reason") or finish
                        usage = chunk.get("usage") or usage
            except httpx.HTTPError:
                stats["errors"] += 1
                continue
            if not (done and finish and usage):
                stats["errors"] += 1
                continue
            stats["completed"] += 1
            stats["tokens"] += usage["completion_tokens"]
            if long:
                stats["long_completed"] += 1
                continue
            stats["ttft"].append(first if first is not None else time.monotonic() - start)
            stats["latency"].append(time.monotonic() - start)
            stats["itl"].extend(gaps)


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    values = sorted(values)
    return values[min(len(values) - 1, int(round(q / 100 * (len(values) - 1))))]


def run_phase(ckpt: Path, *, max_batch: int, max_queue: int, clients: int, duration: float, max_tokens: int,
              long_clients: int = 0, prefill_tokens=512, compile: bool = False,
              prefill_together: bool = False) -> dict:
    engine, settings = load_for_serving(ckpt, device="cpu", max_batch=max_batch, max_queue=max_queue,
                                        compile=compile, prefill_together=prefill_together, log=lambda msg: None)
    engine.prefill_tokens = prefill_tokens
    server = Server(create_app(engine, settings))
    stats = {"busy": 0, "errors": 0, "completed": 0, "long_completed": 0, "tokens": 0, "ttft": [], "latency": [],
             "itl": [], "rss": []}
    try:
        start = time.monotonic()
        # The same server takes the load in two halves; RSS after each shows whether memory keeps growing.
        for half in range(2):
            deadline = time.monotonic() + duration / 2

            async def main():
                await asyncio.gather(*(client(server.url, settings.model_name, deadline, max_tokens,
                                              k * 1000 + half * 500, stats, long=k >= clients)
                                       for k in range(clients + long_clients)))
            asyncio.run(main())
            stats["rss"].append(rss_mib())
        elapsed = time.monotonic() - start
        metrics = httpx.get(server.url + "/metrics.json").json()
    finally:
        server.close()
        engine.close()
    stats["elapsed"] = elapsed
    stats["tokens_per_s"] = stats["tokens"] / elapsed
    stats["decode_steps"] = metrics["decode_steps_total"]
    return stats


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clients", type=int, default=32)
    ap.add_argument("--duration", type=float, default=20.0, help="seconds each phase sends new requests")
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--max-batch", type=int, default=32)
    ap.add_argument("--max-queue", type=int, default=24, help="smaller than --clients so 503s really happen")
    ap.add_argument("--long-clients", type=int, default=0,
                    help="clients sending ~900-token prompts: compare whole-prompt and chunked prefill")
    ap.add_argument("--prefill-tokens", type=int, default=64, help="chunk size of the chunked phase")
    ap.add_argument("--compile", action="store_true",
                    help="add a batched phase with the compiled decode step (serve --compile; it compiles "
                         "before the phase's clocks start)")
    ap.add_argument("--prefill-together", action="store_true",
                    help="add a batched phase whose engine prefills the prompts admitted together in one padded "
                         "pass (serve --prefill-together) instead of each alone")
    args = ap.parse_args(argv)
    torch.set_num_threads(max(1, torch.get_num_threads()))
    if args.long_clients:
        return long_prompt_phases(args)

    with tempfile.TemporaryDirectory() as tmp:
        ckpt = make_checkpoint(Path(tmp))
        rss0 = rss_mib()
        results = {}
        phases = [("batched", args.max_batch, False, False), ("one-at-a-time", 1, False, False)]
        if args.compile:
            phases.insert(1, ("batched+compile", args.max_batch, True, False))
        if args.prefill_together:
            phases.insert(1, ("batched+together", args.max_batch, False, True))
        for name, batch, compiled, together in phases:
            results[name] = run_phase(ckpt, max_batch=batch, max_queue=args.max_queue, clients=args.clients,
                                      duration=args.duration, max_tokens=args.max_tokens, compile=compiled,
                                      prefill_together=together)
            results[name]["rss_after"] = rss_mib()
    print(f"{args.clients} streaming clients, {args.duration:.0f} s per phase, max_tokens {args.max_tokens}, "
          f"max_queue {args.max_queue}, torch threads {torch.get_num_threads()}")
    print(f"{'phase':<15}{'done':>6}{'503':>6}{'err':>5}{'tok/s':>9}{'TTFT p50':>10}{'TTFT p99':>10}"
          f"{'lat p50':>9}{'lat p99':>9}{'RSS MiB':>9}")
    for name, s in results.items():
        print(f"{name:<15}{s['completed']:>6}{s['busy']:>6}{s['errors']:>5}{s['tokens_per_s']:>9.1f}"
              f"{pct(s['ttft'], 50):>10.2f}{pct(s['ttft'], 99):>10.2f}{pct(s['latency'], 50):>9.2f}"
              f"{pct(s['latency'], 99):>9.2f}{s['rss_after']:>9.0f}")
    ratio = results["batched"]["tokens_per_s"] / max(results["one-at-a-time"]["tokens_per_s"], 1e-9)
    print(f"batched / one-at-a-time throughput: {ratio:.2f}x")
    if "batched+together" in results:
        print(f"batched+together / batched throughput (prompts prefilled in one pass / each alone): "
              f"{results['batched+together']['tokens_per_s'] / max(results['batched']['tokens_per_s'], 1e-9):.2f}x")
    if "batched+compile" in results:
        print(f"batched+compile / batched throughput: "
              f"{results['batched+compile']['tokens_per_s'] / max(results['batched']['tokens_per_s'], 1e-9):.2f}x")
    print(f"RSS before: {rss0:.0f} MiB; " + "; ".join(
        f"{name}: {s['rss'][0]:.0f} MiB after the first half, {s['rss'][1]:.0f} MiB after the second"
        for name, s in results.items()))
    errors = sum(s["errors"] for s in results.values())
    print("every request completed or got a clean 503" if not errors else f"{errors} requests failed otherwise")
    return 1 if errors else 0


def long_prompt_phases(args) -> int:
    """Short requests while long prompts arrive: whole-prompt prefill vs chunked prefill."""
    import os

    with tempfile.TemporaryDirectory() as tmp:
        ckpt = make_checkpoint(Path(tmp))
        results = {}
        for name, chunk in (("whole prefill", None), (f"chunked ({args.prefill_tokens})", args.prefill_tokens)):
            results[name] = run_phase(ckpt, max_batch=args.max_batch, max_queue=args.max_queue, clients=args.clients,
                                      duration=args.duration, max_tokens=args.max_tokens,
                                      long_clients=args.long_clients, prefill_tokens=chunk)
    print(f"{args.clients} short + {args.long_clients} long-prompt streaming clients, {args.duration:.0f} s per "
          f"phase, max_tokens {args.max_tokens}, torch threads {torch.get_num_threads()}, "
          f"load average {os.getloadavg()[0]:.2f}")
    print(f"{'phase':<16}{'short':>6}{'long':>5}{'err':>5}{'tok/s':>8}{'TTFT p50':>10}{'TTFT p99':>10}"
          f"{'ITL p50':>9}{'ITL p99':>9}")
    for name, s in results.items():
        print(f"{name:<16}{s['completed'] - s['long_completed']:>6}{s['long_completed']:>5}{s['errors']:>5}"
              f"{s['tokens_per_s']:>8.1f}{pct(s['ttft'], 50):>10.3f}{pct(s['ttft'], 99):>10.3f}"
              f"{pct(s['itl'], 50):>9.3f}{pct(s['itl'], 99):>9.3f}")
    errors = sum(s["errors"] for s in results.values())
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
