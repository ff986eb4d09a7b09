"""Open instruction data: sources -> canonical records -> dedup, mixing -> SFT tokenization.

Walk it from `commands.py` (the `openseason data` verbs): `prepare.py` runs one module of `sources/`
per dataset and writes a prepared directory; `dedup.py`, `mix.py` and `stats.py` work on prepared
directories; `sft.py` tokenizes conversations for finetuning with a prompt style from
`openseason.prompts`.
"""
