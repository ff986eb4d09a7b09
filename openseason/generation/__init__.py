"""The one inference path: sampling, streamed text with stop strings, the running batch behind the
step-wise `Decoder` and the continuous-batching `Engine`, the `LLM` API and the `LLMClient` protocol.

    SamplingParams, sample_next_token, apply_repetition_penalty     sampling.py
    IncrementalDecoder, StopMatcher, TextStream                     text.py
    RunningBatch, Decoder, Engine, Request, Event, generate_ids     engine.py
    LLM                                                             llm.py
    prepare_for_decoding, compile_decoding                          speed.py
    quantize_int8, quantize_bf16                                    quantize.py
"""
from .engine import (Completion, Decoder, Engine, EngineClosed, Event, QueueFull, Request, RunningBatch, Sequence,
                     TokenEvent, check_context, generate_ids)
from .sampling import SamplingParams, apply_repetition_penalty, make_generator, sample_next_token
from .quantize import quantize_bf16, quantize_int8
from .speed import compile_decoding, prepare_for_decoding
from .text import IncrementalDecoder, StopMatcher, TextStream

__all__ = ["Completion", "Decoder", "Engine", "EngineClosed", "Event", "QueueFull", "Request", "RunningBatch",
           "Sequence", "TokenEvent", "check_context", "generate_ids", "SamplingParams", "apply_repetition_penalty",
           "make_generator", "sample_next_token", "prepare_for_decoding", "compile_decoding", "quantize_int8", "quantize_bf16",
           "IncrementalDecoder", "StopMatcher", "TextStream"]
