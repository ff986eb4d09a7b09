"""`openseason <verb>`: the command line.

Every verb is a thin wrapper over a library function with the same arguments. Each stage package
keeps its verbs in a `commands.py` module with `register(subparsers)`; this file only collects them,
turns user errors into one clear line on stderr and exit status 2, and never holds logic itself.
"""
from __future__ import annotations

import argparse
import importlib
import sys

from .errors import OpenseasonError

# Stage modules that contribute verbs, in the order they appear in --help.
COMMAND_MODULES = [
    "openseason.convert.commands",      # convert from-hf / to-hf, download
    "openseason.generation.commands",   # generate
    "openseason.data.commands",         # data prepare / dedup / mix / stats / tokenize / batch
    "openseason.synth.commands",        # synth self-instruct / reverse-instructions / rationales / self-improve
    "openseason.train.commands",        # finetune, merge, quickstart, pretrain (also under torchrun)
    "openseason.evaluate.commands",     # evaluate perplexity / memorization / judge / harness
    "openseason.guard.commands",        # guard check / chat
    "openseason.serve.commands",        # serve, chat
    "openseason.catalog.commands",      # catalog import / list / show / search / lineage / can-use / serve
    "openseason.consistency.commands",  # consistency train / sample (image generation)
    "openseason.vision.commands",       # vision convert / train-clip (image encoders)
]


class VerbParser(argparse.ArgumentParser):
    """A verb's parser: an unknown argument is reported with this verb's usage (`openseason chat
    --bad-flag` shows `chat`'s usage), not the top level's, which is where argparse reports it."""

    def parse_known_args(self, args=None, namespace=None):
        namespace, extras = super().parse_known_args(args, namespace)
        if extras:
            self.error(f"unrecognized arguments: {' '.join(extras)}")
        return namespace, extras


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="openseason",
        description="Build instruction-following language models from open parts, end to end.")
    # verbs' own sub-verbs (`guard check`, ...) inherit the class: add_subparsers defaults to type(self)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=VerbParser)
    sub.required = True
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        result = args.func(args)
    except OpenseasonError as exc:
        print(f"openseason: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("openseason: interrupted", file=sys.stderr)
        return 130
    return int(result or 0)


if __name__ == "__main__":
    sys.exit(main())
