"""The LLM interface the rails need: a callable from a prompt to text.

    llm(prompt: str, *, max_tokens: int, temperature: float, stop: list[str] | None) -> str

Anything with that shape works (a lambda around an HTTP client, say). `OpenseasonLLM` adapts
`openseason.LLM` (generate.py); `ScriptedLLM` is for tests: it answers from a script and raises on
any call the script did not foresee, so a test proves exactly which LLM calls a rail makes.
"""
from __future__ import annotations

from typing import Callable, Optional, Protocol, Sequence, Union

from ..errors import OpenseasonError


class LLMCallable(Protocol):
    def __call__(self, prompt: str, *, max_tokens: int = 256, temperature: float = 0.0,
                 stop: Optional[list[str]] = None) -> str: ...


class OpenseasonLLM:
    """Adapter from `openseason.LLM` (`generate(prompt, max_new_tokens=, temperature=, stop=)`)."""

    def __init__(self, llm):
        self.llm = llm

    @classmethod
    def load(cls, path, **kwargs) -> "OpenseasonLLM":
        from ..generation.llm import LLM

        return cls(LLM.load(path, **kwargs))

    def __call__(self, prompt: str, *, max_tokens: int = 256, temperature: float = 0.0,
                 stop: Optional[list[str]] = None) -> str:
        # a small local model's context may not hold prompt + max_tokens: write what still fits
        config, tokenizer = getattr(self.llm, "config", None), getattr(self.llm, "tokenizer", None)
        if config is not None and tokenizer is not None and getattr(config, "block_size", None):
            room = config.block_size - len(tokenizer.encode(prompt))
            if room < 1:
                raise OpenseasonError(f"the rails prompt ({config.block_size - room} tokens) does not fit the "
                                      f"model's context of {config.block_size} tokens",
                                      hint="shorten the config's instructions and sample_conversation, or lower "
                                           "rails.input.window")
            max_tokens = min(max_tokens, room)
        return self.llm.generate(prompt, max_new_tokens=max_tokens, temperature=temperature, stop=stop)


class UnexpectedLLMCall(AssertionError):
    """Raised by ScriptedLLM when a call was not in its script."""


Rule = Union[str, tuple[Union[str, Callable[[str], bool]], str]]


class ScriptedLLM:
    """A fake LLM for tests.

    `ScriptedLLM()` fails on any call. `ScriptedLLM(["yes", "no"])` answers in order and fails when
    the list runs out. `ScriptedLLM([("Should the user message be blocked", "No"), ...])` answers the
    first rule whose substring (or predicate) matches the prompt; rules are reusable unless
    `consume=True`. Every prompt is kept in `calls`.
    """

    def __init__(self, script: Sequence[Rule] = (), *, consume: bool = False):
        self.script = list(script)
        self.consume = consume
        self.calls: list[dict] = []

    def __call__(self, prompt: str, *, max_tokens: int = 256, temperature: float = 0.0,
                 stop: Optional[list[str]] = None) -> str:
        self.calls.append({"prompt": prompt, "max_tokens": max_tokens, "temperature": temperature, "stop": stop})
        for i, rule in enumerate(self.script):
            if isinstance(rule, str):  # plain answers are consumed in order
                self.script.pop(i)
                return rule
            match, answer = rule
            if (match(prompt) if callable(match) else match in prompt):
                if self.consume:
                    self.script.pop(i)
                return answer
        raise UnexpectedLLMCall(f"unexpected LLM call #{len(self.calls)}; prompt was:\n{prompt}")


def require_llm(llm, what: str):
    if llm is None:
        raise OpenseasonError(f"{what} needs an LLM, and none was given",
                              hint="pass llm=... to Rails (or --model to the CLI), or remove that rail/step")
    return llm
