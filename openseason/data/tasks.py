"""A built-in, procedurally generated instruction task suite (offline; used by `openseason quickstart`).

Each family is a function rng -> (instruction, answer) with a short, exactly checkable answer:

    add        "Add 17 and 25."                      -> "42"
    reverse    "Reverse: kxqe"                       -> "eqxk"
    sort       "Sort the letters: dbca"              -> "abcd"
    count      "Count the letter a in: abaca"        -> "3"
    upper      "Uppercase: tree"                     -> "TREE"
    repeat     "Repeat: q7x"                         -> "q7x"
    times      "Multiply by 100: 47"                 -> "4700"
    convert    "Convert km to m: 47"                 -> "47000"  (unit conversion)
    story      "Tom has 3 apples. He buys 4 more and gives 2 away. How many apples does Tom have?"
                                                     -> "5", rationale "3 + 4 = 7. 7 - 2 = 5."
               (multi-step word problems for distilling step by step: `word_problem(rng)` gives
                input, label and the programmatically computed rationale; `rationale_rows`)

`convert` reuses what `times` teaches (copy a two-digit number, append zeros) in a new format: the
adapter only has to learn which unit pair means how many zeros, so a model pretrained on the other
families can learn it with a small adapter; the quickstart holds it back. The operand comes last
in both, so copying it is a fixed-distance lookup that a tiny model learns in a few hundred steps.
"""
from __future__ import annotations

import random
import string
from typing import Callable, Iterable, Optional

LETTERS = "abcdefghijklmnopqrstuvwxyz"
UNITS = [("km", "m", 1000), ("m", "cm", 100), ("cm", "mm", 10), ("kg", "g", 1000), ("L", "mL", 1000),
         ("dm", "cm", 10)]


def _word(rng: random.Random, lo: int = 3, hi: int = 6, alphabet: str = LETTERS) -> str:
    return "".join(rng.choice(alphabet) for _ in range(rng.randint(lo, hi)))


def add(rng):
    a, b = rng.randint(0, 49), rng.randint(0, 49)
    return f"Add {a} and {b}.", str(a + b)


def reverse(rng):
    w = _word(rng)
    return f"Reverse: {w}", w[::-1]


def sort(rng):
    w = _word(rng)
    return f"Sort the letters: {w}", "".join(sorted(w))


def count(rng):
    letter = rng.choice("abc")
    w = "".join(rng.choice("abcd") for _ in range(rng.randint(3, 8)))
    return f"Count the letter {letter} in: {w}", str(w.count(letter))


def upper(rng):
    w = _word(rng)
    return f"Uppercase: {w}", w.upper()


def repeat(rng):
    w = _word(rng, 1, 5, LETTERS + string.digits)
    return f"Repeat: {w}", w


def times(rng):
    n = rng.randint(10, 99)
    factor = rng.choice([10, 100, 1000])
    return f"Multiply by {factor}: {n}", str(n * factor)


def convert(rng):
    n = rng.randint(10, 99)
    src, dst, factor = rng.choice(UNITS)
    return f"Convert {src} to {dst}: {n}", str(n * factor)


NAMES = ("Tom", "Ann", "Sam", "Mia", "Ben", "Eva", "Leo", "Zoe")
THINGS = ("apples", "pens", "cards", "coins", "books", "shells")
_STEPS = {"+": ("buys {n} more", "finds {n} more", "gets {n} more"),
          "-": ("gives {n} away", "loses {n}", "eats {n}")}


def word_problem(rng: random.Random, steps: int = 2) -> tuple[str, str, str]:
    """(question, label, rationale): a start amount then `steps` additions or subtractions, every
    intermediate amount in 0..19; the rationale writes out each step ("3 + 4 = 7. 7 - 2 = 5.")."""
    name, thing = rng.choice(NAMES), rng.choice(THINGS)
    amount = rng.randint(1, 9)
    clauses, lines = [], []
    for _ in range(steps):
        op = rng.choice("+-") if 0 < amount < 19 else ("+" if amount == 0 else "-")
        n = rng.randint(1, min(9, 19 - amount)) if op == "+" else rng.randint(1, min(9, amount))
        new = amount + n if op == "+" else amount - n
        clauses.append(rng.choice(_STEPS[op]).format(n=n))
        lines.append(f"{amount} {op} {n} = {new}.")
        amount = new
    question = f"{name} has {lines[0].split()[0]} {thing}. {name} {' and '.join(clauses)}. How many {thing} now?"
    return question, str(amount), " ".join(lines)


def story(rng):
    question, label, _ = word_problem(rng)
    return question, label


def rationale_rows(n: int, seed: int = 0, exclude: Optional[set[str]] = None, steps: int = 2) -> list[dict]:
    """`n` distinct word problems as `synth rationales` rows {"id", "input", "label", "rationale"}
    (the rationale computed, not generated), skipping questions in `exclude`."""
    rng = random.Random(f"{seed}-story")
    exclude = exclude or set()
    rows, seen, tries = [], set(), 0
    while len(rows) < n and tries < 50 * n:
        tries += 1
        question, label, rationale = word_problem(rng, steps)
        if question in seen or question in exclude:
            continue
        seen.add(question)
        rows.append({"id": f"story-{len(rows)}", "input": question, "label": label, "rationale": rationale})
    return rows


FAMILIES: dict[str, Callable[[random.Random], tuple[str, str]]] = {
    "add": add, "reverse": reverse, "sort": sort, "count": count, "upper": upper, "repeat": repeat,
    "times": times, "convert": convert, "story": story,
}


def conversation(instruction: str, answer: str, family: str, index: int) -> dict:
    return {"id": f"{family}-{index}", "messages": [{"role": "user", "content": instruction},
                                                    {"role": "assistant", "content": answer}],
            "meta": {"family": family, "source": "openseason.data.tasks"}}


def generate(families: Iterable[str], n_per_family: int, seed: int = 0,
             exclude: Optional[set[str]] = None) -> list[dict]:
    """`n_per_family` distinct conversations per family (instructions in `exclude` are skipped),
    interleaved in a seeded order."""
    out: list[dict] = []
    exclude = exclude or set()
    for family in families:
        if family not in FAMILIES:
            raise KeyError(f"unknown task family {family!r}; known: {', '.join(FAMILIES)}")
        rng = random.Random(f"{seed}-{family}")
        seen: set[str] = set()
        tries = 0
        while len(seen) < n_per_family and tries < 50 * n_per_family:
            tries += 1
            instruction, answer = FAMILIES[family](rng)
            if instruction in seen or instruction in exclude:
                continue
            seen.add(instruction)
            out.append(conversation(instruction, answer, family, len(seen) - 1))
    random.Random(seed).shuffle(out)
    return out


def split_heldout(family: str, n_train: int, n_eval: int, seed: int = 0) -> tuple[list[dict], list[dict]]:
    """Disjoint train and evaluation items of one family (no instruction appears in both)."""
    evaluation = generate([family], n_eval, seed=seed + 1000)
    train = generate([family], n_train, seed=seed, exclude={r["messages"][0]["content"] for r in evaluation})
    return train, evaluation
