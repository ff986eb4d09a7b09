"""`openseason-lm-eval`: lm-eval's own command line, with the "openseason" model registered.

    openseason-lm-eval --model openseason --model_args pretrained=CKPT --tasks TASK [lm-eval's flags]
    python -m openseason.evaluate.harness_cli ...        (the same, without the console script)

lm-eval releases with plugin discovery find the model from the `lm_eval.models` entry point that
pyproject.toml declares, so plain `lm_eval --model openseason` works there; the lm-eval installed
here (0.4.13) has no discovery, and this script is that command line with the registration done
first. Everything after the program name is lm-eval's: its parser, its output, its exit status.
lm-eval's git-hash lookup is made quiet (harness_env), so no "fatal: not a git repository".
"""
from __future__ import annotations


def main() -> None:
    from lm_eval.__main__ import cli_evaluate

    from . import harness  # noqa: F401  (registers "openseason" next to lm-eval's own models)
    from .harness_env import quiet_lm_eval_git

    quiet_lm_eval_git()
    cli_evaluate()


if __name__ == "__main__":
    main()
