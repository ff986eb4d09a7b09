"""`openseason chat CKPT`: talk to a checkpoint in the terminal, answers streamed as they are generated.

    you> hello
    assistant> Hi! How can I help?
    you> /system You answer in one sentence.
    you> /reset

Commands: /reset forgets the conversation (keeps the system prompt), /system TEXT sets the system
prompt (/system alone shows it, `/system -` clears it), /image PATH attaches an image to the next
message (multimodal checkpoints: MiniGPT-4, LLaMA-Adapter V2 multimodal), /history shows the turns so
far, /help, /exit (or end of input). Ctrl-C during an answer stops that answer and keeps what was written.

The conversation is tokenized by prompts.encode_chat in the checkpoint's chat format and decoded by the same engine as
`openseason serve`. When it outgrows the context window the oldest turns are dropped (and the user is
told). `ChatSession` is the programmatic side (tests drive it, or the loop, with plain strings).
"""
from __future__ import annotations

import queue
import sys
from pathlib import Path
from typing import Iterator, Optional, TextIO

from ..errors import OpenseasonError
from ..prompts import chat_stops, encode_chat
from ..generation.engine import Engine, Event, Request, context_length
from ..generation.sampling import SamplingParams

HELP = ("commands: /reset (forget the conversation), /system TEXT (set the system prompt; '/system -' "
        "clears it), /image PATH (attach an image to your next message), /history, /help, /exit")


class ChatSession:
    """A conversation with history over an `Engine`; `send(text)` yields the answer piece by piece."""

    def __init__(self, engine: Engine, chat_format, *, system: Optional[str] = None, max_new_tokens: int = 256,
                 temperature: float = 0.7, top_p: float = 0.95, seed: Optional[int] = None):
        self.engine = engine
        self.chat_format = chat_format
        self.system = system
        self.max_new_tokens = max_new_tokens
        self.temperature = temperature
        self.top_p = top_p
        self.seed = seed
        self.turns: list[tuple[object, str]] = []   # (user content: text or parts with images, assistant)
        self.dropped = 0                          # turns forgotten to fit the context window
        self.last_finish: Optional[str] = None
        self.pending_image: Optional[str] = None  # /image PATH: goes with the next message

    def attach_image(self, path: str) -> None:
        """Attach the image at `path` to the next message (checked now: readable, and the model takes images)."""
        from ..generation.media import check_images
        from ..vision.images import load_image

        check_images(self.engine.model, [{"role": "user", "content": [{"type": "image", "path": path}]}])
        load_image(path)   # a DataError now, not at the next message
        self.pending_image = path

    def reset(self) -> None:
        self.turns = []

    def messages(self, user: Optional[str] = None) -> list[dict]:
        out = [{"role": "system", "content": self.system}] if self.system else []
        for u, a in self.turns:
            out += [{"role": "user", "content": u}, {"role": "assistant", "content": a}]
        if user is not None:
            out.append({"role": "user", "content": user})
        return out

    def _prompt_ids(self, user) -> tuple[list[int], list, int]:
        from ..generation.media import encode_chat_media
        from ..prompts import message_images

        context = context_length(self.engine.model)
        while True:
            messages = self.messages(user)
            if message_images(messages):
                ids, media = encode_chat_media(messages, self.engine.tokenizer, self.chat_format, self.engine.model)
            else:
                ids, media = encode_chat(messages, self.engine.tokenizer, self.chat_format), []
            room = context - len(ids)
            if room >= min(self.max_new_tokens, 16) or not self.turns:
                break
            self.turns.pop(0)   # forget the oldest exchange to make room
            self.dropped += 1
        if room < 1:
            raise OpenseasonError(f"this message is {len(ids)} tokens with the system prompt; the model's "
                                  f"context window is {context}", hint="send a shorter message")
        return ids, media, min(self.max_new_tokens, room)

    def send(self, user: str) -> Iterator[str]:
        """Generate the assistant's answer to `user` (with the image attached by /image, if any),
        yielding text as it comes; history is updated at the end (also when the caller stops early,
        with the text produced so far)."""
        if self.pending_image is not None:
            user = [{"type": "image", "path": self.pending_image}, {"type": "text", "text": user}]
        ids, media, budget = self._prompt_ids(user)
        self.pending_image = None
        events: queue.Queue[Event] = queue.Queue()
        strings, token_ids = chat_stops(self.chat_format, self.engine.tokenizer)
        params = SamplingParams(max_new_tokens=budget, temperature=self.temperature, top_p=self.top_p,
                                stop=strings, stop_token_ids=token_ids, seed=self.seed)
        request = self.engine.submit(Request(ids, params, events.put, media=media))
        pieces: list[str] = []
        self.last_finish = None
        try:
            while True:
                event = events.get()
                if event.kind == "text":
                    pieces.append(event.text)
                    yield event.text
                elif event.kind == "finish":
                    self.last_finish = event.finish_reason
                    break
                else:
                    raise OpenseasonError(event.text)
        finally:
            if self.last_finish is None:
                request.cancel()
                self.last_finish = "cancelled"
            self.turns.append((user, "".join(pieces).strip()))


def run_repl(session: ChatSession, stdin: TextIO = sys.stdin, stdout: TextIO = sys.stdout,
             prompt: str = "you> ") -> int:
    """Read lines from `stdin` until /exit or end of input; stream answers to `stdout`."""
    interactive = hasattr(stdin, "isatty") and stdin.isatty()

    def say(text: str = "", end: str = "\n") -> None:
        stdout.write(text + end)
        stdout.flush()

    say(f"chatting with {session.engine.name} ({HELP})")
    while True:
        if interactive:
            try:
                line = input(prompt)
            except EOFError:
                say()
                return 0
        else:
            say(prompt, end="")
            line = stdin.readline()
            if not line:
                say()
                return 0
            say(line.rstrip("\n"))  # echo piped input so the transcript reads like a session
        line = line.rstrip("\n")
        if not line.strip():
            continue
        command, _, rest = line.strip().partition(" ")
        if command in ("/exit", "/quit"):
            return 0
        if command == "/help":
            say(HELP)
            continue
        if command == "/reset":
            session.reset()
            say("(conversation reset)")
            continue
        if command == "/system":
            rest = rest.strip()
            if not rest:
                say(f"(system prompt: {session.system!r})")
            else:
                session.system = None if rest == "-" else rest
                say(f"(system prompt {'cleared' if session.system is None else 'set'})")
            continue
        if command == "/image":
            try:
                session.attach_image(rest.strip())
                say(f"(image {rest.strip()} goes with your next message)")
            except OpenseasonError as exc:
                say(f"(error: {exc})")
            continue
        if command == "/history":
            from ..prompts import message_text

            for u, a in session.turns:
                shown = u if isinstance(u, str) else "[image] " + message_text({"content": u})
                say(f"user: {shown}\nassistant: {a}")
            continue
        if command.startswith("/") and len(command) > 1 and " " not in command[1:]:
            say(f"(unknown command {command}; {HELP})")
            continue
        dropped = session.dropped
        say("assistant> ", end="")
        try:
            for piece in session.send(line):
                say(piece, end="")
        except KeyboardInterrupt:
            say(" [stopped]", end="")
        except OpenseasonError as exc:
            say(f"(error: {exc})")
            continue
        say()
        if session.dropped > dropped:
            say(f"(forgot the {session.dropped - dropped} oldest turn(s) to stay inside the context window)")


def chat(checkpoint: str | Path, *, system: Optional[str] = None, max_new_tokens: int = 256,
         temperature: float = 0.7, top_p: float = 0.95, seed: Optional[int] = None,
         prompt_style: Optional[str] = None, device: Optional[str] = None, dtype: Optional[str] = None,
         stdin: TextIO = sys.stdin, stdout: TextIO = sys.stdout, max_context: Optional[int] = None,
         quantize: Optional[str] = None, compile: bool = False) -> int:
    """Load `checkpoint` and chat with it in the terminal (see the module docstring)."""
    from .server import load_for_serving

    if not temperature >= 0:
        raise OpenseasonError(f"--temperature must be >= 0, got {temperature}")
    if not 0 < top_p <= 1:
        raise OpenseasonError(f"--top-p must be in (0, 1], got {top_p}")
    engine, settings = load_for_serving(checkpoint, prompt_style=prompt_style, device=device, dtype=dtype,
                                        max_batch=1, max_queue=1, max_context=max_context,
                                        quantize=quantize, compile=compile,
                                        log=lambda msg: print(msg, file=sys.stderr))
    try:
        session = ChatSession(engine, settings.chat_format, system=system, max_new_tokens=max_new_tokens,
                              temperature=temperature, top_p=top_p, seed=seed)
        return run_repl(session, stdin, stdout)
    finally:
        engine.close()
