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
`chat_pieces` appends `tokenizer.eos_id` after every trained piece.

Token ids. `encode_chat(messages, tokenizer, fmt)` is THE way messages become prompt ids for inference
(LLM.chat, the server, the terminal chat, judge, guard, synth); training
(`openseason.data.sft.tokenize_conversation`) builds its ids from the same `chat_pieces`, so the prompt
ids of a conversation are exactly the ids the model saw up to the same point in training. A prompt
style is tokenized segment by segment (BOS per `tokenizer.add_bos`, the EOS id after replies of
`end_with_eos` styles); a Hugging Face chat template (`openseason.chat_template.ChatTemplate`) is
rendered whole and encoded without adding BOS, as transformers' `apply_chat_template` does.
`chat_stops(fmt, tokenizer)` gives the stop strings and stop token ids that go with a format.

Which format a checkpoint uses: `resolve_chat_format(checkpoint_dir, requested)`, one rule for every
caller: an explicitly requested style wins; else the style stored in the checkpoint's run_card.json
("prompt_style"); else the Hugging Face chat template stored with its tokenizer; else "plain".

Messages are `[{"role": "system" | "user" | "assistant", "content": str}]`: an optional system
message first, then user and assistant alternating, starting with user. A user message may carry an
optional `"input"` (Alpaca's input / Dolly's context): alpaca and dolly render it in their own
"Input" section, every other style appends it to the content after a blank line.

Images. A user message's content may instead be a list of parts, the shape of OpenAI's content parts:
`{"type": "text", "text": ...}` and `{"type": "image", "path": ...}` (or `"image"`: a PIL image or file
bytes). Parts are joined with single spaces; an image becomes the style's `image_text` around an
image slot (MiniGPT-4: `<Img><ImageHere></Img>`). `chat_pieces(..., image_tokens=N)` turns each slot
into a piece of kind "image" holding N placeholder ids, where a multimodal model writes the image's
visual tokens (N = 0 for models that take images through other means: the slot takes no position).
`message_images(messages)` lists the image parts in slot order; `message_text` gives the text alone
(what guardrails read).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional, Union

from .chat_template import NAME as CHAT_TEMPLATE_NAME, ChatTemplate, ChatTemplateError  # noqa: F401 (re-exported)
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


# Stands for one image in a rendered text until chat_pieces cuts the text there (a private-use character).
IMAGE_SLOT = "\ue000"
IMAGE_SLOT_TEXT = "<ImageHere>"   # how render() shows a slot (MiniGPT-4's spelling)
PART_TYPES = ("text", "image")


def _check_parts(i: int, msg: dict, where: Optional[str]) -> None:
    parts = msg["content"]
    if msg["role"] != "user":
        raise DataError(f"message {i}: only user messages may have content parts (images); "
                        f"a {msg['role']} message's content is a string", where=where)
    for j, part in enumerate(parts):
        kind = part.get("type") if isinstance(part, dict) else None
        if kind not in PART_TYPES:
            raise DataError(f"message {i} part {j} must be {{'type': 'text', 'text': str}} or "
                            f"{{'type': 'image', 'path': str}}, got {part!r:.120}", where=where)
        if kind == "text" and not isinstance(part.get("text"), str):
            raise DataError(f"message {i} part {j}: a text part needs a 'text' string", where=where)
        if kind == "image" and part.get("path") is None and part.get("image") is None:
            raise DataError(f"message {i} part {j}: an image part needs a 'path' (or an 'image')", where=where)
        if kind == "text" and IMAGE_SLOT in part["text"]:
            raise DataError(f"message {i} part {j}: the text holds the reserved character U+E000", where=where)


def message_images(messages) -> list[dict]:
    """The image parts of `messages`, in the order their slots appear."""
    return [part for m in messages if isinstance(m.get("content"), list)
            for part in m["content"] if isinstance(part, dict) and part.get("type") == "image"]


def message_text(msg: dict) -> str:
    """A message's text without its images (text parts joined with single spaces)."""
    content = msg.get("content")
    if isinstance(content, list):
        return " ".join(p["text"] for p in content if isinstance(p, dict) and p.get("type") == "text" and p["text"])
    return content


def _flatten(msg: dict, image_text: tuple[str, str]) -> dict:
    """The message with list content turned into text, each image as its slot inside `image_text`."""
    if not isinstance(msg.get("content"), list):
        return msg
    pieces = [p["text"] if p["type"] == "text" else image_text[0] + IMAGE_SLOT + image_text[1]
              for p in msg["content"]]
    return {**msg, "content": " ".join(p for p in pieces if p)}


def validate_messages(messages, *, where: Optional[str] = None) -> tuple[Optional[str], list]:
    """Check the message list; return (system text or None, [(user_msg, assistant_text or None), ...])."""
    if not isinstance(messages, (list, tuple)) or not messages:
        raise DataError("a conversation needs a non-empty list of messages", where=where)
    system = None
    start = 0
    for i, msg in enumerate(messages):
        if (isinstance(msg, dict) and msg.get("role") in ROLES and isinstance(msg.get("content"), list)):
            _check_parts(i, msg, where)
            continue
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


def _minigpt4(system, turns, end, gen):
    # MiniGPT-4's prompt template '###Human: {} ###Assistant: ' with '###' closing each answer
    out = [(system, False)] if system is not None else []
    for user, reply in turns:
        out.append((f"###Human: {_user_text(user)} ", False))
        if reply is not None or gen:
            out.append(("###Assistant: ", False))
        if reply is not None:
            out.append((reply + end, True))
    return out


def _flamingo(system, turns, end, gen):
    # OpenFlamingo's interleaved text: "<image>Output: circle<|endofchunk|>..." -- no role markers; each
    # reply closes its chunk with <|endofchunk|> (the image slots are the <image> tokens)
    out = [(system + " ", False)] if system is not None else []
    for user, reply in turns:
        out.append((_user_text(user), False))
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
    image_text: tuple[str, str] = ("", "")   # text around an image slot in a user message

    def segments(self, messages, add_generation_prompt: bool = False, eos_text: str = "",
                 *, where: Optional[str] = None) -> Segments:
        """[(text, trained)] in order; trained pieces are assistant replies with their end marker. Images
        of content parts are IMAGE_SLOT characters in the text (see the module docstring)."""
        validate_messages(messages, where=where)
        system, turns = validate_messages([_flatten(m, self.image_text) for m in messages], where=where)
        end = eos_text if self.end_with_eos else self.end_marker
        gen = add_generation_prompt and turns[-1][1] is None
        return _merge(self.builder(system, turns, end, gen))

    def render(self, messages, add_generation_prompt: bool = True, eos_text: str = "") -> str:
        """The conversation as text; with add_generation_prompt and a final user message, ends where
        the assistant's reply starts."""
        text = "".join(text for text, _ in self.segments(messages, add_generation_prompt, eos_text))
        return text.replace(IMAGE_SLOT, IMAGE_SLOT_TEXT)

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
    PromptStyle("minigpt4", "MiniGPT-4: ###Human: <Img><ImageHere></Img> question ###Assistant: answer###",
                _minigpt4, stop_strings=("###",), end_marker="###", image_text=("<Img>", "</Img>")),
    PromptStyle("flamingo", "OpenFlamingo: <image> question answer<|endofchunk|> (interleaved, no role markers)",
                _flamingo, stop_strings=("<|endofchunk|>",), end_marker="<|endofchunk|>"),
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


# -- chat formats: prompt styles and Hugging Face chat templates -----------------------------------
# A chat format is a PromptStyle or a ChatTemplate; both have .name, .stop_strings and .render().
ChatFormat = Union[PromptStyle, ChatTemplate]
DEFAULT_CHAT_STYLE = "plain"  # the last step of resolve_chat_format's rule


def as_chat_format(fmt) -> ChatFormat:
    """A PromptStyle or ChatTemplate from a style name, a saved style dict, a PromptStyle or a ChatTemplate."""
    if isinstance(fmt, ChatTemplate):
        return fmt
    if fmt == CHAT_TEMPLATE_NAME or (isinstance(fmt, dict) and fmt.get("name") == CHAT_TEMPLATE_NAME):
        raise OpenseasonError("the name 'chat-template' means a checkpoint's own Hugging Face chat template",
                              hint="load it with resolve_chat_format(checkpoint_dir, 'chat-template') or "
                                   "ChatTemplate.from_dir(checkpoint_dir)")
    return get_style(fmt)


def chat_pieces(messages, tokenizer, style, add_generation_prompt: bool = False,
                *, where: Optional[str] = None, image_tokens: int = 0,
                image_token_id: int = 0) -> list[tuple[list[int], str]]:
    """A conversation as token-id pieces, each tagged "bos", "prompt", "reply" (an assistant reply with
    its end-of-turn marker or EOS id: what training puts loss on) or "image" (one image's slot:
    `image_tokens` copies of `image_token_id`, which a multimodal model overwrites with visual tokens;
    an empty piece when image_tokens is 0). The one tokenization of a prompt style: `encode_chat` joins
    the pieces, `data.sft.tokenize_conversation` adds labels to them.

    BOS comes first when `tokenizer.add_bos`; each segment of `style.segments` is encoded on its own
    (so the prompt/reply boundary is exact), and cut at image slots; replies of `end_with_eos` styles
    get `tokenizer.eos_id`.
    """
    style = as_chat_format(style)
    if isinstance(style, ChatTemplate):
        raise OpenseasonError("a Hugging Face chat template gives no prompt/reply boundaries to train on",
                              where=style.origin,
                              hint="train with a prompt style (--prompt-style chatml, alpaca, ...); chat templates "
                                   "are used for inference")
    pieces: list[tuple[list[int], str]] = []
    if tokenizer.add_bos and tokenizer.bos_id is not None:
        pieces.append(([tokenizer.bos_id], "bos"))
    for text, trained in style.segments(messages, add_generation_prompt, where=where):
        if IMAGE_SLOT in text and not trained:
            before, *rest = text.split(IMAGE_SLOT)
            if before:
                pieces.append((tokenizer.encode(before, bos=False), "prompt"))
            for after in rest:
                pieces.append(([image_token_id] * image_tokens, "image"))
                if after:
                    pieces.append((tokenizer.encode(after, bos=False), "prompt"))
            continue
        ids = tokenizer.encode(text, bos=False)
        if trained and style.end_with_eos:
            if tokenizer.eos_id is None:
                raise OpenseasonError(f"prompt style {style.name!r} ends replies with EOS but the tokenizer has none",
                                      hint="set eos_token in tokenizer_config.json or choose a style with a "
                                           "literal marker")
            ids = ids + [tokenizer.eos_id]
        pieces.append((ids, "reply" if trained else "prompt"))
    return pieces


def encode_chat(messages, tokenizer, style, *, add_generation_prompt: bool = True) -> list[int]:
    """Prompt token ids for `messages` in a chat format: THE way messages become ids for inference.

    style   a PromptStyle, a style name ("chatml", ...), a saved style dict, or a ChatTemplate (see
            `resolve_chat_format` to pick one for a checkpoint)

    A prompt style gives exactly the ids training gave the same conversation up to the point where the
    assistant starts writing (see `chat_pieces`). A chat template is rendered and encoded without adding
    BOS, like transformers' `apply_chat_template(tokenize=True)`. Bad messages raise DataError, a
    template that refuses them ChatTemplateError (both OpenseasonError).
    """
    fmt = as_chat_format(style)
    if isinstance(fmt, ChatTemplate):
        return fmt.encode(messages, tokenizer, add_generation_prompt)
    return [t for ids, _ in chat_pieces(messages, tokenizer, fmt, add_generation_prompt) for t in ids]


def chat_stops(style, tokenizer=None) -> tuple[tuple[str, ...], tuple[int, ...]]:
    """(stop strings, stop token ids) for generating a reply in a chat format.

    The strings are the format's own (`stop_strings`). The ids are the tokenizer's EOS and every stop
    string that the tokenizer holds as one added (special) token, e.g. ChatML's <|im_end|>: stopping on
    the id ends the reply without decoding it first. Generation stops at EOS anyway unless told to
    ignore it; listing it keeps the ids complete for callers that pass ignore_eos.
    """
    fmt = as_chat_format(style)
    strings = tuple(fmt.stop_strings)
    ids: list[int] = []
    if tokenizer is not None:
        if tokenizer.eos_id is not None:
            ids.append(tokenizer.eos_id)
        added = _added_token_ids(tokenizer)
        for text in strings:
            token_id = tokenizer.token_to_id(text)
            if token_id is not None and token_id in added and token_id not in ids:
                ids.append(token_id)
    return strings, tuple(ids)


def _added_token_ids(tokenizer) -> set[int]:
    backend = getattr(tokenizer, "backend", None)
    try:
        return set(backend.get_added_tokens_decoder())
    except AttributeError:  # not a tokenizers.Tokenizer (a stand-in in tests, or an old tokenizers)
        return set()


def resolve_chat_format(checkpoint=None, requested=None) -> tuple[ChatFormat, str]:
    """The chat format to use for a checkpoint, and a short human reason for the choice.

    The rule, the same for every caller (LLM.chat, serve, chat, judge, guard, synth):
      1. an explicitly requested format wins: a style name, a PromptStyle, a ChatTemplate, or
         "chat-template" for the checkpoint's own Hugging Face template;
      2. else the style stored in the checkpoint's run_card.json ("prompt_style": a name or a dict with
         "name"), i.e. what the model was finetuned with;
      3. else the Hugging Face chat template stored with the checkpoint's tokenizer (chat_template.jinja,
         tokenizer_config.json "chat_template", chat_template.json), e.g. a converted chat model;
      4. else "plain" (a base model: turns separated by blank lines).
    `checkpoint` may be None (then only 1 and 4 apply).
    """
    path = None if checkpoint is None else Path(checkpoint)
    if requested is not None and requested != CHAT_TEMPLATE_NAME:
        fmt = as_chat_format(requested)
        return fmt, f"prompt style {fmt.name!r} was requested"
    if requested == CHAT_TEMPLATE_NAME:
        template = ChatTemplate.from_dir(path) if path is not None else None
        if template is None:
            raise OpenseasonError("the checkpoint's chat template was requested, but it has none",
                                  where=str(path) if path is not None else None,
                                  hint="look for chat_template.jinja or a 'chat_template' in tokenizer_config.json; "
                                       f"or choose a prompt style: {', '.join(STYLES)}")
        return template, f"the chat template from {template.origin} was requested"
    if path is not None:
        from .checkpoint import read_run_card

        stored = read_run_card(path).get("prompt_style")
        if isinstance(stored, dict):
            stored = stored.get("name")
        if stored:
            try:
                fmt = get_style(stored)
            except OpenseasonError as exc:
                raise OpenseasonError(f"run_card.json names an unknown prompt style {stored!r}",
                                      where=str(path / "run_card.json"), hint=exc.hint) from None
            return fmt, f"prompt style {fmt.name!r} stored in run_card.json"
        template = ChatTemplate.from_dir(path)
        if template is not None:
            return template, f"the chat template stored with the tokenizer ({Path(template.origin).name})"
    reason = "no prompt style was requested"
    if path is not None:
        reason = f"{path} stores no prompt style in run_card.json and no chat template"
    return STYLES[DEFAULT_CHAT_STYLE], f"{reason}: using {DEFAULT_CHAT_STYLE!r}"
