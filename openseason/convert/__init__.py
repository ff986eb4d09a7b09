"""Hugging Face checkpoints in and out.

    convert_from_hf(hf_dir, out_dir)     GPTNeoXForCausalLM / LlamaForCausalLM / MptForCausalLM directory -> our checkpoint
    convert_to_hf(ckpt_dir, hf_dir)      our checkpoint -> a directory transformers loads
    download(repo_id, out_dir)           fetch from the Hub with huggingface_hub, then convert_from_hf

The per-family key maps live in gpt_neox.py and llama.py; keymap.py walks our parameter names
through them and checks names and shapes; hf_files.py reads the Hugging Face weight layouts.
"""
from __future__ import annotations

from .download import download
from .families import SUPPORTED as SUPPORTED_ARCHITECTURES
from .from_hf import config_from_hf_dir, convert_from_hf
from .to_hf import convert_to_hf

__all__ = ["convert_from_hf", "convert_to_hf", "download", "config_from_hf_dir", "SUPPORTED_ARCHITECTURES"]
