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
    "openseason.config_list",           # configs
    "openseason.convert.commands",      # convert from-hf / to-hf / to-gguf, export-peft, download
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


# OSErrors about a path the user named (a missing file, a directory where a file belongs, no permission)
# are input errors too: reported as `PATH: reason`, never as a traceback.
PATH_ERRORS = (FileNotFoundError, IsADirectoryError, NotADirectoryError, PermissionError, FileExistsError)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        result = args.func(args)
        sys.stdout.flush()  # a closed pipe shows here, not at interpreter exit
    except OpenseasonError as exc:
        return error(str(exc))
    except PATH_ERRORS as exc:
        if exc.filename is None:
            raise
        return error(f"{exc.filename}: {exc.strerror or type(exc).__name__}")
    except BrokenPipeError:
        return _broken_pipe()
    except KeyboardInterrupt:
        print("openseason: interrupted", file=sys.stderr)
        return 130
    return int(result or 0)


def error(message: str) -> int:
    """Print a user error as `openseason: error: ...` on stderr; the exit status is 2."""
    print(f"openseason: error: {message}", file=sys.stderr)
    return 2


def _broken_pipe() -> int:
    """The reader of our output went away (`openseason catalog can-use --json | head`): stop quietly,
    as `cat` does. stdout is pointed at /dev/null so the interpreter's final flush cannot fail again."""
    import os

    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError, AttributeError):  # in-process callers may have replaced stdout
        pass
    return 141  # 128 + SIGPIPE, what a shell reports for a command killed by a closed pipe


if __name__ == "__main__":
    sys.exit(main())
