"""Self-Instruct (arXiv 2212.10560) and the Alpaca variant: grow instruction data from seed tasks.

The four steps, each logged to its own crash-safe JSONL (see store.py) under OUT/logs:

1. generate   Prompts with 8 demonstrations (6 seed + 2 machine-generated once any exist; the alpaca
              recipe: 3 seeds, 20 tasks per call with an inline instance). The completion is parsed as a
              numbered list; heuristic filters drop instructions of <= 3 or > 150 words, with a
              blacklisted keyword, starting with "Write a program", with punctuation or a non-ASCII
              character; the ROUGE-L novelty filter drops any whose score against the pool (seeds,
              earlier machine tasks, and tasks accepted earlier in the same batch) exceeds 0.7.
2. classify   Few-shot Yes/No: is the task classification? (demos: seed tasks and their labels)
3. instances  Output-first for classification tasks (a class label, then an input for it), input-first
              otherwise.
4. filter     Drop instances whose input equals the output, with an empty output, or ending with ':'
              (truncated); drop exact duplicates; drop the whole task when one (non-empty) input has two
              different outputs; keep at most 5 per task. Export Alpaca JSON and conversation records.

Determinism is what makes resuming exact: batch b's prompts are built from an RNG seeded by
(seed, b) and the pool state, which is itself rebuilt from the logged completions in order, so a
rerun asks for exactly the prompts it has not yet got answers for. A batch with a failed call stops
generation for this run (its failure is logged with the reason) so that later batches are never built
on a pool that the retry would change.
"""
from __future__ import annotations

import random
import re
import string
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Optional

from ..errors import ConfigError, DataError, where
from ..fileio import iter_jsonl, write_json_atomic, write_jsonl_atomic
from ..generation.client import LLMClient, LLMRequest
from .blacklists import compile_blacklist, resolve
from .prompting import clean, load_template, render
from .calls import Ask, Variant, fit_counts, send_logged, with_prompt
from .report import run_status
from .rouge import NoveltyFilter
from .store import StageLog, stable_hash

__all__ = ["SeedTask", "Recipe", "RECIPES", "load_seeds", "parse_numbered_list", "parse_alpaca_list",
           "heuristic_reject_reason", "parse_instances_input_first", "parse_instances_output_first",
           "filter_instances", "self_instruct"]


@dataclass
class SeedTask:
    id: str
    instruction: str
    instances: list[dict]
    is_classification: bool


@dataclass(frozen=True)
class Recipe:
    name: str
    seed_demos: int                 # seed instructions per generation prompt
    machine_demos: int              # machine instructions per prompt, once that many exist
    tasks_per_call: int             # the list the model is asked to continue up to
    inline_instances: bool          # alpaca: instruction, input and output in one list
    classify: bool                  # run the classification-identification step
    blacklist: str
    batch_size: int                 # generation prompts per step (sent concurrently)
    generate: LLMRequest               # sampling parameters for step 1 (prompt filled per call)
    classify_request: LLMRequest
    instances_request: LLMRequest
    max_instances: int = 5
    threshold: float = 0.7


RECIPES: dict[str, Recipe] = {
    # The paper's parameters: 8 demos, continue the list to 16, 5 prompts per step; classification and
    # instance generation greedy.
    "self-instruct": Recipe(
        "self-instruct", seed_demos=6, machine_demos=2, tasks_per_call=16, inline_instances=False, classify=True,
        blacklist="paper", batch_size=5,
        generate=LLMRequest("", max_tokens=1024, temperature=0.7, top_p=0.5, stop=("\n\n", "\n16", "16.", "16 .")),
        classify_request=LLMRequest("", max_tokens=3, temperature=0.0, top_p=1.0, stop=("\n", "Task:")),
        instances_request=LLMRequest("", max_tokens=350, temperature=0.0, top_p=1.0, stop=("Example 6", "Task:"))),
    # Stanford Alpaca: 3 seed demos, 20 tasks per call each with its instance, no classification step.
    "alpaca": Recipe(
        "alpaca", seed_demos=3, machine_demos=0, tasks_per_call=20, inline_instances=True, classify=False,
        blacklist="alpaca", batch_size=5,
        generate=LLMRequest("", max_tokens=3072, temperature=1.0, top_p=1.0, stop=("\n20", "20.", "20 .")),
        classify_request=LLMRequest(""), instances_request=LLMRequest("")),
}


# -- seeds ----------------------------------------------------------------------------------------------

def load_seeds(path: str | Path) -> list[SeedTask]:
    """Self-Instruct seed tasks: JSONL of {"id", "instruction", "instances": [{"input", "output"}],
    "is_classification"}."""
    seeds = []
    for lineno, row in iter_jsonl(path):
        loc = where(path, lineno)
        if not isinstance(row, dict) or not isinstance(row.get("instruction"), str) or not row["instruction"].strip():
            raise DataError('a seed task needs a non-empty "instruction" string', where=loc,
                            hint='expected {"id", "instruction", "instances": [{"input", "output"}], "is_classification"}')
        instances = row.get("instances") or []
        if not isinstance(instances, list) or not all(isinstance(i, dict) and isinstance(i.get("output"), str)
                                                      for i in instances):
            raise DataError('"instances" must be a list of {"input", "output"} strings', where=loc)
        seeds.append(SeedTask(str(row.get("id", f"seed_{lineno}")), row["instruction"].strip(),
                              [{"input": i.get("input") or "", "output": i["output"]} for i in instances],
                              bool(row.get("is_classification", False))))
    if not seeds:
        raise DataError("no seed tasks", where=str(path))
    return seeds


# -- step 1: generation -----------------------------------------------------------------------------------

_NUMBERED = re.compile(r"(?:^|\n)\s*(\d+)\s*[.)]\s+")


def parse_numbered_list(completion: str, start: int) -> list[str]:
    """Split '<start>.' + completion into the instructions of a numbered list (whitespace collapsed)."""
    text = f"{start}. " + completion.lstrip(" ")
    parts = _NUMBERED.split(text)
    # parts = [prefix, num, body, num, body, ...]
    return [clean(body) for body in parts[2::2]]


_ALPACA_ITEM = re.compile(r"^\s*\d+\s*\.\s*Instruction:(.*?)\n\s*\d+\s*\.\s*Input:(.*?)\n\s*\d+\s*\.\s*Output:(.*)$",
                          re.DOTALL)


def parse_alpaca_list(completion: str, start: int) -> list[Optional[dict]]:
    """Parse the alpaca recipe's '###'-separated items; None for an item that does not parse."""
    text = f"{start}. Instruction:" + completion
    out: list[Optional[dict]] = []
    for block in text.split("###"):
        if not block.strip():
            continue
        m = _ALPACA_ITEM.match(block)
        if not m:
            out.append(None)
            continue
        inp = m.group(2).strip()
        out.append({"instruction": clean(m.group(1)), "input": "" if inp.lower() == "<noinput>" else inp,
                    "output": m.group(3).strip()})
    return out


def heuristic_reject_reason(instruction: str, blacklist) -> Optional[str]:
    """The paper's heuristic filters; None when the instruction passes."""
    if not instruction:
        return "empty"
    words = len(instruction.split())
    if words <= 3:
        return "too short (<= 3 words)"
    if words > 150:
        return "too long (> 150 words)"
    for word, pattern in blacklist:
        if pattern.search(instruction):
            return f"blacklist: {word}"
    if instruction.startswith("Write a program"):
        return "starts with 'Write a program'"
    if instruction[0] in string.punctuation:
        return "starts with punctuation"
    if not instruction[0].isascii():
        return "starts with a non-ASCII character"
    return None


def _format_alpaca_demo(i: int, task: SeedTask) -> str:
    inst = task.instances[0] if task.instances else {"input": "", "output": ""}
    inp = inst["input"].strip() or "<noinput>"
    return f"###\n{i}. Instruction: {task.instruction}\n{i}. Input:\n{inp}\n{i}. Output:\n{inst['output'].strip()}\n"


def generation_prompts(recipe: Recipe, rng: random.Random, seeds: list[SeedTask], machine: list[str],
                       template_dir=None) -> list[tuple[str, int]]:
    """(prompt, the number its completion starts at) for one generation call: the full prompt first,
    then shorter ones with fewer demonstrations (the first ones dropped), down to one, for backends
    whose context cannot hold them all."""
    if recipe.inline_instances:
        demos = rng.sample(seeds, recipe.seed_demos)
        template = load_template("alpaca_generate.txt", template_dir)
        out = []
        for k in range(len(demos), 0, -1):
            body = "".join(_format_alpaca_demo(i + 1, t) for i, t in enumerate(demos[-k:]))
            out.append((render(template, num=recipe.tasks_per_call, demos=body) + f"###\n{k + 1}. Instruction:", k + 1))
        return out
    picked = rng.sample(machine, min(recipe.machine_demos, len(machine)))
    total = recipe.seed_demos + recipe.machine_demos
    picked += [t.instruction for t in rng.sample(seeds, total - len(picked))]
    rng.shuffle(picked)
    template = load_template("self_instruct_generate.txt", template_dir)
    out = []
    for k in range(len(picked), 0, -1):
        body = "\n".join(f"{i + 1}. {text}" for i, text in enumerate(picked[-k:]))
        out.append((render(template, demos=body, next=k + 1).rstrip(" "), k + 1))
    return out


def generation_prompt(recipe: Recipe, rng: random.Random, seeds: list[SeedTask], machine: list[str],
                      template_dir=None) -> tuple[str, int]:
    """The prompt for one generation call and the number its completion starts at."""
    return generation_prompts(recipe, rng, seeds, machine, template_dir)[0]


def cut_demos(build, demos: list, what: str = "demonstrations") -> tuple[str, list[Variant]]:
    """The prompt with every demonstration, and shorter ones keeping the last k (k = n-1 .. 0)."""
    n = len(demos)
    return build(demos), [Variant(build(demos[n - k:] if k else []), f"{what}: kept {k} of {n}", {"demos": k})
                          for k in range(n - 1, -1, -1)]


# -- step 2: classification ----------------------------------------------------------------------------

def classification_demos(seeds: list[SeedTask], seed: int, n: int = 12) -> str:
    """n seed tasks, half classification, as 'Task: ...\\nIs it classification? Yes|No' demos."""
    return "".join(classification_demo_list(seeds, seed, n))


def classification_demo_list(seeds: list[SeedTask], seed: int, n: int = 12) -> list[str]:
    rng = random.Random(f"{seed}:classify-demos")
    yes = [s for s in seeds if s.is_classification]
    no = [s for s in seeds if not s.is_classification]
    k = min(n // 2, len(yes))
    chosen = rng.sample(yes, k) + rng.sample(no, min(n - k, len(no)))
    rng.shuffle(chosen)
    return [f"Task: {s.instruction}\nIs it classification? {'Yes' if s.is_classification else 'No'}\n\n"
            for s in chosen]


def parse_yes_no(text: str) -> Optional[bool]:
    word = text.strip().split()[0].strip(string.punctuation).lower() if text.strip() else ""
    return {"yes": True, "no": False}.get(word)


# -- step 3: instances ---------------------------------------------------------------------------------

def instance_demos(seeds: list[SeedTask], seed: int, output_first: bool, n: int = 6) -> str:
    return "".join(instance_demo_list(seeds, seed, output_first, n))


def instance_demo_list(seeds: list[SeedTask], seed: int, output_first: bool, n: int = 6) -> list[str]:
    rng = random.Random(f"{seed}:instance-demos:{output_first}")
    if output_first:
        pool = [s for s in seeds if s.is_classification and s.instances and s.instances[0]["input"].strip()]
    else:
        pool = [s for s in seeds if not s.is_classification and s.instances]
    chosen = rng.sample(pool, min(n, len(pool)))
    parts = []
    for s in chosen:
        lines = [f"Task: {s.instruction}"]
        for j, inst in enumerate(s.instances, start=1):
            if output_first:
                lines += [f"Class label: {inst['output'].strip()}", f"Input: {inst['input'].strip()}"]
            else:
                lines.append(f"Example {j}")
                if inst["input"].strip():
                    lines.append(f"Input: {inst['input'].strip()}")
                lines.append(f"Output: {inst['output'].strip()}")
        parts.append("\n".join(lines) + "\n\n")
    return parts


_EXAMPLE = re.compile(r"(?:^|\n)\s*Example\s*\d+\s*:?\s*\n?", re.IGNORECASE)


def parse_instances_input_first(text: str) -> list[dict]:
    chunks = [c for c in _EXAMPLE.split(text) if c.strip()]
    out = []
    for chunk in chunks:
        if "Output:" in chunk:
            inp, outp = chunk.split("Output:", 1)
        else:
            inp, outp = "", chunk
        inp = re.sub(r"^\s*Input:", "", inp.strip()).strip()
        out.append({"input": inp, "output": outp.strip()})
    return out


def parse_instances_output_first(text: str) -> list[dict]:
    out = []
    for chunk in re.split(r"(?:^|\n)\s*Class label\s*:", "\n" + text)[1:]:
        label, _, rest = chunk.partition("\n")
        rest = re.sub(r"^\s*Input:", "", rest.strip()).strip()
        out.append({"input": rest, "output": label.strip()})
    return out


# -- step 4: filters -----------------------------------------------------------------------------------

def filter_instances(instances: list[dict], max_instances: int = 5, rng: Optional[random.Random] = None
                     ) -> tuple[list[dict], list[tuple[dict, str]], Optional[str]]:
    """(kept, [(instance, reason)], task_reason): task_reason is set when the whole task is dropped."""
    kept, rejected = [], []
    seen: set[tuple[str, str]] = set()
    outputs_by_input: dict[str, set[str]] = {}
    for inst in instances:
        inp, outp = inst["input"].strip(), inst["output"].strip()
        if not outp:
            rejected.append((inst, "empty output"))
        elif inp == outp:
            rejected.append((inst, "input equals output"))
        elif outp.endswith(":"):
            rejected.append((inst, "output ends with ':' (truncated)"))
        elif (inp, outp) in seen:
            rejected.append((inst, "exact duplicate"))
        else:
            seen.add((inp, outp))
            outputs_by_input.setdefault(inp, set()).add(outp)
            kept.append({"input": inp, "output": outp})
    # An empty input is no conflict: a task without input may well have several good outputs.
    conflicts = [i for i, outs in outputs_by_input.items() if i and len(outs) > 1]
    if conflicts:
        return [], rejected + [(k, "dropped with its task (conflicting outputs)") for k in kept], \
            "conflicting outputs for the same input"
    if len(kept) > max_instances:
        rng = rng or random.Random(0)
        chosen = sorted(rng.sample(range(len(kept)), max_instances))
        rejected += [(kept[i], f"over {max_instances} per task") for i in range(len(kept)) if i not in chosen]
        kept = [kept[i] for i in chosen]
    if not kept:
        return [], rejected, "no valid instance"
    return kept, rejected, None


# -- the run -------------------------------------------------------------------------------------------

@dataclass
class _Counts:
    counts: dict = field(default_factory=dict)

    def add(self, stage: str, reason: str, n: int = 1) -> None:
        self.counts.setdefault(stage, {})
        self.counts[stage][reason] = self.counts[stage].get(reason, 0) + n


def _progress(enabled: bool):
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                    disable=not enabled, transient=True)


def self_instruct(seeds: str | Path, backend: LLMClient, num: int, out: str | Path, *, recipe: str = "self-instruct",
                  threshold: Optional[float] = None, blacklist=None, batch_size: Optional[int] = None, seed: int = 0,
                  max_calls: Optional[int] = None, tokenizer: str = "default", template_dir=None,
                  chunk_size: int = 64, progress: bool = True, max_tokens: Optional[int] = None,
                  instance_max_tokens: Optional[int] = None) -> dict:
    """Run (or resume) Self-Instruct until `num` machine instructions pass every filter; write the
    instructions, tasks with instances, Alpaca JSON, conversation records, rejects and a report to `out`.

    max_tokens           completion tokens per generation call (default: the recipe's, 1024 or 3072)
    instance_max_tokens  completion tokens per instance call (default 350)

    Every dropped item is in a rejects file with its reason (rejected_instructions.jsonl,
    rejected_instances.jsonl, rejected_tasks.jsonl; failed calls in failures.jsonl) and the report's
    counts per reason equal those files. The report's "ok" is False (and "status" says why) when
    calls failed, the run stopped before `num`, or no task was kept.
    Returns the report dict (also in OUT/report.json)."""
    if recipe not in RECIPES:
        raise ConfigError(f"unknown recipe {recipe!r}", hint=f"choose one of {sorted(RECIPES)}")
    if num < 1:
        raise ConfigError(f"--num must be at least 1, not {num}")
    for name, value in (("--max-tokens", max_tokens), ("--instance-max-tokens", instance_max_tokens)):
        if value is not None and value < 1:
            raise ConfigError(f"{name} must be at least 1, not {value}")
    rcp = RECIPES[recipe]
    if max_tokens is not None:
        rcp = replace(rcp, generate=replace(rcp.generate, max_tokens=max_tokens))
    if instance_max_tokens is not None:
        rcp = replace(rcp, instances_request=replace(rcp.instances_request, max_tokens=instance_max_tokens))
    threshold = rcp.threshold if threshold is None else threshold
    batch_size = batch_size or rcp.batch_size
    words = resolve(blacklist if blacklist is not None else rcp.blacklist)
    compiled = compile_blacklist(words)
    out = Path(out)
    seed_tasks = load_seeds(seeds)
    if len(seed_tasks) < rcp.seed_demos + rcp.machine_demos:
        raise DataError(f"{len(seed_tasks)} seed tasks; the {recipe} recipe needs at least "
                        f"{rcp.seed_demos + rcp.machine_demos}", where=str(seeds))
    backend.prepare()
    out.mkdir(parents=True, exist_ok=True)  # after the inputs and the backend checked out: no empty --out
    max_calls = max_calls or max(100, 20 * num)
    started = time.perf_counter()
    counts = _Counts()
    fitted: dict[str, dict] = {}
    run_info = {"recipe": recipe, "seed": seed, "threshold": threshold, "blacklist": list(words),
                "seeds": str(seeds), "num": num, "max_tokens": rcp.generate.max_tokens,
                "instance_max_tokens": None if rcp.inline_instances else rcp.instances_request.max_tokens,
                "backend": backend.describe()}
    gen_config = {"recipe": asdict(rcp), "seed": seed, "threshold": threshold, "blacklist": list(words),
                  "seeds": stable_hash([asdict(s) for s in seed_tasks]), "batch_size": batch_size,
                  "tokenizer": tokenizer, "template": load_template(
                      "alpaca_generate.txt" if rcp.inline_instances else "self_instruct_generate.txt", template_dir)}

    # Step 1 -------------------------------------------------------------------------------------------
    novelty = NoveltyFilter(threshold, tokenizer=tokenizer, keep_neighbors=10)
    novelty.extend(s.instruction for s in seed_tasks)
    machine: list[dict] = []
    rejected_instructions: list[dict] = []
    failures: list[dict] = []
    stopped: Optional[str] = None
    gen_log = StageLog(out / "logs" / "generate.jsonl", "generate", gen_config)
    gen_results = []
    batch = 0
    calls = 0

    def reject_instruction(reason: str, instruction: str, key: str, **extra) -> None:
        counts.add("generate", reason)
        rejected_instructions.append({"instruction": instruction, "reason": reason, "call": key, **extra})

    progress_bar = _progress(progress)
    with progress_bar:
        task = progress_bar.add_task("self-instruct: instructions", total=num)
        while len(machine) < num:
            if calls >= max_calls:
                stopped = f"stopped after {calls} generation calls (--max-calls) with {len(machine)} of {num}"
                break
            items = []
            for j in range(batch_size):
                rng = random.Random(f"{seed}:{batch}:{j}")
                prompts = generation_prompts(rcp, rng, seed_tasks, [m["instruction"] for m in machine], template_dir)
                (prompt, start), n = prompts[0], len(prompts)
                req = with_prompt(rcp.generate, prompt)
                shorter = [Variant(p, f"demonstrations: kept {st - 1} of {n}", {"start": st}) for p, st in prompts[1:]]
                # The slot is part of the key: two slots that happen to draw the same demos still get
                # two samples, as two API calls would.
                items.append(Ask(gen_log.key({"prompt": prompt, "params": req.params(), "slot": [batch, j]}), req,
                                 {"batch": batch, "request": j, "start": start}, shorter))
            calls += len(items)
            results = send_logged(backend, gen_log, items)
            failed = [(a.key, gen_log.failure(a.key)) for a, r in zip(items, results) if r is None]
            if failed:
                failures += [{"stage": "generate", "batch": batch, "call": k, "reason": r} for k, r in failed]
                stopped = (f"generation batch {batch}: {len(failed)} call(s) failed ({failed[0][1]}); "
                           "rerun the same command to retry them and continue")
                break
            gen_results += results
            for ask, res in zip(items, results):
                key = ask.key
                start = (res.get("fit") or {}).get("start", ask.input["start"])
                if rcp.inline_instances:
                    parsed = parse_alpaca_list(res["text"], start)
                else:
                    parsed = [{"instruction": t} for t in parse_numbered_list(res["text"], start)]
                if res.get("finish_reason") == "length" and parsed:
                    item = parsed.pop()  # the last item was cut off by max_tokens
                    reject_instruction("truncated (last item, finish_reason=length)",
                                       (item or {}).get("instruction", ""), key)
                for item in parsed:
                    if len(machine) >= num:
                        reject_instruction("not needed (--num reached)", (item or {}).get("instruction", ""), key)
                        continue
                    if item is None:
                        reject_instruction("unparseable item", "", key)
                        continue
                    inst = item["instruction"]
                    reason = heuristic_reject_reason(inst, compiled)
                    best = None
                    if reason is None:
                        accepted, best = novelty.add(inst)
                        if not accepted:
                            reason = f"too similar (ROUGE-L > {threshold})"
                    if reason:
                        extra = {}
                        if best is not None:
                            extra = {"max_rouge_l": best, "most_similar": dict(novelty.last_neighbors[:3])}
                        reject_instruction(reason, inst, key, **extra)
                        continue
                    counts.add("generate", "kept")
                    record = {"id": f"{recipe}-{stable_hash(inst, 12)}", "instruction": inst, "max_rouge_l": best,
                              "most_similar": dict(novelty.last_neighbors), "call": key}
                    if rcp.inline_instances:
                        record["instances"] = [{"input": item["input"], "output": item["output"]}]
                    machine.append(record)
            progress_bar.update(task, completed=len(machine))
            batch += 1
    gen_log.close()
    fitted["generate"] = fit_counts(gen_results)
    write_jsonl_atomic(out / "machine_instructions.jsonl", machine)
    write_jsonl_atomic(out / "rejected_instructions.jsonl", rejected_instructions)

    # Step 2 -------------------------------------------------------------------------------------------
    if rcp.classify:
        demo_list = classification_demo_list(seed_tasks, seed)
        template = load_template("is_classification.txt", template_dir)
        clf_log = StageLog(out / "logs" / "classify.jsonl", "classify",
                           {"template": template, "demos": "".join(demo_list),
                            "params": rcp.classify_request.params()})
        clf_results = []
        for lo in range(0, len(machine), chunk_size):
            part = machine[lo:lo + chunk_size]
            items = []
            for rec in part:
                prompt, shorter = cut_demos(
                    lambda d, i=rec["instruction"]: render(template, demos="".join(d), instruction=i).rstrip("\n"),
                    demo_list)
                items.append(Ask(clf_log.key(rec["instruction"]), with_prompt(rcp.classify_request, prompt),
                                 {"instruction": rec["instruction"]}, shorter))
            results = send_logged(backend, clf_log, items)
            clf_results += results
            for ask, rec, res in zip(items, part, results):
                if res is None:
                    rec["is_classification"] = None
                    failures.append({"stage": "classify", "instruction": rec["instruction"],
                                     "reason": clf_log.failure(ask.key)})
                    continue
                verdict = parse_yes_no(res["text"])
                if verdict is None:
                    counts.add("classify", "answer neither Yes nor No (taken as No)")
                    verdict = False
                rec["is_classification"] = verdict
                counts.add("classify", "classification" if verdict else "not classification")
        clf_log.close()
        fitted["classify"] = fit_counts(clf_results)
    else:
        for rec in machine:
            rec["is_classification"] = None

    # Step 3 -------------------------------------------------------------------------------------------
    rejected_instances: list[dict] = []
    if not rcp.inline_instances:
        templates = {True: load_template("instances_output_first.txt", template_dir),
                     False: load_template("instances_input_first.txt", template_dir)}
        demo_lists = {of: instance_demo_list(seed_tasks, seed, of) for of in (True, False)}
        inst_log = StageLog(out / "logs" / "instances.jsonl", "instances",
                            {"templates": templates, "demos": {of: "".join(d) for of, d in demo_lists.items()},
                             "params": rcp.instances_request.params()})
        inst_results = []
        ready = [r for r in machine if r.get("is_classification") is not None]
        for lo in range(0, len(ready), chunk_size):
            part = ready[lo:lo + chunk_size]
            items = []
            for rec in part:
                of = bool(rec["is_classification"])
                prompt, shorter = cut_demos(
                    lambda d, t=templates[of], i=rec["instruction"]: render(t, demos="".join(d), instruction=i),
                    demo_lists[of])
                items.append(Ask(inst_log.key({"instruction": rec["instruction"], "output_first": of}),
                                 with_prompt(rcp.instances_request, prompt), {"instruction": rec["instruction"]},
                                 shorter))
            results = send_logged(backend, inst_log, items)
            inst_results += results
            for ask, rec, res in zip(items, part, results):
                if res is None:
                    failures.append({"stage": "instances", "instruction": rec["instruction"],
                                     "reason": inst_log.failure(ask.key)})
                    continue
                parse = parse_instances_output_first if rec["is_classification"] else parse_instances_input_first
                instances = parse(res["text"])
                if res.get("finish_reason") == "length" and instances:
                    reason = "last instance truncated (finish_reason=length)"
                    counts.add("instances", reason)
                    rejected_instances.append({"task": rec["id"], "instruction": rec["instruction"],
                                               **instances.pop(), "reason": reason})
                rec["instances"] = instances
        inst_log.close()
        fitted["instances"] = fit_counts(inst_results)

    # Step 4 -------------------------------------------------------------------------------------------
    tasks, rejected_tasks = [], []
    for rec in machine:
        if "instances" not in rec:
            reason = "task without instances (failed call, retried next run)"
            counts.add("filter", reason)
            rejected_tasks.append({"task": rec["id"], "instruction": rec["instruction"], "reason": reason})
            continue
        kept, rejects, task_reason = filter_instances(rec["instances"], rcp.max_instances,
                                                      random.Random(f"{seed}:{rec['id']}"))
        for inst, reason in rejects:
            counts.add("filter", reason)
            rejected_instances.append({"task": rec["id"], "instruction": rec["instruction"], **inst, "reason": reason})
        if task_reason:
            reason = f"task dropped: {task_reason}"
            counts.add("filter", reason)
            rejected_tasks.append({"task": rec["id"], "instruction": rec["instruction"], "reason": reason,
                                   "instances": len(rec["instances"])})
            continue
        counts.add("filter", "instances kept", len(kept))
        tasks.append({**rec, "instances": kept})
    write_jsonl_atomic(out / "rejected_instances.jsonl", rejected_instances)
    write_jsonl_atomic(out / "rejected_tasks.jsonl", rejected_tasks)
    write_jsonl_atomic(out / "tasks.jsonl", tasks)
    write_jsonl_atomic(out / "failures.jsonl", failures)
    alpaca, conversations = export_records(tasks, recipe, backend.describe())
    write_json_atomic(out / "alpaca.json", alpaca)
    write_jsonl_atomic(out / "conversations.jsonl", conversations)

    from .report import write_report

    problems = [stopped]
    if failures and not stopped:
        problems.append(f"{len(failures)} call(s) failed ({failures[0]['reason']}); rerun to retry them")
    if not tasks:
        problems.append(f"no task kept ({len(machine)} machine instructions, {len(rejected_tasks)} tasks dropped: "
                        "see rejected_tasks.jsonl and rejected_instances.jsonl)")
    stats = backend.stats
    report = {
        "run": run_info,
        **run_status(problems),
        "counts": {"machine_instructions": len(machine), "tasks": len(tasks), "instances": len(alpaca),
                   "failed_calls_pending": len(failures), "rejected_instructions": len(rejected_instructions),
                   "rejected_instances": len(rejected_instances), "rejected_tasks": len(rejected_tasks)},
        "filters": counts.counts,
        "fitted": {k: v for k, v in fitted.items() if v},
        "cost": {"calls": stats.calls, "failed_calls": stats.failed, "context_exceeded": stats.context_exceeded,
                 "retries": stats.retries,
                 "prompt_tokens": stats.prompt_tokens, "completion_tokens": stats.completion_tokens,
                 "backend_seconds": round(stats.seconds, 3), "wall_seconds": round(time.perf_counter() - started, 3),
                 "note": "calls made by this invocation; answers already in OUT/logs were reused for free"},
    }
    return write_report(out, report, [m["instruction"] for m in machine], [m["max_rouge_l"] for m in machine])


def export_records(tasks: list[dict], source: str, backend: dict) -> tuple[list[dict], list[dict]]:
    """Alpaca rows {"instruction","input","output"} and conversation records, one per instance."""
    alpaca, conversations = [], []
    for task in tasks:
        for j, inst in enumerate(task["instances"]):
            alpaca.append({"instruction": task["instruction"], "input": inst["input"], "output": inst["output"]})
            user = task["instruction"] + (f"\n\n{inst['input']}" if inst["input"] else "")
            conversations.append({
                "id": f"{task['id']}-{j}", "source": source,
                "messages": [{"role": "user", "content": user}, {"role": "assistant", "content": inst["output"]}],
                "meta": {"instruction": task["instruction"], "input": inst["input"],
                         "is_classification": task.get("is_classification"),
                         "max_rouge_l": task.get("max_rouge_l"), "generator": backend}})
    return alpaca, conversations
