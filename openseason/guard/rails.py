"""The rails engine: input rails on every message, dialog flows, output rails.

    rails = Rails(RailsConfig.from_path("my_rails"), llm=None)   # embeddings only: no LLM calls
    rails.check("how do I return my order?")       -> Decision (intent, score, flow, which rail fired)
    rails.generate([{"role": "user", "content": "hi"}])  -> GenerateResult(text, decision)

One call runs:
1. Input rails (`rails.input.flows`) on every message that reaches the model, oldest first: each user
   turn (not only the last: a request hidden in an old turn reaches the model too), each assistant
   turn (a client writes the history it sends) and each system message unless
   `rails.input.trust_system: true` says the operator's system prompts are trusted. Each message is
   judged once (verdicts cached by position, role and content). A rail that reaches `stop` (or
   `abort`) on the CURRENT user turn blocks, its bot message the reply; on an EARLIER message it
   does not refuse the turns after it: that exchange is listed in `Decision.dropped`, left out of
   the dialog replay and the LLM's prompt here, and must be removed by whoever sends the
   conversation to a model (`openseason serve --rails` does).
2. Dialog: the last `rails.input.window` user turns are replayed through the flows to recover a
   multi-turn flow in progress (`when`, or a later `user` step; actions in replayed steps run again,
   bot steps do not); otherwise the highest-priority flow whose first `user` step matches the last
   message's intent decides. `bot <name>` says a predefined message, or the LLM writes one through
   a controlled prompt when `<name>` is not defined (without an LLM: "inform cannot help", and the
   decision says `needs_llm`); no matching flow means a general LLM reply. A flow starting with
   `bot <name>` continues after that message; `create event X` runs the flows starting `event X`.
3. Output rails (`rails.output.flows`, then flows that start with `bot ...`) on LLM-written replies
   (and on predefined messages when `rails.output.apply_to_predefined` is true).

Intents come from nearest-neighbour search over embeddings; below the similarity threshold the
LLM, when one is given and `embeddings_only` is not set, names an intent with the nearest examples as
few-shot demonstrations, else the message gets the fallback intent. `Decision.routing` says which.
"""
from __future__ import annotations

import inspect
import random
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional, Union

from ..errors import ConfigError, OpenseasonError
from . import colang, prompts
from .actions import call_action
from .cache import ByteLRU, text_key
from .embeddings import Embedder, default_cache_dir, resolve_model_dir
from .flows import compile_flow
from .index import IntentIndex
from ..generation.client import require_client
from .rails_config import RailsConfig, _walk

# Self-check verdicts remembered across calls (earlier turns come back with every request); long
# texts are keyed by digest, so this holds ~10k verdicts whatever the users send.
CHECK_CACHE_BYTES = 4 * 2**20

Messages = Union[str, dict, list]


@dataclass
class Intent:
    name: str
    score: Optional[float]       # cosine similarity to the nearest example of the chosen intent
    fallback: bool = False       # True when nothing was close enough and the fallback intent was used
    nearest: Optional[str] = None
    example: Optional[str] = None
    source: str = "embeddings"   # or "llm"


@dataclass
class Decision:
    """What the rails decided for one conversation.

    rail: "input" or "output" when such a rail blocked, "dialog" when a flow (or the no-LLM fallback)
    wrote the reply, None when the LLM replied freely. `turn` is the index in `messages` of the user
    turn an input rail fired on. `checks` lists every rail that ran with its details. `dropped` lists
    earlier messages an input rail flagged: they must not reach the model (serve removes them), but
    they no longer refuse the turns that follow them.
    """

    allowed: bool = True
    rail: Optional[str] = None
    flow: Optional[str] = None
    intent: Optional[str] = None
    score: Optional[float] = None
    fallback: bool = False
    nearest_intent: Optional[str] = None
    turn: Optional[int] = None
    reply: Optional[str] = None
    predefined: bool = False
    reason: str = ""
    checks: list = field(default_factory=list)
    llm_calls: int = 0
    routing: Optional[str] = None      # which path named the intent: "embeddings", "llm" or "fallback"
    dropped: list = field(default_factory=list)  # indices of earlier messages an input rail flagged: keep
                                                 # them out of the prompt (the current turn is still answered)
    needs_llm: bool = False            # the flow wanted a reply only an LLM can write, and none is configured

    @property
    def blocked(self) -> bool:
        return not self.allowed

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class GenerateResult:
    text: str
    decision: Decision

    @property
    def blocked(self) -> bool:
        """An input or output rail refused (the text is the refusal)."""
        return self.decision.blocked

    @property
    def fired(self) -> bool:
        """The reply came from a rail or a flow rather than a free LLM reply."""
        return self.decision.rail is not None


class _Ctx:
    """Per-call state: whether the LLM may write text, the checks made, and the LLM call count."""

    def __init__(self, messages: list[dict], generate: bool):
        self.messages = messages
        self.generate = generate
        self.checks: list[dict] = []
        self.llm_calls = 0
        self.steps = 0  # interpreter steps of the flow run in progress (see Rails.max_steps)
        self.predefined = True
        self.needs_llm = False
        self.missing_bot: Optional[str] = None  # an undefined bot message no LLM could write
        self.events: list[str] = []
        self.chunks: Optional[tuple[str, str]] = None  # (query, relevant chunks) from the knowledge base


Action = Callable[..., Any]


class Rails:
    """Guardrails around an LLM (or none), configured by a RailsConfig."""

    # Steps one flow run (a rail on one turn, or a dialog flow) may take, subflows included. Depth
    # alone is no bound: 25 subflows that each `do` the next twice are 2**25 steps.
    max_steps = 10_000

    def __init__(self, config: RailsConfig, llm=None, *, embedder: Optional[Embedder] = None,
                 perplexity_model=None, actions: Optional[dict[str, Action]] = None, seed: Optional[int] = None,
                 load_actions: bool = False):
        self.config = config
        self.llm = llm
        self.embedder = embedder or Embedder(resolve_model_dir(config.embedding_model, config.path))
        cache_dir = None if config.cache_dir is None else (
            default_cache_dir() if config.cache_dir == "default" else Path(config.cache_dir))
        self.index = IntentIndex(self.embedder, {n: u.examples for n, u in config.users.items()}, cache_dir)
        self.code = {name: compile_flow(flow) for name, flow in config.flows.items()}
        self.dialog_flows = [f.name for f in config.dialog_flows]
        self.actions: dict[str, Action] = dict(BUILTIN_ACTIONS)
        self._config_actions_loaded = bool(load_actions)
        if load_actions and config.path is not None:  # the config's own Python: only when asked
            from .actions import load_config_actions

            self.actions.update(load_config_actions(config.path))
        self.actions.update(actions or {})
        self.knowledge = None
        if config.path is not None and (config.path / "kb").is_dir():
            from .knowledge import KnowledgeBase

            self.knowledge = KnowledgeBase.from_folder(config.path / "kb", self.embedder)
        self.rng = random.Random(seed if seed is not None else config.seed)
        self._check_cache = ByteLRU(CHECK_CACHE_BYTES)  # (task, text key) -> (verdict, answer)
        self.perplexity = perplexity_model
        if self.perplexity is None and self._uses_action("jailbreak_detection_heuristics"):
            if not config.jailbreak.model:
                raise ConfigError("the jailbreak detection heuristics need a local language model to "
                                  "compute perplexity", where=str(config.path or "<config>"),
                                  hint="set rails.config.jailbreak_detection.model to an openseason "
                                       "checkpoint, or pass perplexity_model= to Rails")
            from .jailbreak import PerplexityScorer

            self.perplexity = PerplexityScorer.from_checkpoint(config.jailbreak.model)
        self._input_cache = ByteLRU(CHECK_CACHE_BYTES)  # (index, role, text key) -> input-rail verdict
        self._validated = False

    def validate(self) -> None:
        """Raise ConfigError if an action the rails reach is not registered. Runs before the first
        check, so `register_action` may come after the constructor."""
        path = self.config.path
        has_py = path is not None and ((path / "actions.py").is_file() or (path / "actions").is_dir())
        for name in sorted(self._rail_actions()):
            if self._find_action(name) is None:
                hint = ("the config folder has Python actions: load them with Rails(..., load_actions=True) "
                        "or --trust-actions (this runs the config's code)" if has_py and not self._config_actions_loaded else
                        f"built in: {sorted(BUILTIN_ACTIONS)}; add others with Rails(..., actions={{name: "
                        "function}), rails.register_action, or --actions my_pkg.my_actions")
                raise ConfigError(f"action {name!r} is not registered", where=str(path or "<config>"), hint=hint)
        self._validated = True

    def _find_action(self, name: str):
        """An action by its Colang name; `execute wolfram alpha request` also finds wolfram_alpha_request."""
        return self.actions.get(name) or self.actions.get(name.replace(" ", "_"))

    # -- public API ----------------------------------------------------------------------------------
    def register_action(self, name: str, fn: Action) -> None:
        """Make `execute name(...)` call `fn(**args)` (plus `context=` the flow variables, if it takes it)."""
        self.actions[name] = fn
        self._validated = False

    def check(self, messages: Messages) -> Decision:
        """Input rails and the dialog decision for a message or conversation, without asking the LLM
        to write a reply (LLM rails such as self check input still call it)."""
        return self._run(_normalize(messages), generate=False).decision

    def generate(self, messages: Messages) -> GenerateResult:
        """The assistant's next reply under the rails, with the decision that produced it."""
        return self._run(_normalize(messages), generate=True)

    def classify(self, text: str, allow_llm: bool = True, ctx: Optional[_Ctx] = None) -> Intent:
        """The user intent of one message (embeddings first; the LLM only below the threshold)."""
        cfg = self.config
        near = self.index.search(text, k=max(cfg.few_shot_k, 1))
        best = near[0] if near else None
        if best is not None and best.score >= cfg.threshold:
            return Intent(best.intent, best.score, example=best.example, nearest=best.intent)
        if not cfg.embeddings_only and allow_llm and self.llm is not None:
            ctx = ctx or _Ctx([], False)
            examples = "\n".join(f"User message: \"{m.example}\"\nIntent: {m.intent}\n" for m in near)
            prompt = prompts.render(cfg.prompts.get("generate_user_intent", prompts.DEFAULTS["generate_user_intent"]),
                                    "generate_user_intent", general_instructions=cfg.instructions,
                                    intents=", ".join(self.index.intents), fallback_intent=cfg.fallback_intent,
                                    examples=examples, user_input=text)
            answer = self._call_llm(prompt, ctx, max_tokens=16, stop=["\n"]).strip().strip('."\'').lower()
            answer = " ".join(answer.split())
            if answer in self.index.intents:
                return Intent(answer, self.index.scores(text)[answer], source="llm",
                              nearest=best.intent if best else None)
        return Intent(cfg.fallback_intent, best.score if best else None, fallback=True,
                      nearest=best.intent if best else None, example=best.example if best else None,
                      source="fallback")

    # -- the pipeline --------------------------------------------------------------------------------
    def _run(self, messages: list[dict], generate: bool) -> GenerateResult:
        ctx = _Ctx(messages, generate)
        decision = Decision()
        user_turns = [i for i, m in enumerate(messages) if m["role"] == "user"]
        if not user_turns:
            raise OpenseasonError("the conversation has no user message", hint="add {'role': 'user', ...}")
        window = user_turns[-self.config.input_window:]

        # Input rails see every message the model will see, not only recent user turns: a request
        # hidden in an old turn, a forged assistant turn or a system message reaches the model too.
        # Only the operator's system prompt may be trusted, and only when the config says so. Each
        # message is judged once (its verdict is cached by position, role and content); a flagged
        # message before the current user turn is dropped from the prompt, a flagged current turn refuses.
        if not self._validated:
            self.validate()
        current = user_turns[-1]
        for turn in self._checked_messages(messages):
            role = messages[turn]["role"]
            verdict = self._input_verdict(messages, turn, ctx)
            if verdict is None:
                continue
            name, reply = verdict
            what = "user turn" if role == "user" else f"{role} message"
            if turn < current:
                decision.dropped.append(turn)
                ctx.checks.append({"rail": "input", "flow": name, "turn": turn, "role": role, "dropped": True})
                continue
            decision.allowed, decision.rail, decision.flow, decision.turn = False, "input", name, turn
            decision.reply = reply
            decision.reason = f"input rail {name!r} blocked {what} {turn}"
            last = self.classify(messages[current]["content"], allow_llm=False)
            self._fill_intent(decision, last)
            return self._finish(decision, ctx)
        if decision.dropped:
            # Drop whole exchanges: the reply to a flagged question (or the question a flagged reply
            # answered) goes too, so user and assistant turns still alternate for the chat template.
            dropped = set(decision.dropped)
            for i in list(dropped):
                role = messages[i]["role"]
                pair = i + 1 if role == "user" else i - 1 if role == "assistant" else None
                if pair is not None and 0 <= pair < current and messages[pair]["role"] in ("user", "assistant") \
                        and messages[pair]["role"] != role:
                    dropped.add(pair)
            decision.dropped = sorted(dropped)
            keep = [i for i in range(len(messages)) if i not in dropped]
            messages = [messages[i] for i in keep]
            ctx.messages = messages
            user_turns = [i for i, m in enumerate(messages) if m["role"] == "user"]
            window = user_turns[-self.config.input_window:]

        reply, flow, intent = self._dialog(messages, window, ctx)
        self._fill_intent(decision, intent)
        decision.flow = flow
        decision.turn = current
        if flow is not None:
            decision.rail, decision.reason = "dialog", f"flow {flow!r} matched intent {intent.name!r}"
        elif reply is not None and ctx.predefined:
            decision.rail = "dialog"
            decision.reason = "no flow matched and no LLM is configured"
        else:
            decision.reason = "no flow matched; the LLM replies"
        decision.reason += self._routing_note(intent)
        if ctx.missing_bot is not None:
            decision.needs_llm = True
            decision.reason += (f"; bot message {ctx.missing_bot!r} is not defined and needs an LLM to write it "
                                "(none is configured), so the rails said \"inform cannot help\"")
        decision.predefined = ctx.predefined and reply is not None
        decision.reply = reply
        if reply is not None and generate and (not ctx.predefined or self.config.output_on_predefined):
            self._output_rails(messages[user_turns[-1]]["content"], decision, ctx)
        return self._finish(decision, ctx)

    def _routing_note(self, intent: Intent) -> str:
        cfg = self.config
        score = "none" if intent.score is None else f"{intent.score:.3f}"
        if intent.source == "llm":
            return (f" (intent named by the LLM from the {cfg.few_shot_k} nearest examples: the nearest, "
                    f"{intent.nearest!r}, was below the threshold {cfg.threshold})")
        if intent.fallback:
            why = ("embeddings_only is set" if cfg.embeddings_only else
                   "no LLM is configured" if self.llm is None else "the LLM named no known intent")
            return (f" (nearest intent {intent.nearest!r} at {score} is below the threshold {cfg.threshold}; "
                    f"{why}, so the fallback intent {cfg.fallback_intent!r} was used)")
        return f" (intent by embeddings at {score})"

    def _input_verdict(self, messages: list[dict], turn: int, ctx: _Ctx) -> Optional[tuple[str, str]]:
        """None when every input rail lets message `turn` pass, else (rail name, refusal). Verdicts
        are cached by (position, role, content): an earlier turn is judged once, when it arrives."""
        m = messages[turn]
        key = (turn, m["role"], text_key(m["content"]))
        hit = self._input_cache.get(key)
        if hit is not None:
            ctx.checks.append({"rail": "input", "turn": turn, "role": m["role"], "cached": True,
                               "fired": hit[0] is not None})
            return None if hit[0] is None else hit
        verdict: tuple = (None, None)
        for name in self.config.input_flows:
            variables = {"user_message": m["content"], "message_role": m["role"]}
            status, out = self._execute(name, 0, variables, ctx)
            ctx.checks.append({"rail": "input", "flow": name, "turn": turn, "role": m["role"],
                               "fired": status == "stop"})
            if status == "stop":
                verdict = (name, "\n".join(t for t in out if t) or self._say("refuse to respond", {}))
                break
        self._input_cache.put(key, verdict, len((verdict[1] or "").encode("utf-8", "replace")) + 128)
        return None if verdict[0] is None else verdict

    def _checked_messages(self, messages: list[dict]) -> list[int]:
        """Indices of the messages the input rails check: every user and assistant message, and system
        messages unless `rails.input.trust_system` is set; empty ones have nothing to check."""
        trusted = {"system"} if self.config.input_trust_system else set()
        return [i for i, m in enumerate(messages) if m["content"].strip() and m["role"] not in trusted]

    @property
    def has_output_rails(self) -> bool:
        return bool(self.config.output_flows or self.config.bot_output_flows)

    def check_output(self, messages: Messages, text: str) -> Decision:
        """The output rails on a reply written elsewhere (e.g. by the model `openseason serve --rails`
        serves): allowed, or blocked with the refusal in `reply`."""
        messages = _normalize(messages)
        user_turns = [i for i, m in enumerate(messages) if m["role"] == "user"]
        if not user_turns:
            raise OpenseasonError("the conversation has no user message", hint="add {'role': 'user', ...}")
        if not self._validated:
            self.validate()
        ctx = _Ctx(messages, generate=True)
        decision = Decision(reply=text, turn=user_turns[-1], predefined=False)
        self._output_rails(messages[user_turns[-1]]["content"], decision, ctx)
        return self._finish(decision, ctx).decision

    def _output_rails(self, user_message: str, decision: Decision, ctx: _Ctx) -> None:
        """Run the output flows on decision.reply; the first that stops replaces it with its refusal."""
        for name in self.config.output_flows + self.config.bot_output_flows:
            variables = {"user_message": user_message, "bot_message": decision.reply}
            if self.knowledge is not None:
                variables["relevant_chunks"] = self._relevant_chunks(user_message, ctx)
            first = self.code[name][0] if self.code[name] else None
            start = 1 if first is not None and first[0] == "bot" else 0  # `bot ...` matched the reply
            status, out = self._execute(name, start, variables, ctx)
            ctx.checks.append({"rail": "output", "flow": name, "fired": status == "stop"})
            if status == "stop":
                decision.allowed, decision.rail, decision.flow = False, "output", name
                decision.reason = f"output rail {name!r} blocked the reply"
                decision.reply = "\n".join(t for t in out if t) or self._say("refuse to respond", {})
                break

    def _finish(self, decision: Decision, ctx: _Ctx) -> GenerateResult:
        decision.checks, decision.llm_calls = ctx.checks, ctx.llm_calls
        return GenerateResult(decision.reply or "", decision)

    @staticmethod
    def _fill_intent(decision: Decision, intent: Intent) -> None:
        decision.intent, decision.score, decision.fallback = intent.name, intent.score, intent.fallback
        decision.nearest_intent = intent.nearest if intent.fallback else intent.name
        decision.routing = intent.source

    def _dialog(self, messages: list[dict], window: list[int], ctx: _Ctx):
        """Replay the window's user turns through the flows; returns (reply, flow, intent) for the last."""
        active = None  # (flow, pc, variables) of a flow paused at a user/when step
        for j, turn in enumerate(window):
            last = j == len(window) - 1
            text = messages[turn]["content"]
            intent = self.classify(text, allow_llm=last, ctx=ctx)
            start = None
            if active is not None:
                name, pc, variables = active
                ins = self.code[name][pc]
                if ins[0] == "user" and _matches(ins[1], intent.name):
                    start = (name, pc + 1, variables)
                elif ins[0] == "when":
                    target = next((t for i, t in ins[1] if _matches(i, intent.name)), ins[2])
                    if target is not None:
                        start = (name, target, variables)
            if start is None:
                name = next((f for f in self.dialog_flows if _matches(self.code[f][0][1], intent.name)), None)
                start = (name, 1, {}) if name else None
            if start is None:
                active = None
                if last:
                    return self._free_reply(messages, None, ctx), None, intent
                continue
            name, pc, variables = start
            variables["user_message"] = text
            if last and self.knowledge is not None:
                variables["relevant_chunks"] = self._relevant_chunks(text, ctx)
            status, out = self._execute(name, pc, variables, ctx, replay=not last)
            active = (name, status[1], variables) if isinstance(status, tuple) else None
            if last:
                texts = [t for t in out if t is not None]
                return ("\n".join(texts) if texts else None), name, intent
        raise AssertionError("unreachable")  # pragma: no cover

    # -- the interpreter -----------------------------------------------------------------------------
    def _execute(self, name: str, pc: int, variables: dict, ctx: _Ctx, *, replay: bool = False,
                 depth: int = 0):
        """Run flow `name` from `pc`. Returns (status, bot texts): status is "end", "stop", or
        ("pause", pc) at a user/when step."""
        if depth > 32:
            raise ConfigError(f"subflows call each other more than 32 deep (at {name!r}); is there a cycle?",
                              where=str(self.config.flows[name].loc))
        if depth == 0:
            ctx.steps = 0
            variables.setdefault("config", self.config.raw)  # `$config.rails.config...` as in NeMo's flows
        code, out = self.code[name], []
        while pc < len(code):
            ctx.steps += 1
            if ctx.steps > self.max_steps:
                raise ConfigError(f"a flow run took more than {self.max_steps} steps (at {name!r}); do subflows "
                                  "call each other in a loop or more and more times per level?",
                                  where=str(self.config.flows[name].loc),
                                  hint="flatten the subflows, or raise Rails.max_steps if this is intended")
            ins = code[pc]
            op = ins[0]
            if op in ("user", "when"):
                return ("pause", pc), out
            if op == "bot":
                if ins[1] == "remove last message":  # NeMo: the checked reply is withdrawn
                    variables["bot_message"] = None
                elif not replay:
                    if ins[3] is not None:  # `bot say "..."`: an inline message
                        text = _substitute(ins[3], variables)
                    elif ins[4] is not None:  # `bot $refusal_message`: the expression's value
                        value = colang.evaluate(ins[4], variables)
                        text = None if value is None else str(value)
                    else:
                        text = self._say(ins[1], variables, ctx)
                    variables["bot_message"] = text
                    out.append(text)
                    for follow in self.config.bot_triggered_flows(ins[1]):
                        if follow != name:
                            status, sub = self._execute(follow, 1, variables, ctx, depth=depth + 1)
                            out.extend(sub)
                            if status == "stop":
                                return "stop", out
            elif op == "exec":
                step: colang.Execute = ins[1]
                value = self._action(step, variables, ctx)
                if step.result:
                    variables[step.result] = value
            elif op == "set":
                variables[ins[1].var] = colang.evaluate(ins[1].expr, variables)
            elif op == "jf":
                if not colang.evaluate(ins[1], variables):
                    pc = ins[2]
                    continue
            elif op == "jmp":
                pc = ins[1]
                continue
            elif op == "stop":
                return "stop", out
            elif op == "return":
                if ins[1] is not None:
                    variables["return_value"] = colang.evaluate(ins[1], variables)
                return "end", out
            elif op == "on":
                pass  # the `event` that started this flow has happened
            elif op == "event":
                ctx.events.append(ins[1])
                ctx.checks.append({"event": ins[1]})
                event_vars = dict(variables)
                event_vars["event"] = {k: colang.evaluate(v, variables) for k, v in ins[2].items()}
                for follow in self.config.event_flows(ins[1]):
                    status, sub = self._execute(follow, 1, event_vars, ctx, replay=replay, depth=depth + 1)
                    out.extend(sub)
                    if status == "stop":
                        return "stop", out
            elif op == "do":
                target = ins[1]
                if ins[3] is not None:  # `do $names[$i]`
                    target = colang.evaluate(ins[3], variables)
                    if not isinstance(target, str) or target not in self.code:
                        raise ConfigError(f"`do {ins[1]}` named {target!r}, which is no flow", where=str(ins[2]))
                    if any(isinstance(s, (colang.UserStep, colang.When))
                           for s in _walk(self.config.flows[target].body)):
                        raise ConfigError(f"subflow {target!r} waits for a user message, which `do` cannot resume",
                                          where=str(ins[2]))
                status, sub = self._execute(target, 0, variables, ctx, replay=replay, depth=depth + 1)
                out.extend(sub)
                if status == "stop":
                    return "stop", out
            pc += 1
        return "end", out

    def _say(self, name: str, variables: dict, ctx: Optional[_Ctx] = None) -> Optional[str]:
        """A predefined bot message (random choice, $var substituted), else an LLM-written one."""
        bot = self.config.bots.get(name)
        if bot is not None:
            return _substitute(self.rng.choice(bot.messages), variables)
        if ctx is None:
            raise ConfigError(f"bot message {name!r} is not defined", where=str(self.config.path or "<config>"))
        return self._free_reply(ctx.messages, None if name == "..." else name, ctx)

    def _free_reply(self, messages: list[dict], bot_intent: Optional[str], ctx: _Ctx) -> Optional[str]:
        if self.llm is None:
            if bot_intent is not None:
                ctx.missing_bot = bot_intent  # the decision says so: "needs an LLM"
            return self._say("inform cannot help", {})
        ctx.predefined = False
        if not ctx.generate:
            ctx.needs_llm = True
            return None
        cfg = self.config
        history = "\n".join(f"{'User' if m['role'] == 'user' else 'Assistant'}: {m['content']}"
                            for m in messages[-2 * cfg.input_window:] if m["role"] in ("user", "assistant"))
        chunks = self._relevant_chunks(messages[-1]["content"], ctx) if self.knowledge is not None else ""
        prompt = prompts.render(cfg.prompts.get("general", prompts.DEFAULTS["general"]), "general",
                                general_instructions=cfg.instructions, sample_conversation=cfg.sample_conversation,
                                relevant_chunks=chunks,
                                knowledge=f"Relevant information:\n{chunks}\n\n" if chunks else "",
                                history=history, user_input=messages[-1]["content"],
                                bot_intent=f"(The assistant should now: {bot_intent}.)\n" if bot_intent else "")
        return self._call_llm(prompt, ctx, max_tokens=256, stop=["\nUser:", "\nuser:"]).strip()

    def _relevant_chunks(self, text: str, ctx: _Ctx) -> str:
        """The knowledge base's chunks nearest to `text` (once per call: bot generation and the fact
        check read the same ones)."""
        if ctx.chunks is None or ctx.chunks[0] != text:
            ctx.chunks = (text, self.knowledge.relevant_chunks(text, k=self.config.kb_k))
        return ctx.chunks[1]

    def _call_llm(self, prompt: str, ctx: _Ctx, *, max_tokens: int, stop: Optional[list[str]] = None) -> str:
        llm = require_client(self.llm, "this rail")
        ctx.llm_calls += 1
        return llm(prompt, max_tokens=max_tokens, temperature=0.0, stop=stop)

    def _action(self, step: colang.Execute, variables: dict, ctx: _Ctx):
        fn = self._find_action(step.action)
        if fn is None:
            raise ConfigError(f"action {step.action!r} is not registered", where=str(step.loc),
                              hint=f"built in: {sorted(BUILTIN_ACTIONS)}")
        args = {k: colang.evaluate(v, variables) for k, v in step.args.items()}
        if fn in _BUILTIN_FUNCTIONS:
            return fn(self, ctx, variables, **args)
        try:
            params = inspect.signature(fn).parameters
        except (TypeError, ValueError):
            params = {}
        if "context" in params:
            # NeMo's names for the same values, so its actions read what they expect
            args["context"] = {**variables, "last_user_message": variables.get("user_message"),
                               "last_bot_message": variables.get("bot_message")}
        return call_action(fn, args)

    def _uses_action(self, action: str) -> bool:
        return action in self._rail_actions()

    def _rail_actions(self) -> set[str]:
        """Actions reachable from the configured rails and the dialog flows (through `do`)."""
        cfg = self.config
        seen, names = set(), set()
        todo = list(cfg.input_flows) + list(cfg.output_flows) + list(self.dialog_flows) + cfg.bot_output_flows
        todo += [f.name for f in cfg.flows.values() if not f.subflow and f.body
                 and isinstance(f.body[0], (colang.BotStep, colang.EventStep))]
        while todo:
            flow = todo.pop()
            if flow in seen or flow not in cfg.flows:
                continue
            seen.add(flow)
            for step in _walk(cfg.flows[flow].body):
                if isinstance(step, colang.Execute):
                    names.add(step.action)
                elif isinstance(step, colang.Do):
                    if step.expr is None:
                        todo.append(step.subflow)
                elif isinstance(step, colang.CreateEvent):
                    todo.extend(cfg.event_flows(step.name))
        return names


def _substitute(text: str, variables: dict) -> str:
    return re.sub(r"\$([A-Za-z]\w*)", lambda m: str(variables.get(m.group(1), m.group(0))), text)


def _matches(pattern: str, intent: str) -> bool:
    return pattern == "..." or pattern == intent


def _normalize(messages: Messages) -> list[dict]:
    if isinstance(messages, str):
        return [{"role": "user", "content": messages}]
    if isinstance(messages, dict):
        messages = [messages]
    out = []
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or not isinstance(m.get("content"), str) or m.get("role") not in (
                "user", "assistant", "bot", "system"):
            raise OpenseasonError(f"message {i} must be {{'role': 'user'|'assistant'|'system', 'content': str}}, "
                                  f"got {m!r}")
        out.append({"role": "assistant" if m["role"] == "bot" else m["role"], "content": m["content"]})
    return out


# -- built-in actions ----------------------------------------------------------------------------------
def _self_check(rails: Rails, ctx: _Ctx, task: str, key: str, text: str) -> bool:
    """Ask the LLM the task's yes/no question; "yes" means block. No yes/no answer blocks too."""
    cache_key = (task, text_key(text))
    hit = rails._check_cache.get(cache_key)
    if hit is not None:  # earlier turns of a conversation were already judged
        verdict, answer = hit
    else:
        template = rails.config.prompts.get(task, prompts.DEFAULTS[task])
        answer = rails._call_llm(prompts.render(template, task, **{key: text}), ctx, max_tokens=3)
        verdict = prompts.parse_yes_no(answer)
        if verdict is not None:
            rails._check_cache.put(cache_key, (verdict, answer), len(answer.encode("utf-8", "replace")))
    allowed = verdict is False
    ctx.checks.append({"action": task, "answer": answer, "allowed": allowed,
                       **({"note": "the answer had no yes/no; blocked to be safe"} if verdict is None else {})})
    return allowed


def _self_check_input(rails: Rails, ctx: _Ctx, variables: dict, **_):
    return _self_check(rails, ctx, "self_check_input", "user_input", variables.get("user_message") or "")


def _self_check_output(rails: Rails, ctx: _Ctx, variables: dict, **_):
    return _self_check(rails, ctx, "self_check_output", "bot_response", variables.get("bot_message") or "")


def _self_check_facts(rails: Rails, ctx: _Ctx, variables: dict, **_):
    """1.0 when the LLM says the reply follows from the knowledge base's chunks, else 0.0."""
    evidence = variables.get("relevant_chunks")
    if evidence is None and rails.knowledge is not None:
        evidence = rails._relevant_chunks(variables.get("user_message") or "", ctx)
    template = rails.config.prompts.get("self_check_facts", prompts.DEFAULTS["self_check_facts"])
    answer = rails._call_llm(prompts.render(template, "self_check_facts", evidence=evidence or "",
                                            response=variables.get("bot_message") or ""), ctx, max_tokens=3)
    grounded = prompts.parse_yes_no(answer) is True
    ctx.checks.append({"action": "self_check_facts", "answer": answer, "grounded": grounded})
    return 1.0 if grounded else 0.0


def _jailbreak(rails: Rails, ctx: _Ctx, variables: dict, **_):
    from .jailbreak import jailbreak_heuristics

    j = rails.config.jailbreak
    verdict = jailbreak_heuristics(variables.get("user_message") or "", rails.perplexity,
                                   length_per_perplexity_threshold=j.length_per_perplexity_threshold,
                                   prefix_suffix_perplexity_threshold=j.prefix_suffix_perplexity_threshold,
                                   prefix_suffix_words=j.prefix_suffix_words)
    ctx.checks.append({"action": "jailbreak_detection_heuristics", **verdict.to_dict()})
    return verdict.is_jailbreak


def _check_topic(rails: Rails, ctx: _Ctx, variables: dict, **_):
    intent = rails.classify(variables.get("user_message") or "", allow_llm=False)
    cfg = rails.config
    # Staying on topic is asked of the user; in system and assistant messages only blocked topics count.
    unmatched_refused = cfg.topical_refuse_unmatched and variables.get("message_role", "user") == "user"
    on_topic = intent.name not in cfg.topical_blocked and not (intent.fallback and unmatched_refused)
    ctx.checks.append({"action": "check_topic", "intent": intent.name, "score": intent.score,
                       "nearest_intent": intent.nearest, "on_topic": on_topic})
    return on_topic


BUILTIN_ACTIONS: dict[str, Action] = {
    "self_check_input": _self_check_input,
    "self_check_output": _self_check_output,
    "jailbreak_detection_heuristics": _jailbreak,
    "check_topic": _check_topic,
    "self_check_facts": _self_check_facts,
}
_BUILTIN_FUNCTIONS = set(BUILTIN_ACTIONS.values())
