"""Importers: Ecosystem Graphs assets/*.yaml, Hugging Face model card front matter, the LLaMA-Cult chart.

Each returns a report dict (counts, dangling dependencies, duplicates, cycles, problems with
file:line and asset) and stores it in the catalog's import log. Nothing is dropped silently.
"""
