"""Synthetic instruction data: Self-Instruct, LongForm reverse instructions, rationales, self-improvement."""
