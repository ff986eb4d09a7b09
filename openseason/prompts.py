"""Prompt styles: how a conversation becomes the exact text a model is trained on and prompted with.

A style is stored with prepared data and with checkpoints, so training and inference cannot
disagree. Every style offers three views of one conversation:

- `render(messages, add_generation_prompt=True)`: the whole text (for inference, the prompt ending
  where the assistant should start writing);
- `segments(messages)`: the same text cut into pieces, each flagged True when the model is trained to
  produce it. A trained piece is one assistant reply INCLUDING its end-of-turn marker, so the model
  learns to stop. `"".join(text for text, _ in segments(m)) == render(m, add_generation_prompt=False)`;
- `stop_strings`: strings that end an assistant turn at inference (a safety net next to EOS).

End of turn. Styles with a literal marker (oasst `<|endoftext|>`, chatml `<|im_end|>`, llama-2-chat
` </s>`, dolly `\\n\\n### End`) put it in the text. Styles with `end_with_eos = True` (alpaca, vicuna,
plain) end each reply with the *tokenizer's* EOS token instead, whatever its spelling: `render` and
`segments` insert `eos_text` there (default "", so the text carries no marker) and
`openseason.data.sft.tokenize_conversation` appends `tokenizer.eos_id` after every trained piece. For
multi-turn inference with such a style pass `eos_text=tokenizer.id_to_token(tokenizer.eos_id)` or,
better, use `openseason.data.sft.tokenize_prompt`, which tokenizes exactly like training.

Messages are `[{"role": "system" | "user" | "assistant", "content": str}]`: an optional system
message first, then user and assistant alternating, starting with user. A user message may carry an
optional `"input"` (Alpaca's input / Dolly's context): alpaca and dolly render it in their own
"Input" section, every other style appends it to the content after a blank line.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Optional

from .errors import DataError, OpenseasonError

Segments = list[tuple[str, bool]]

ROLES = ("system", "user", "assistant")

# Stanford Alpaca's two templates (tatsu-lab/stanford_alpaca, train.py PROMPT_DICT), to the character.
ALPACA_INTRO = ("Below is an instruction that describes a task. "
                "Write a response that appropriately completes the request.")
ALPACA_INTRO_INPUT = ("Below is an instruction that describes a task, paired with an input that provides "
                      "further context. Write a response that appropriately completes the request.")
# Dolly v2 (databrickslabs/dolly, training/consts.py) uses the no-input blurb for both cases.
DOLLY_INTRO = ALPACA_INTRO
VICUNA_SYSTEM = ("A chat between a curious user and an artificial intelligence assistant. "
                 "The assistant gives helpful, detailed, and polite answers to the user's questions.")


def validate_messages(messages, *, where: Optional[str] = None) -> tuple[Optional[str], list]:
    """Check the message list; return (system text or None, [(user_msg, assistant_text or None), ...])."""
    if not isinstance(messages, (list, tuple)) or not messages:
        raise DataError("a conversation needs a non-empty list of messages", where=where)
    system = None
    start = 0
    for i, msg in enumerate(messages):
        if not isinstance(msg, dict) or msg.get("role") not in ROLES or not isinstance(msg.get("content"), str):
            raise DataError(f"message {i} must be {{'role': system|user|assistant, 'content': str}}, got {msg!r:.120}",
                            where=where)
    if messages[0]["role"] == "system":
        system = messages[0]["content"]
        start = 1
    turns: list = []
    expected = "user"
    for i in range(start, len(messages)):
        msg = messages[i]
        if msg["role"] != expected:
            raise DataError(f"message {i} has role {msg['role']!r} where {expected!r} was expected "
                            "(a system message may only come first; user and assistant must alternate, "
                            "starting with user)", where=where)
        if expected == "user":
            turns.append([msg, None])
            expected = "assistant"
        else:
            turns[-1][1] = msg["content"]
            expected = "user"
    if not turns:
        raise DataError("a conversation needs at least one user message", where=where)
    return system, [tuple(t) for t in turns]


def _user_text(msg: dict) -> str:
    extra = msg.get("input")
    return f"{msg['content']}\n\n{extra}" if extra else msg["content"]


def _merge(pieces: Segments) -> Segments:
    """Join neighbours with the same flag and drop empty pieces, so segment boundaries are minimal."""
    out: Segments = []
    for text, trained in pieces:
        if not text:
            continue
        if out and out[-1][1] == trained:
            out[-1] = (out[-1][0] + text, trained)
        else:
            out.append((text, trained))
    return out


# -- builders: (system, turns, end_marker, add_generation_prompt) -> pieces ------------------------
def _alpaca(system, turns, end, gen):
    first_input = turns[0][0].get("input")
    intro = system if system is not None else (ALPACA_INTRO_INPUT if first_input else ALPACA_INTRO)
    out = [(intro + "\n\n", False)]
    for i, (user, reply) in enumerate(turns):
        if i:
            out.append(("\n\n", False))
        text = f"### Instruction:\n{user['content']}\n\n"
        if user.get("input"):
            text += f"### Input:\n{user['input']}\n\n"
        out.append((text.rstrip("\n") if reply is None and not gen else text, False))
        if reply is not None or gen:
            out.append(("### Response:", False))  # Stanford: the output follows the colon directly
        if reply is not None:
            out.append((reply + end, True))
    return out


def _dolly(system, turns, end, gen):
    intro = system if system is not None else DOLLY_INTRO
    out = [(intro + "\n\n", False)]
    for i, (user, reply) in enumerate(turns):
        if i:
            out.append(("\n\n", False))
        text = f"### Instruction:\n{user['content']}\n\n"
        if user.get("input"):
            text += f"Input:\n{user['input']}\n\n"
        out.append((text.rstrip("\n") if reply is None and not gen else text, False))
        if reply is not None or gen:
            out.append(("### Response:\n", False))
        if reply is not None:
            out.append((reply + end, True))
    return out


def _oasst(system, turns, end, gen):
    out = [(f"<|system|>{system}<|endoftext|>", False)] if system is not None else []
    for user, reply in turns:
        out.append((f"<|prompter|>{_user_text(user)}<|endoftext|>", False))
        if reply is not None or gen:
            out.append(("<|assistant|>", False))
        if reply is not None:
            out.append((reply + end, True))
    return out


def _chatml(system, turns, end, gen):
    out = [(f"<|im_start|>system\n{system}<|im_end|>\n", False)] if system is not None else []
    for user, reply in turns:
        out.append((f"<|im_start|>user\n{_user_text(user)}<|im_end|>\n", False))
        if reply is not None or gen:
            out.append(("<|im_start|>assistant\n", False))
        if reply is not None:
            out.append((reply + end, True))
            out.append(("\n", False))
    return out


def _llama2(system, turns, end, gen):
    # The first <s> is the tokenizer's BOS (LLaMA adds it); later turns spell "<s>" after "</s>".
    out = []
    for i, (user, reply) in enumerate(turns):
        text = _user_text(user).strip()
        if i == 0 and system is not None:
            text = f"<<SYS>>\n{system.strip()}\n<</SYS>>\n\n{text}"
        out.append((("<s>" if i else "") + f"[INST] {text} [/INST]", False))
        if reply is not None:
            out.append((f" {reply.strip()}{end}", True))
    return out


def _vicuna(system, turns, end, gen):
    out = [((system if system is not None else VICUNA_SYSTEM) + " ", False)]
    for user, reply in turns:
        out.append((f"USER: {_user_text(user)} ", False))
        if reply is not None or gen:
            out.append(("ASSISTANT:", False))
        if reply is not None:
            out.append((f" {reply}{end}", True))
    return out


def _plain(system, turns, end, gen):
    out = [(system + "\n\n", False)] if system is not None else []
    for i, (user, reply) in enumerate(turns):
        if i:
            out.append(("\n\n", False))
        out.append((_user_text(user) + ("\n\n" if reply is not None or gen else ""), False))
        if reply is not None:
            out.append((reply + end, True))
    return out


@dataclass(frozen=True)
class PromptStyle:
    """One prompt format. See the module docstring for the contract of render/segments/stop_strings."""

    name: str
    description: str
    builder: Callable = field(repr=False)
    stop_strings: tuple[str, ...] = ()
    end_marker: str = ""          # literal text closing each assistant reply ("" when end_with_eos)
    end_with_eos: bool = False    # True: the reply ends with the tokenizer's EOS token, not a literal

    def segments(self, messages, add_generation_prompt: bool = False, eos_text: str = "",
                 *, where: Optional[str] = None) -> Segments:
        """[(text, trained)] in order; trained pieces are assistant replies with their end marker."""
        system, turns = validate_messages(messages, where=where)
        end = eos_text if self.end_with_eos else self.end_marker
        gen = add_generation_prompt and turns[-1][1] is None
        return _merge(self.builder(system, turns, end, gen))

    def render(self, messages, add_generation_prompt: bool = True, eos_text: str = "") -> str:
        """The conversation as text; with add_generation_prompt and a final user message, ends where
        the assistant's reply starts."""
        return "".join(text for text, _ in self.segments(messages, add_generation_prompt, eos_text))

    def to_dict(self) -> dict:
        """What is saved next to prepared data and checkpoints."""
        return {"name": self.name, "stop_strings": list(self.stop_strings), "end_marker": self.end_marker,
                "end_with_eos": self.end_with_eos}


STYLES: dict[str, PromptStyle] = {s.name: s for s in [
    PromptStyle("alpaca", "Stanford Alpaca: '### Instruction:' / '### Input:' / '### Response:', reply + EOS",
                _alpaca, stop_strings=("### Instruction:", "### Response:"), end_with_eos=True),
    PromptStyle("dolly", "Dolly v2: '### Instruction:' / 'Input:' / '### Response:', reply ends '### End'",
                _dolly, stop_strings=("### End",), end_marker="\n\n### End"),
    PromptStyle("oasst", "OpenAssistant: <|prompter|>...<|endoftext|><|assistant|>...<|endoftext|>",
                _oasst, stop_strings=("<|endoftext|>", "<|prompter|>"), end_marker="<|endoftext|>"),
    PromptStyle("chatml", "ChatML: <|im_start|>role\\n...<|im_end|>",
                _chatml, stop_strings=("<|im_end|>", "<|im_start|>"), end_marker="<|im_end|>"),
    PromptStyle("llama-2-chat", "Llama 2 chat: [INST] <<SYS>>...<</SYS>> ... [/INST] reply </s><s>[INST] ...",
                _llama2, stop_strings=("</s>", "[INST]"), end_marker=" </s>"),
    PromptStyle("vicuna", "Vicuna v1.1: system USER: ... ASSISTANT: reply + EOS",
                _vicuna, stop_strings=("</s>", "USER:"), end_with_eos=True),
    PromptStyle("plain", "no template: turns separated by blank lines, reply + EOS",
                _plain, stop_strings=(), end_with_eos=True),
]}


def get_style(name) -> PromptStyle:
    """The style called `name` (a PromptStyle passes through)."""
    if isinstance(name, PromptStyle):
        return name
    if isinstance(name, dict):  # a saved to_dict()
        name = name.get("name")
    style = STYLES.get(name)
    if style is None:
        raise OpenseasonError(f"unknown prompt style {name!r}",
                              hint=f"choose one of: {', '.join(STYLES)}")
    return style
