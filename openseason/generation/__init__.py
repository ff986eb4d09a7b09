"""Generation building blocks: sampling, streamed text with stop strings, the step-wise decoder.

`openseason.generate` puts them together behind `LLM`; the server reuses them directly.
"""
from .engine import Completion, Decoder, TokenEvent, check_context, generate_ids
from .sampling import SamplingParams, apply_repetition_penalty, make_generator, sample_next_token
from .speed import prepare_for_decoding
from .text import IncrementalDecoder, StopMatcher, TextStream

__all__ = ["Completion", "Decoder", "TokenEvent", "check_context", "generate_ids", "SamplingParams",
           "apply_repetition_penalty", "make_generator", "sample_next_token", "prepare_for_decoding",
           "IncrementalDecoder", "StopMatcher", "TextStream"]
