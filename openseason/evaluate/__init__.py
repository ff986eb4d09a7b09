"""Evaluation: perplexity, Pythia-style memorization, LLM-as-judge, task metrics, lm-eval-harness."""
